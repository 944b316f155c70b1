#!/usr/bin/env python
"""How the skull strip's brain mask meets the demo's true brain, scan by scan.

Reads a finished participant run on the demo dataset (``bench/bench_demo_sites.py``
leaves one per model under its ``--work`` folder) and compares each scan's
``desc-brain_mask`` with the demo's true tissue fractions on the same scanner grid
(:func:`phys_bids.demo.demo_truth` draws the same heads): the true brain volume, the
mask's volume, the tissue the mask leaves out (GM, WM, CSF) and the non-brain it
holds, in mL. The CSF it leaves out is also given by its distance from the mask (within
one voxel, within two, further).

    python bench/bench_demo_mask.py --run /tmp/phys-bids-bench-demo/out-seg-physics \
        --out docs/results/demo-mask

With ``--bids`` (the demo dataset the run read) each scan's intensities are given too,
as medians relative to the median of the mask's pure WM: the mask's pure CSF, the pure
skull, and the left-out voxels that are mostly CSF. They say whether the left-out
CSF could be told from the skull by its intensity.

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
from scipy import ndimage

from phys_bids.demo import SITES, _mni_subjects
from phys_bids.synth.tissues import CLASSES

TISSUES = {"GM": "gm_cortex", "WM": "wm", "CSF": "csf"}


#: pure: a voxel whose fraction of one class is above this
PURE = 0.95


def mask_rows(run: Path, subjects: int, voxel: float, seed: int,
              bids: Path | None = None) -> list[dict]:
    """One row per scan: the true brain, the mask and what each holds of the other, the
    left-out CSF by distance from the mask and, with ``bids``, relative intensities."""
    ml = voxel ** 3 / 1000.0
    rows = []
    for s, (frac, _, _) in enumerate(_mni_subjects(subjects, voxel, seed), start=1):
        tissue = {t: frac[CLASSES.index(c)] for t, c in TISSUES.items()}
        skull = frac[CLASSES.index("skull")]
        brain = sum(tissue.values())
        for site in SITES:
            sub, ses = f"sub-{s:02d}", f"ses-{site}"
            path = run / sub / ses / "anat" / f"{sub}_{ses}_desc-brain_mask.nii.gz"
            mask = np.asarray(nib.load(path).dataobj) > 0
            if mask.shape != brain.shape:
                raise SystemExit(f"{path}: grid {mask.shape} is not the demo's {brain.shape}; "
                                 "give the --subjects/--voxel/--seed the demo was written with")
            dist = ndimage.distance_transform_edt(~mask)  # voxels from the mask
            csf = tissue["CSF"]
            row = {
                "subject": sub, "site": site, "sequence": SITES[site]["sequence"],
                "true_brain_ml": float(brain.sum()) * ml, "mask_ml": float(mask.sum()) * ml,
                "left_out_ml": {t: float(f[~mask].sum()) * ml for t, f in tissue.items()},
                "non_brain_inside_ml": float((1 - brain)[mask].sum()) * ml,
                "csf_left_out_by_distance_ml": {
                    "1 voxel": float(csf[(dist > 0) & (dist <= 1)].sum()) * ml,
                    "2 voxels": float(csf[(dist > 1) & (dist <= 2)].sum()) * ml,
                    "further": float(csf[dist > 2].sum()) * ml},
            }
            if bids is not None:
                img = np.asarray(nib.load(bids / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz")
                                 .dataobj, dtype=np.float64)
                wm = np.median(img[mask & (tissue["WM"] > PURE)])
                row["relative_intensity"] = {
                    name: float(np.median(img[sel]) / wm) if sel.any() else None
                    for name, sel in (("CSF in the mask", mask & (csf > PURE)),
                                      ("skull", skull > PURE),
                                      ("left-out, mostly CSF", ~mask & (csf > 0.5)))}
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the participant output folder of one model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bids", help="the demo dataset the run read: adds relative intensities")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--voxel", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = mask_rows(Path(args.run), args.subjects, args.voxel, args.seed,
                     Path(args.bids) if args.bids else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_mask.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["Skull-strip mask against the demo's true brain (GM + WM + CSF fractions), mL. "
             "`bench/bench_demo_mask.py`", "",
             "| subject | site | sequence | true brain | mask | left out GM / WM / CSF "
             "| of that CSF within 1 / 2 voxels / further | non-brain inside |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, by = r["left_out_ml"], r["csf_left_out_by_distance_ml"]
        lines.append(f"| {r['subject']} | {r['site']} | {r['sequence']} | "
                     f"{r['true_brain_ml']:.0f} | {r['mask_ml']:.0f} | "
                     f"{lo['GM']:.0f} / {lo['WM']:.0f} / {lo['CSF']:.0f} | "
                     + " / ".join(f"{v:.0f}" for v in by.values()) + " | "
                     f"{r['non_brain_inside_ml']:.0f} |")
    if args.bids:
        names = list(rows[0]["relative_intensity"])
        lines += ["", "Median intensity of the scan as acquired, relative to the median "
                  "of the mask's pure WM:", "",
                  "| subject | site | sequence | " + " | ".join(names) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        lines += [f"| {r['subject']} | {r['site']} | {r['sequence']} | " + " | ".join(
            "n/a" if v is None else f"{v:.2f}" for v in r["relative_intensity"].values())
            + " |" for r in rows]
    (out / "demo_mask.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
