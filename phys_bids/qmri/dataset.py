"""Model-based qMRI fits from the dedicated acquisitions a BIDS session holds.

When a session of the dataset has, besides its T1w, the images of a qMRI method,
the participant level fits them (:mod:`phys_bids.qmri.fit`) and writes the maps
beside the network's estimates, with a comparison of the two in the report:

==========  ====================================  =====================================
suffix      images (grouped by the other entities)  fit -> maps
==========  ====================================  =====================================
``VFA``     >= 2 ``flip-<n>``                      DESPOT1 -> R1map, PDmap
``MEGRE``   >= 2 ``echo-<n>`` (magnitude)          log-linear, S^2-weighted -> R2starmap
``UNIT1``   the MP2RAGE uniform image, parameters  lookup table (Marques 2010) -> R1map,
            from the ``inv-1``/``inv-2`` sidecars  T1map
``MPM``     ``acq-PDw/T1w/MTw`` echo series        ESTATICS + exact SPGR -> R1map,
                                                   PDmap, R2starmap, MTsat
==========  ====================================  =====================================

Parameters come from the sidecars (with BIDS inheritance) in SI units and are checked
like every other acquisition field; a set that cannot be fitted (unreadable or
mismatched images, a missing parameter) is skipped with a warning naming the reason,
never failing the subject. No transmit-field map is used (B1 = 1: stated in the
sidecars), so VFA/MPM R1 carries the B1 bias of the acquisition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..bids.sidecars import load_sidecar, parse_entities, strip_extension

__all__ = ["QmriSet", "find_sets", "fit_set", "compare_maps", "METHODS"]

log = logging.getLogger("phys_bids.qmri")

#: entities that index the images of one set (dropped from the output names)
_INDEX = ("echo", "flip", "inv", "mt", "part")
METHODS = {"VFA": "despot1", "MEGRE": "r2starfit", "UNIT1": "mp2rage", "MPM": "mpm"}
UNITS = {"R1map": "1/s", "T1map": "s", "PDmap": "arbitrary", "R2starmap": "1/s",
         "MTsat": "p.u."}


class FitError(ValueError):
    """A set that cannot be fitted (the reason is the message)."""


@dataclass
class QmriSet:
    kind: str  # VFA, MEGRE, UNIT1 or MPM
    name: str  # output stem: the entities shared by the set (sub, ses, acq, run ...)
    images: list[Path]
    sidecars: list[dict] = field(default_factory=list)

    @property
    def method(self) -> str:
        return METHODS[self.kind]


def _stem(path: Path, drop: tuple[str, ...]) -> str:
    ents, _ = parse_entities(path.name)
    return "_".join(f"{k}-{v}" for k, v in ents.items() if k not in drop)


def find_sets(root: Path, subject: str, session: str | None) -> list[QmriSet]:
    """The qMRI sets of one subject's session (``anat/``), in name order."""
    folder = Path(root) / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    if not folder.is_dir():
        return []
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if not (f.name.endswith(".nii") or f.name.endswith(".nii.gz")):
            continue
        ents, suffix = parse_entities(f.name)
        if suffix not in METHODS or ents.get("part") == "phase":
            continue
        drop = _INDEX + (("acq",) if suffix == "MPM" else ())
        groups.setdefault((suffix, _stem(f, drop)), []).append(f)
    sets = []
    for (kind, stem), files in sorted(groups.items()):
        sidecars = [load_sidecar(f, root) for f in files]
        sets.append(QmriSet(kind, stem, files, sidecars))
    return sets


def _number(sidecar: dict, key: str, image: Path, lo: float, hi: float, unit: str) -> float:
    if key not in sidecar:
        raise FitError(f"{image.name}: the sidecar has no {key}")
    v = float(sidecar[key])
    if not lo <= v <= hi:
        raise FitError(f"{image.name}: {key}={v:g} is not plausible in {unit} "
                       f"(expected {lo:g}-{hi:g})")
    return v


def _tr(sc: dict, image: Path) -> float:
    key = "RepetitionTimeExcitation" if "RepetitionTimeExcitation" in sc else "RepetitionTime"
    return _number(sc, key, image, 1e-3, 0.2, "seconds")


def _load(images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    data, affine = [], None
    for f in images:
        try:
            img = nib.load(str(f))
            arr = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:
            raise FitError(f"{f.name}: cannot read the image ({type(err).__name__})") from None
        if arr.ndim != 3:
            raise FitError(f"{f.name}: expected a 3D image, got shape {arr.shape}")
        if affine is None:
            affine, shape = img.affine, arr.shape
        elif arr.shape != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise FitError(f"{f.name}: grid differs from {images[0].name}; the images of a "
                           "set must share one grid")
        data.append(arr)
    return np.stack(data), affine


def _mask(signal: np.ndarray) -> np.ndarray:
    """Voxels with signal: above 10 % of the 99th percentile of the set's mean image."""
    m = signal.mean(0)
    return m > 0.1 * np.percentile(m, 99)


def fit_set(s: QmriSet) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Fit one set: ``(maps, affine, provenance)``; raises :class:`FitError`."""
    from . import fit

    if s.kind == "VFA":
        if len(s.images) < 2:
            raise FitError(f"{s.name} VFA: needs >= 2 flip angles, has {len(s.images)}")
        sig, aff = _load(s.images)
        fa = [_number(sc, "FlipAngle", f, 0.5, 90, "degrees")
              for sc, f in zip(s.sidecars, s.images, strict=True)]
        trs = {_tr(sc, f) for sc, f in zip(s.sidecars, s.images, strict=True)}
        if len(trs) != 1:
            raise FitError(f"{s.name} VFA: the flip angles have different TRs {sorted(trs)}")
        mask = _mask(sig)
        out = fit.despot1(torch.from_numpy(sig), fa, trs.pop(), mask=torch.from_numpy(mask))
        params = {"FlipAngle": fa, "RepetitionTimeExcitation": _tr(s.sidecars[0],
                                                                   s.images[0])}
    elif s.kind == "MEGRE":
        if len(s.images) < 2:
            raise FitError(f"{s.name} MEGRE: needs >= 2 echoes, has {len(s.images)}")
        sig, aff = _load(s.images)
        te = [_number(sc, "EchoTime", f, 1e-4, 0.2, "seconds")
              for sc, f in zip(s.sidecars, s.images, strict=True)]
        mask = _mask(sig)
        out = fit.r2star_fit(torch.from_numpy(sig), te, mask=torch.from_numpy(mask))
        out.pop("S0map")
        params = {"EchoTime": te}
    elif s.kind == "UNIT1":
        sig, aff = _load(s.images[:1])
        root_sc = s.sidecars[0]
        names, inv = _mp2rage_sidecars(s.images[0])
        ti = [_number(sc, "InversionTime", f, 0.05, 5.0, "seconds")
              for f, sc in zip(names, inv, strict=True)]
        fa = [_number(sc, "FlipAngle", f, 1, 20, "degrees")
              for f, sc in zip(names, inv, strict=True)]
        sc = {**inv[0], **root_sc}
        tr = _number(sc, "RepetitionTimePreparation", s.images[0], 1.0, 12.0, "seconds")
        esp = _number(sc, "RepetitionTimeExcitation", s.images[0], 1e-3, 0.05, "seconds")
        shots = int(_number(sc, "NumberShots", s.images[0], 10, 1024, "read-outs"))
        uni = sig[0]
        if uni.max() > 1.0:  # DICOM-scaled UNI (0 .. 4095) -> [-0.5, 0.5]
            uni = uni / 4095.0 - 0.5
        mask = np.abs(uni) > 0 if uni.min() < 0 else uni > 0
        res = fit.mp2rage_t1(torch.from_numpy(uni.astype(np.float32)), ti1=ti[0], ti2=ti[1],
                             tr=tr, echo_spacing=esp, n_excitations=shots, fa1=fa[0],
                             fa2=fa[1], mask=torch.from_numpy(mask))
        out = {"R1map": res["R1map"], "T1map": res["T1map"]}
        params = {"InversionTime": ti, "FlipAngle": fa, "RepetitionTimePreparation": tr,
                  "RepetitionTimeExcitation": esp, "NumberShots": shots}
        sig = sig[None, 0]
    elif s.kind == "MPM":
        out, aff, params, sig = _fit_mpm(s)
    else:  # pragma: no cover - find_sets only yields known kinds
        raise FitError(f"unknown qMRI kind {s.kind}")
    maps = {k: v.numpy().astype(np.float32) for k, v in out.items() if k in UNITS}
    prov = {"Method": s.method, "Parameters": params, "B1": "not corrected (B1 = 1)",
            "Sources": [f.name for f in s.images]}
    return maps, aff, prov


def _mp2rage_sidecars(uni: Path) -> tuple[list[Path], list[dict]]:
    """The files and sidecars of the inversions of the MP2RAGE whose UNIT1 image is
    ``uni``."""
    ents, _ = parse_entities(uni.name)
    found = {}
    for f in sorted(uni.parent.iterdir()):
        e, suffix = parse_entities(f.name)
        if suffix != "MP2RAGE" or e.get("part") == "phase" or "inv" not in e:
            continue
        if any(e.get(k) != v for k, v in ents.items()):
            continue
        if f.name.endswith((".nii", ".nii.gz")):
            found.setdefault(int(e["inv"]), (f, load_sidecar(f, _root_of(uni))))
        elif f.name.endswith(".json"):
            img = f.with_name(strip_extension(f.name) + ".nii.gz")
            found.setdefault(int(e["inv"]), (f, load_sidecar(img, _root_of(uni))))
    if sorted(found) != [1, 2]:
        raise FitError(f"{uni.name}: the inv-1 and inv-2 MP2RAGE sidecars are needed for "
                       "the inversion times and flip angles")
    return [found[1][0], found[2][0]], [found[1][1], found[2][1]]


def _root_of(path: Path) -> Path:
    for p in path.parents:
        if (p / "dataset_description.json").exists():
            return p
    return path.parents[-1]


def _fit_mpm(s: QmriSet):
    from . import fit

    contrasts: dict[str, list] = {}
    for f, sc in zip(s.images, s.sidecars, strict=True):
        mt = sc.get("MTState", parse_entities(f.name)[0].get("mt") == "on")
        fa = _number(sc, "FlipAngle", f, 0.5, 90, "degrees")
        te = _number(sc, "EchoTime", f, 1e-4, 0.2, "seconds")
        contrasts.setdefault(("MT" if mt in (True, "on", "true") else "off", fa), []).append(
            (te, f, _tr(sc, f)))
    off = sorted(k for k in contrasts if k[0] == "off")
    mts = [k for k in contrasts if k[0] == "MT"]
    if len(off) != 2:
        raise FitError(f"{s.name} MPM: needs a PDw and a T1w echo series (two MT-off flip "
                       f"angles), has {len(off)}")
    series = {"PDw": off[0], "T1w": off[1], **({"MTw": mts[0]} if mts else {})}
    data, te, tr, fa, aff = {}, {}, {}, {}, None
    for name, key in series.items():
        echoes = sorted(contrasts[key], key=lambda x: x[0])
        sig, a = _load([e[1] for e in echoes])
        if aff is not None and (sig.shape[1:] != data["PDw"].shape[1:]
                                or not np.allclose(a, aff, atol=1e-3)):
            raise FitError(f"{s.name} MPM: {name} is on another grid than PDw")
        aff = a
        data[name] = sig
        te[name] = [e[0] for e in echoes]
        tr[name] = echoes[0][2]
        fa[name] = key[1]
    mask = _mask(data["PDw"])
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    out = fit.mpm_fit(t["PDw"], t["T1w"], t.get("MTw"), te_pd=te["PDw"], te_t1=te["T1w"],
                      te_mt=te.get("MTw"), fa_pd=fa["PDw"], fa_t1=fa["T1w"],
                      fa_mt=fa.get("MTw"), tr_pd=tr["PDw"], tr_t1=tr["T1w"],
                      tr_mt=tr.get("MTw"), mask=torch.from_numpy(mask))
    params = {"EchoTime": te, "FlipAngle": fa, "RepetitionTimeExcitation": tr}
    return out, aff, params, data["PDw"]


def compare_maps(fitted: np.ndarray, fitted_affine: np.ndarray, estimate: nib.Nifti1Image,
                 dseg: nib.Nifti1Image) -> dict:
    """A fitted map against the network's estimate of the same quantity: the fitted map
    is resampled (linear, by the scanner coordinates of the two images: same-session
    acquisitions are assumed aligned) onto the estimate's grid; per tissue of the T1w's
    segmentation (GM, WM), the medians of both and their ratio, and the voxelwise
    Pearson correlation over the brain voxels both cover."""
    from scipy.ndimage import map_coordinates

    target = estimate.affine
    shape = estimate.shape[:3]
    grid = np.indices(shape).reshape(3, -1)
    world = target[:3, :3] @ grid + target[:3, 3:4]
    vox = np.linalg.inv(fitted_affine)[:3, :3] @ world + np.linalg.inv(fitted_affine)[:3, 3:4]
    res = map_coordinates(fitted.astype(np.float64), vox, order=1, cval=0.0).reshape(shape)
    est = estimate.get_fdata(dtype=np.float64)
    lab = np.asanyarray(dseg.dataobj)
    both = (lab > 0) & (res > 0) & (est > 0)
    out = {"voxels": int(both.sum())}
    if both.sum() < 10:
        out["note"] = "the fitted map does not cover the T1w's brain"
        return out
    for k, t in ((1, "GM"), (2, "WM")):
        sel = both & (lab == k)
        if sel.sum() >= 10:
            f, e = float(np.median(res[sel])), float(np.median(est[sel]))
            out[t] = {"fit_median": f, "estimate_median": e, "ratio": e / f if f else None}
    out["pearson_r"] = float(np.corrcoef(res[both], est[both])[0, 1])
    return out
