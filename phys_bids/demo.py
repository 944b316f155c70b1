"""A small synthetic multi-site BIDS dataset made by the project's own simulator.

Three heads made from the ICBM152 2009a tissue maps that ship with nilearn (GM and
WM probabilities, CSF filling the brain mask, skull and scalp shells), each scaled,
rotated and shifted differently, are "scanned" at three sites, as travelling
subjects (one session per site), with vendor-typical sidecars:

============  =====================  ==================================================
session       sequence               sidecar convention
============  =====================  ==================================================
``siteA``     MPRAGE, TI 0.9 s       Siemens: ``RepetitionTime`` = inversion TR (2.3 s)
``siteB``     MPRAGE, TI 1.1 s       Philips: ``RepetitionTime`` = read-out TR (8.1 ms),
                                     ``RepetitionTimePreparation`` = 2.5 s
``siteC``     SPGR, TR 20 ms, FA 25  GE: ``RepetitionTimeExcitation``
============  =====================  ==================================================

Images are whole heads on a 1.5 mm grid (default), with partial volume from the
tissue fractions, a smooth receive field and Rician noise (SNR 30), simulated with
the same static equations the networks are told about: the same anatomy at every
site, so that any volume difference between sessions is a site effect.
``--anatomy phantom`` makes small procedural heads instead (fast, for unit tests).

    python -m phys_bids.demo OUTPUT_DIR [--subjects 3] [--voxel 1.5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .physics import bias_field, rician_noise
from .physics.simulate import SEQUENCES
from .physics.tissues import CLASSES, PRIORS, label_to_class
from .synth.phantom import phantom_labels

__all__ = ["SITES", "write_demo_dataset", "demo_truth"]

SITES = {
    "siteA": {"sequence": "MPRAGE", "params": {"ti": 0.9},
              "sidecar": {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma",
                          "InstitutionName": "Site A", "MagneticFieldStrength": 3,
                          "ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
                          "SequenceName": "*tfl3d1_16ns", "RepetitionTime": 2.3,
                          "InversionTime": 0.9, "EchoTime": 0.00298, "FlipAngle": 9}},
    "siteB": {"sequence": "MPRAGE", "params": {"ti": 1.1},
              "sidecar": {"Manufacturer": "Philips", "ManufacturersModelName": "Ingenia",
                          "InstitutionName": "Site B", "MagneticFieldStrength": 3,
                          "PulseSequenceType": "3D TFE", "ScanningSequence": "GR\\IR",
                          "RepetitionTime": 0.0081, "RepetitionTimePreparation": 2.5,
                          "InversionTime": 1.1, "EchoTime": 0.0037, "FlipAngle": 8}},
    "siteC": {"sequence": "SPGR", "params": {"tr": 0.020, "te": 0.005, "fa": 25.0},
              "sidecar": {"Manufacturer": "GE", "ManufacturersModelName": "Discovery MR750",
                          "InstitutionName": "Site C", "MagneticFieldStrength": 3,
                          "PulseSequenceType": "SPGR", "ScanningSequence": "GR",
                          "SequenceVariant": "SP", "RepetitionTimeExcitation": 0.020,
                          "EchoTime": 0.005, "FlipAngle": 25}},
}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _tissue_maps(classes: np.ndarray) -> dict[str, torch.Tensor]:
    out = {}
    for p in ("pd", "r1", "r2s", "r2", "mt"):
        lut = torch.tensor([PRIORS[c][p].mean for c in CLASSES], dtype=torch.float32)
        out[p] = lut[torch.from_numpy(classes.astype(np.int64))]
    out["r1"] = out["r1"].clamp_min(1e-3)
    return out


def _mixed_maps(fractions: np.ndarray, scale: dict[str, float]) -> dict[str, torch.Tensor]:
    """Partial-volume maps: per-voxel fractions of each class times the class values."""
    out = {}
    f = torch.from_numpy(fractions.astype(np.float32))
    for p in ("pd", "r1", "r2s", "r2", "mt"):
        lut = torch.tensor([PRIORS[c][p].mean * scale.get(p, 1.0) for c in CLASSES],
                           dtype=torch.float32)
        out[p] = torch.einsum("k...,k->...", f, lut)
    out["r1"] = out["r1"].clamp_min(1e-3)
    return out


def _mni_anatomy():
    """Class fractions on the 1 mm MNI grid from nilearn's ICBM152 2009a tissue maps.

    GM and WM are the template's probabilities (rescaled where they sum to more than 1);
    CSF fills the rest of each voxel of the brain mask (grown by 2 mm), so that no voxel
    inside it is partly empty; skull and scalp are shells around it (by distance, 2-8 mm and
    8-14 mm), so that the image is a whole head the skull stripper must work on.
    """
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )
    from scipy import ndimage

    gm_img = load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    dist = ndimage.distance_transform_edt(~brain)
    inside = brain | (dist <= 2)
    gm, wm = gm * inside, wm * inside  # the template's traces beyond it would overlap the skull
    frac = np.zeros((len(CLASSES), *gm.shape), np.float32)
    # GM and WM as the template gives them, rescaled only where they sum to more than
    # 1; CSF is the rest of the voxel, so no part of the brain is left empty (PD 0),
    # which every model would read as CSF.
    norm = np.maximum(gm + wm, 1)
    frac[CLASSES.index("gm_cortex")] = gm / norm
    frac[CLASSES.index("wm")] = wm / norm
    total = (gm + wm) / norm
    frac[CLASSES.index("csf")] = np.where(inside, 1 - total, 0)
    frac[CLASSES.index("skull")] = ((dist > 2) & (dist <= 8)) & ~inside
    frac[CLASSES.index("scalp_fat")] = (dist > 8) & (dist <= 14)
    frac[0] = 1 - frac[1:].sum(0)
    return frac, gm_img.affine


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _subject_on_grid(frac, mni_affine, rng, voxel: float):
    """One subject: the MNI anatomy scaled, rotated and shifted, sampled on a scanner
    grid of ``voxel`` mm (order-1 interpolation of the class fractions)."""
    from scipy import ndimage

    scale = rng.uniform(0.92, 1.05, 3)
    rot = _rotation(np.deg2rad(rng.uniform(-8, 8, 3)))
    shift = rng.uniform(-6, 6, 3)
    # subject world -> MNI world
    to_mni = np.linalg.inv(rot @ np.diag(scale))
    shape = tuple(int(np.ceil(e / voxel)) for e in (176, 208, 176))
    grid_aff = np.diag([voxel, voxel, voxel, 1.0])
    grid_aff[:3, 3] = -np.array(shape) * voxel / 2 + shift
    vox_to_mni_vox = np.linalg.inv(mni_affine)[:3, :3] @ to_mni @ grid_aff[:3, :3]
    offset = (np.linalg.inv(mni_affine)[:3, :3] @ to_mni @ grid_aff[:3, 3]
              + np.linalg.inv(mni_affine)[:3, 3])
    out = np.stack([ndimage.affine_transform(f, vox_to_mni_vox, offset, output_shape=shape,
                                             order=1, cval=0.0) for f in frac])
    out[0] = np.clip(1 - out[1:].sum(0), 0, 1)
    return out, grid_aff


def _mni_subjects(subjects: int, voxel: float, seed: int):
    """The demo's heads, in order: (class fractions, affine, tissue-value jitter)."""
    rng = np.random.default_rng(seed)
    mni = _mni_anatomy()
    for _ in range(subjects):
        frac, affine = _subject_on_grid(*mni, rng, voxel)
        jitter = {"pd": rng.uniform(0.97, 1.03), "r1": rng.uniform(0.95, 1.05)}
        yield frac, affine, jitter


def demo_truth(*, subjects: int = 3, voxel: float = 1.5, seed: int = 0) -> dict:
    """True GM, WM and CSF volumes (mL) of the demo's heads (the same for every site)."""
    out = {}
    for s, (frac, _, _) in enumerate(_mni_subjects(subjects, voxel, seed), start=1):
        ml = voxel ** 3 / 1000.0
        out[f"sub-{s:02d}"] = {t: float(frac[CLASSES.index(c)].sum(dtype=np.float64)) * ml
                               for t, c in (("GM", "gm_cortex"), ("WM", "wm"), ("CSF", "csf"))}
    return out


#: qMRI acquisitions of ``--qmri`` (site A sessions): variable flip angle SPGR and
#: multi-echo GRE, Siemens-style sidecars
QMRI_ACQUISITIONS = {
    "VFA": [{"FlipAngle": fa, "RepetitionTimeExcitation": 0.015, "EchoTime": 0.0025}
            for fa in (3, 20)],
    "MEGRE": [{"FlipAngle": 15, "RepetitionTimeExcitation": 0.04, "EchoTime": te}
              for te in (0.004, 0.010, 0.016, 0.022)],
}


def _write_qmri_acquisitions(anat: Path, sub: str, ses: str, maps, affine, brain, g) -> None:
    """VFA (``flip-1/2``) and MEGRE (``echo-1..4``) images of the same maps, SNR 50."""
    from .physics import sequences

    for suffix, protocol in QMRI_ACQUISITIONS.items():
        index = "flip" if suffix == "VFA" else "echo"
        signals = [sequences.spgr(maps["pd"], maps["r1"], maps["r2s"],
                                  p["RepetitionTimeExcitation"], p["EchoTime"], p["FlipAngle"])
                   for p in protocol]
        sigma = float(signals[0][torch.from_numpy(brain)].mean()) / 50.0
        for i, (sig, p) in enumerate(zip(signals, protocol, strict=True), start=1):
            image = rician_noise(sig.abs().float(), sigma, generator=g).numpy()
            stem = f"{sub}_ses-{ses}_{index}-{i}_{suffix}"
            img = nib.Nifti1Image((image * 1000).astype(np.float32), affine)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(anat / f"{stem}.nii.gz"))
            _write_json(anat / f"{stem}.json", {**SITES[ses]["sidecar"], **p,
                                                "ScanningSequence": "GR",
                                                "SequenceVariant": "SP",
                                                "PulseSequenceType": "SPGR"})


def write_demo_dataset(root, *, subjects: int = 3, voxel: float = 1.5, seed: int = 0,
                       anatomy: str = "mni", size: int = 48, qmri: bool = False) -> Path:
    """Write the demo dataset to ``root`` (which must not exist or be empty).

    ``anatomy="mni"`` (default): heads made from the ICBM152 tissue maps, varied per
    subject (scale, rotation, position), on a ``voxel`` mm grid. ``anatomy="phantom"``:
    small procedural heads of ``size``^3 1 mm voxels (fast, for unit tests).
    ``qmri=True``: the site A sessions also hold VFA (2 flip angles) and multi-echo
    GRE (4 echoes) images of the same maps (:data:`QMRI_ACQUISITIONS`), which the
    participant level fits and compares with its estimates; the T1w images are the
    same either way.
    """
    root = Path(root)
    if anatomy not in ("mni", "phantom"):
        raise ValueError(f"anatomy must be 'mni' or 'phantom', not {anatomy!r}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new folder for the demo dataset")
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "dataset_description.json", {
        "Name": "phys-bids demo: travelling subjects at three sites", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "License": "CC0", "Authors": ["phys-bids developers"],
        "GeneratedBy": [{"Name": "phys-bids demo", "Description": "simulated from "
                         "tissue maps with phys_bids.physics"}]})
    (root / "README").write_text(__doc__ or "")
    rows = ["participant_id\tsex\tage"]
    g = torch.Generator().manual_seed(seed)
    heads = _mni_subjects(subjects, voxel, seed) if anatomy == "mni" else None
    g_qmri = torch.Generator().manual_seed(seed + 7919)  # own stream: T1w images unchanged
    for s in range(1, subjects + 1):
        sub = f"sub-{s:02d}"
        rows.append(f"{sub}\tn/a\tn/a")
        if heads is not None:
            frac, affine, jitter = next(heads)
            maps = _mixed_maps(frac, jitter)
            brain = frac[1:5].sum(0) > 0.5
        else:
            classes = label_to_class(phantom_labels(size, seed=seed + s))
            affine = np.diag([1.0, 1.0, 1.0, 1.0])
            affine[:3, 3] = -(size - 1) / 2
            maps = _tissue_maps(classes)
            brain = classes > 0
        shape = tuple(maps["pd"].shape)
        for ses, site in SITES.items():
            model = SEQUENCES[site["sequence"]]
            signal = model.function(*[maps[m] for m in model.maps if m in maps],
                                    **{k: torch.tensor(v) for k, v in site["params"].items()})
            signal = signal.abs() * bias_field(shape, strength=0.15, generator=g)[0]
            ref = float(signal[torch.from_numpy(brain)].mean())
            image = rician_noise(signal, ref / 30.0, generator=g)
            image = (image / float(image.max()) * 1000).numpy().astype(np.float32)
            anat = root / sub / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            stem = f"{sub}_ses-{ses}_T1w"
            img = nib.Nifti1Image(image, affine)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(anat / f"{stem}.nii.gz"))
            _write_json(anat / f"{stem}.json", site["sidecar"])
            if qmri and ses == "siteA":
                _write_qmri_acquisitions(anat, sub, ses, maps, affine, brain, g_qmri)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--voxel", type=float, default=1.5, help="voxel size in mm (MNI anatomy)")
    ap.add_argument("--anatomy", choices=["mni", "phantom"], default="mni",
                    help="heads from the ICBM152 tissue maps, or small procedural phantoms")
    ap.add_argument("--size", type=int, default=48, help="phantom edge in 1 mm voxels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qmri", action="store_true",
                    help="site A sessions also hold VFA and multi-echo GRE images, fitted by "
                         "the participant level and compared with the network's estimates")
    args = ap.parse_args(argv)
    desc = Path(args.output_dir) / "dataset_description.json"
    if desc.exists() and json.loads(desc.read_text()).get("Name", "").startswith("phys-bids demo"):
        print(f"the demo dataset is already in {args.output_dir}; nothing to do")
        return 0
    try:
        root = write_demo_dataset(args.output_dir, subjects=args.subjects, voxel=args.voxel,
                                  seed=args.seed, anatomy=args.anatomy, size=args.size,
                                  qmri=args.qmri)
    except FileExistsError as err:
        print(f"phys-bids demo: error: {err}", file=sys.stderr)
        return 2
    print(f"demo dataset written to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
