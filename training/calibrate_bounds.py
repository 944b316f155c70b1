#!/usr/bin/env python
"""Fit the conformal margins of a segmentation model's Monte-Carlo volume bounds.

On the model's validation subjects, or with ``--subjects`` its training and validation
subjects (never its test subjects, which the benchmark keeps for measuring the
coverage), simulate images in and out of the training space,
draw ``--samples`` Monte-Carlo samples each, and write the per-tissue margins
(:mod:`phys_bids.models.calibration`), separately for acquisitions inside and outside
the training space, to ``<model folder>/calibration.json``:

    python training/calibrate_bounds.py --model seg-physics --samples 4 --n-images 4

``--add`` draws more calibration images (another ``--seed``: other virtual subjects'
tissue values, noise and SPGR draws) and refits the margins on all rows, so that a
tissue's margin rests on the >= 19 scores the 95 % guarantee needs without redoing
the images already scored:

    python training/calibrate_bounds.py --model seg-physics --add --seed 202 \
        --n-images 3 --conditions mprage-id,spgr-id

The shipped margins of seg-physics also use the training heads (docs/uncertainty.md:
its errors on them follow the heads' CSF fraction as on unseen heads, and two
validation heads do not span that range):

    python training/calibrate_bounds.py --model seg-physics --add --seed 303 \
        --subjects head_01,...,head_11 --conditions mprage-id,spgr-id --n-images 1

--data defaults to $PHYS_BIDS_DATA/label-maps or ../shared/data/label-maps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.io import atomic_write
from phys_bids.models.calibration import calibration_rows, fit_margins, training_space_flags
from phys_bids.models.evaluation import development_data
from phys_bids.models.registry import load_model, model_folder
from phys_bids.models.training import _git_commit
from phys_bids.synth import load_head


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--model", default="seg-physics", help="model name or folder")
    ap.add_argument("--samples", type=int, default=4, help="Monte-Carlo samples per image")
    ap.add_argument("--n-images", type=int, default=4, help="images per condition")
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--subjects", default="val",
                    help="calibration heads: 'val' (the split's validation subjects), "
                         "'train+val', or a comma-separated list; never the test subjects")
    ap.add_argument("--add", action="store_true",
                    help="add images (a new --seed) to the rows of the existing "
                         "calibration.json and refit")
    ap.add_argument("--refit", action="store_true",
                    help="recompute the margins from the rows already in calibration.json "
                         "(no new images)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = model_folder(args.model)
    model = load_model(folder)
    command = "python training/calibrate_bounds.py " + " ".join(sys.argv[1:])
    if args.refit:
        cal = json.loads((folder / "calibration.json").read_text())
        _flag(cal)
        cal["margins"] = fit_margins(cal["rows"])
        cal["n_per_tissue"] = _n_per_tissue(cal["rows"])
        cal["refit_by"] = command
        return _write(folder, cal)
    existing = None
    if args.add:
        existing = json.loads((folder / "calibration.json").read_text())
        if existing["weights_sha256"] != model.manifest["weights_sha256"]:
            print("calibration.json belongs to other weights: calibrate from scratch "
                  "(without --add)", file=sys.stderr)
            return 2
        if existing["mc_samples"] != args.samples:
            print(f"calibration.json used {existing['mc_samples']} samples per image; add "
                  f"images with --samples {existing['mc_samples']}", file=sys.stderr)
            return 2
        used = {r.get("seed", existing["seed"]) for r in existing["rows"]}
        if args.seed in used:
            print(f"seed {args.seed} already made calibration images ({sorted(used)}): "
                  "choose another --seed", file=sys.stderr)
            return 2
    try:
        subjects = _subjects(args.subjects, model.manifest["split"])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    heads = {s: load_head(Path(args.data) / f"{s}.nii.gz") for s in subjects}
    t0 = time.time()
    rows, seconds = calibration_rows(model, heads, condition_names=args.conditions.split(","),
                                     n_images=args.n_images, samples=args.samples,
                                     seed=args.seed, threads=args.threads)
    for r in rows:
        r["seed"], r["images_per_condition"] = args.seed, args.n_images
    if existing is not None:
        for r in existing["rows"]:
            r.setdefault("seed", existing["seed"])
            r.setdefault("images_per_condition", existing["images_per_condition"])
        existing["rows"] += rows
        existing["subjects"] = sorted({r["subject"] for r in existing["rows"]})
        existing["margins"] = fit_margins(existing["rows"])
        existing["n_per_tissue"] = _n_per_tissue(existing["rows"])
        existing.setdefault("added", []).append(
            {"command": command, "seconds_per_sample_median": float(np.median(seconds)),
             "minutes": round((time.time() - t0) / 60, 1), "code_commit": _git_commit()})
        return _write(folder, existing)
    cal = {
        "model": model.name, "weights_sha256": model.manifest["weights_sha256"],
        "method": "split-conformal widening of the Monte-Carlo quantiles (CQR, Romano et al. "
                  "2019), relative to the median volume",
        "mc_samples": args.samples, "subjects": subjects, "conditions": args.conditions,
        "images_per_condition": args.n_images, "seed": args.seed,
        "n_per_tissue": _n_per_tissue(rows),
        "margins": fit_margins(rows),
        "seconds_per_sample_median": float(np.median(seconds)),
        "minutes": round((time.time() - t0) / 60, 1), "code_commit": _git_commit(),
        "command": command,
        "rows": rows,
    }
    return _write(folder, cal)


def _subjects(spec: str, split: dict) -> list[str]:
    """The calibration heads named by ``--subjects``; the test split is refused, since
    the calibration benchmark measures coverage on it."""
    if spec == "val":
        subjects = list(split["val"])
    elif spec == "train+val":
        subjects = list(split["train"]) + list(split["val"])
    else:
        subjects = [s.strip() for s in spec.split(",") if s.strip()]
    test = sorted(set(subjects) & set(split.get("test", [])))
    if test:
        raise ValueError(f"--subjects includes test subject(s) {', '.join(test)}: the "
                         "calibration benchmark measures coverage on them; choose others")
    unknown = sorted(set(subjects) - set(split["train"]) - set(split["val"]))
    if unknown or not subjects:
        raise ValueError(f"--subjects: {', '.join(unknown) or 'none given'} not in the "
                         "model's train/val split")
    return subjects


def _n_per_tissue(rows: list[dict]) -> dict:
    return {k: sum(r["in_training_space"] is (k == "in") for r in rows) // 3
            for k in ("in", "out")}


def _flag(cal: dict) -> None:
    """Recompute the in/out flags of every row from the conditions of the run that
    made it (its seed and images per condition)."""
    runs: dict = {}
    for r in cal["rows"]:
        key = (r.get("images_per_condition", cal["images_per_condition"]),
               r.get("seed", cal["seed"]))
        runs.setdefault(key, []).append(r)
    for (n, seed), rows in runs.items():
        training_space_flags(rows, n, seed)


def _write(folder: Path, cal: dict) -> int:
    atomic_write(folder / "calibration.json",
                 lambda tmp: tmp.write_text(json.dumps(cal, indent=1) + "\n"))
    print(json.dumps({"n_per_tissue": cal["n_per_tissue"], "margins": cal["margins"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
