"""MNI templates through TemplateFlow, offline.

With internet (and when the container image is built) TemplateFlow's
``MNI152NLin2009cAsym`` is used. Offline - as on the development machines and in
CI - phys-bids seeds ``$TEMPLATEFLOW_HOME`` from the ICBM152 2009a *symmetric*
templates that ship inside the nilearn wheel, and labels them as what they are,
``MNI152NLin2009aSym``:

* ``tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz``: nilearn's brain-extracted T1
  template (0-255 rescaled to 0-1);
* ``..._res-1_desc-brain_mask.nii.gz``: its non-zero voxels;
* ``..._res-1_label-GM_probseg.nii.gz``, ``..._label-WM_probseg.nii.gz``: nilearn's GM/WM maps.

Nothing is downloaded at run time: :func:`get_template` only returns files that are
present and non-empty (TemplateFlow keeps empty placeholders for files it has not
fetched), and sets ``TEMPLATEFLOW_AUTOUPDATE=0``. The template actually used is
returned with its name and recorded in the outputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import atomic_write

__all__ = ["Template", "OFFLINE_TEMPLATE", "ONLINE_TEMPLATE", "seed_templateflow",
           "get_template"]

OFFLINE_TEMPLATE = "MNI152NLin2009aSym"
ONLINE_TEMPLATE = "MNI152NLin2009cAsym"
_NILEARN = {
    "desc-brain_T1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "label-GM_probseg": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "label-WM_probseg": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Template:
    name: str
    t1w_brain: Path
    mask: Path
    gm: Path | None
    wm: Path | None
    source: str


def _fname(tpl: str, key: str) -> str:
    return f"tpl-{tpl}_res-1_{key}.nii.gz"


def _atomic_save(img, path: Path) -> None:
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def _present(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 0


def _find(folder: Path, tpl: str, key: str) -> Path | None:
    """A fetched TemplateFlow file at 1 mm: TemplateFlow writes ``res-01`` for the 2009c
    templates, the offline seed ``res-1``."""
    for res in ("res-01", "res-1"):
        p = folder / f"tpl-{tpl}_{res}_{key}.nii.gz"
        if _present(p):
            return p
    return None


def seed_templateflow(home) -> Path:
    """Write the offline MNI152NLin2009aSym files into a TemplateFlow home (idempotent)."""
    import nilearn

    src = Path(nilearn.__file__).parent / "datasets" / "data"
    folder = Path(home) / f"tpl-{OFFLINE_TEMPLATE}"
    folder.mkdir(parents=True, exist_ok=True)
    t1_path = folder / _fname(OFFLINE_TEMPLATE, "desc-brain_T1w")
    for key, name in _NILEARN.items():
        out = folder / _fname(OFFLINE_TEMPLATE, key)
        if _present(out):
            continue
        img = nib.load(str(src / name))
        data = np.asarray(img.dataobj).astype(np.float32) / 255.0
        _atomic_save(nib.Nifti1Image(data, img.affine), out)
    mask_path = folder / _fname(OFFLINE_TEMPLATE, "desc-brain_mask")
    if not _present(mask_path):
        t1 = nib.load(str(t1_path))
        mask = (np.asarray(t1.dataobj) > 0).astype(np.uint8)
        _atomic_save(nib.Nifti1Image(mask, t1.affine), mask_path)
    prov = folder / "phys-bids-provenance.json"
    if not prov.exists():
        prov.write_text(json.dumps({
            "template": OFFLINE_TEMPLATE, "source": f"nilearn {nilearn.__version__} "
            "datasets/data (ICBM 2009a nonlinear symmetric, 1 mm)",
            "files": {k: _fname(OFFLINE_TEMPLATE, k) for k in (*_NILEARN, "desc-brain_mask")},
        }, indent=1))
    return folder


def get_template(home=None, *, prefer: str = ONLINE_TEMPLATE) -> Template:
    """The registration target: ``prefer`` if it is present locally, else the seeded one."""
    home = Path(home or os.environ.get("TEMPLATEFLOW_HOME")
                or Path.home() / ".cache" / "templateflow")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    folder = home / f"tpl-{prefer}"
    t1 = _find(folder, prefer, "desc-brain_T1w")
    mask = _find(folder, prefer, "desc-brain_mask")
    if t1 is not None and mask is not None:
        return Template(prefer, t1, mask, _find(folder, prefer, "label-GM_probseg"),
                        _find(folder, prefer, "label-WM_probseg"), "templateflow")
    folder = seed_templateflow(home)
    f = {k: folder / _fname(OFFLINE_TEMPLATE, k) for k in (*_NILEARN, "desc-brain_mask")}
    return Template(OFFLINE_TEMPLATE, f["desc-brain_T1w"], f["desc-brain_mask"],
                    f["label-GM_probseg"], f["label-WM_probseg"],
                    "nilearn (seeded into TemplateFlow offline)")


def fetch_online(home) -> Template | None:
    """Fetch ``MNI152NLin2009cAsym`` (1 mm brain T1w, mask, GM/WM) with TemplateFlow.

    Used when a container image is built with internet access; returns None when the
    fetch fails (no network), so that the build falls back to the offline seed.
    """
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    try:
        from templateflow import api

        for key in ({"desc": "brain", "suffix": "T1w"}, {"desc": "brain", "suffix": "mask"},
                    {"label": "GM", "suffix": "probseg"}, {"label": "WM", "suffix": "probseg"}):
            api.get(ONLINE_TEMPLATE, resolution=1, extension=".nii.gz", **key)
    except Exception:  # noqa: BLE001 - any failure means "not available", reported by caller
        return None
    tpl = get_template(home)
    return tpl if tpl.name == ONLINE_TEMPLATE else None


def main(argv=None) -> int:
    """``python -m phys_bids.preproc.templates DIR [--fetch]``: bake templates into DIR."""
    import argparse

    ap = argparse.ArgumentParser(description="Put the registration templates into a "
                                 "TemplateFlow home (container builds).")
    ap.add_argument("home", help="TemplateFlow home to fill")
    ap.add_argument("--fetch", action="store_true",
                    help=f"try to download {ONLINE_TEMPLATE} (needs internet); the offline "
                         f"{OFFLINE_TEMPLATE} seed is always written")
    args = ap.parse_args(argv)
    home = Path(args.home)
    seed_templateflow(home)
    online = fetch_online(home) if args.fetch else None
    tpl = online or get_template(home)
    note = (f"registration template: {tpl.name} ({tpl.source})" +
            ("" if online or not args.fetch else f"; {ONLINE_TEMPLATE} could not be fetched"))
    (home / "phys-bids-templates.txt").write_text(note + "\n")
    print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
