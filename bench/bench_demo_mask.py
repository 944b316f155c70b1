#!/usr/bin/env python
"""How the skull strip's brain mask meets the demo's true brain, scan by scan.

Reads a finished participant run on the demo dataset (``bench/bench_demo_sites.py``
leaves one per model under its ``--work`` folder) and compares each scan's
``desc-brain_mask`` with the demo's true tissue fractions on the same scanner grid
(:func:`phys_bids.demo.demo_truth` draws the same heads): the true brain volume, the
mask's volume, the tissue the mask leaves out (GM, WM, CSF) and the non-brain it
holds, in mL.

    python bench/bench_demo_mask.py --run /tmp/phys-bids-bench-demo/out-seg-physics \
        --out docs/results/demo-mask

writes ``demo_mask.json`` and ``demo_mask.md``. The demo must have been written with
the defaults (3 subjects, 1.5 mm, seed 0) or with the ``--subjects/--voxel/--seed``
given here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from phys_bids.demo import SITES, _mni_subjects
from phys_bids.synth.tissues import CLASSES

TISSUES = {"GM": "gm_cortex", "WM": "wm", "CSF": "csf"}


def mask_rows(run: Path, subjects: int, voxel: float, seed: int) -> list[dict]:
    """One row per scan: the true brain, the mask and what each holds of the other."""
    ml = voxel ** 3 / 1000.0
    rows = []
    for s, (frac, _, _) in enumerate(_mni_subjects(subjects, voxel, seed), start=1):
        tissue = {t: frac[CLASSES.index(c)] for t, c in TISSUES.items()}
        brain = sum(tissue.values())
        for site in SITES:
            sub, ses = f"sub-{s:02d}", f"ses-{site}"
            path = run / sub / ses / "anat" / f"{sub}_{ses}_desc-brain_mask.nii.gz"
            mask = np.asarray(nib.load(path).dataobj) > 0
            if mask.shape != brain.shape:
                raise SystemExit(f"{path}: grid {mask.shape} is not the demo's {brain.shape}; "
                                 "give the --subjects/--voxel/--seed the demo was written with")
            rows.append({
                "subject": sub, "site": site, "sequence": SITES[site]["sequence"],
                "true_brain_ml": float(brain.sum()) * ml, "mask_ml": float(mask.sum()) * ml,
                "left_out_ml": {t: float(f[~mask].sum()) * ml for t, f in tissue.items()},
                "non_brain_inside_ml": float((1 - brain)[mask].sum()) * ml,
            })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the participant output folder of one model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--voxel", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = mask_rows(Path(args.run), args.subjects, args.voxel, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_mask.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["Skull-strip mask against the demo's true brain (GM + WM + CSF fractions), mL. "
             "`bench/bench_demo_mask.py`", "",
             "| subject | site | sequence | true brain | mask | left out GM / WM / CSF "
             "| non-brain inside |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo = r["left_out_ml"]
        lines.append(f"| {r['subject']} | {r['site']} | {r['sequence']} | "
                     f"{r['true_brain_ml']:.0f} | {r['mask_ml']:.0f} | "
                     f"{lo['GM']:.0f} / {lo['WM']:.0f} / {lo['CSF']:.0f} | "
                     f"{r['non_brain_inside_ml']:.0f} |")
    (out / "demo_mask.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
