#!/usr/bin/env python
"""Calibration of the Monte-Carlo volume bounds on held-out synthetic subjects.

For each held-out subject of the models' split (the benchmark phantom of
``bench_consistency.py``: 1 mm, labels -> qMRI maps), simulate images in and out of
the training parameter space, add Rician noise (SNR 30 in the brain), segment each
with ``--mc-samples`` Monte-Carlo samples (dropout + aleatoric logit noise,
:func:`phys_bids.models.segment.segment_brain`), and check whether the true tissue
volume (label counts, mL) lies inside the sample [Q1, Q3] (nominal 50 %) and
[2.5, 97.5] percentiles (nominal 95 %). Also: IQR width in vs out of distribution,
and the time per Monte-Carlo sample. ``--rescore`` re-applies the model's current
margins to the stored rows (after ``training/calibrate_bounds.py`` refitted them).

    python bench/bench_calibration.py --subjects head_14 --n-images 3 --samples 8 \
        --out docs/results/calibration-preview
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from phys_bids.models.calibration import calibration_rows, coverage_summary
from phys_bids.models.evaluation import development_data
from phys_bids.models.registry import load_model
from phys_bids.synth import load_head


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--model", default="seg-physics")
    ap.add_argument("--subjects", default=None, help="default: the test split")
    ap.add_argument("--n-images", type=int, default=3, help="images per condition")
    ap.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples")
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="docs/results/calibration")
    ap.add_argument("--rescore", action="store_true",
                    help="no new images: re-apply the model's current calibration.json to "
                         "the rows stored in OUT/calibration.json (after refitting margins)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    model = load_model(args.model)
    cal = model.calibration
    if args.rescore:
        stored = json.loads((out / "calibration.json").read_text())
        meta, rows = stored["meta"], stored["rows"]
        if cal:
            meta["rescored"] = {"command": "python bench/bench_calibration.py "
                                + " ".join(sys.argv[1:]),
                                "calibration": cal.get("refit_by") or cal.get("command")}
    else:
        torch.set_num_threads(args.threads)
        subjects = (args.subjects.split(",") if args.subjects
                    else model.manifest["split"]["test"])
        heads = {s: load_head(Path(args.data) / f"{s}.nii.gz") for s in subjects}
        rows, sample_seconds = calibration_rows(
            model, heads, condition_names=args.conditions.split(","),
            n_images=args.n_images, samples=args.samples, seed=args.seed,
            threads=args.threads, progress=lambda m: print(m, flush=True))
        meta = {"model": args.model, "subjects": subjects,
                "images_per_condition": args.n_images, "samples": args.samples,
                "seconds_per_sample_median": float(np.median(sample_seconds)),
                "threads": args.threads,
                "command": "python bench/bench_calibration.py " + " ".join(sys.argv[1:])}
    summary = coverage_summary(rows, cal)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    text = report(meta, summary, cal)
    (out / "calibration.md").write_text(text)
    print(text, end="")
    return 0


def report(meta: dict, summary: dict, cal: dict | None) -> str:
    lines = [f"Model {meta['model']}, subjects {', '.join(meta['subjects'])}, "
             f"{meta['images_per_condition']} images per condition, {meta['samples']} "
             f"samples, {meta['seconds_per_sample_median']:.1f} s per sample "
             f"({meta['threads']} threads).", "",
             "| condition | truth in [Q1, Q3] (nominal 50 %) | truth in [2.5, 97.5] (nominal "
             "95 %) | median IQR, % of volume | median abs error % | n |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c, s in summary.items():
        if c == "calibrated":
            continue
        lines.append(f"| {c} | {100 * s['coverage_iqr']:.0f} % | {100 * s['coverage_95']:.0f} %"
                     f" | {s['median_iqr_pct_of_volume']:.2f} | "
                     f"{s['median_abs_error_pct']:.1f} | {s['n']} |")
    if cal:
        lines += ["", f"Calibrated (conformal margins fitted on {', '.join(cal['subjects'])} "
                  f"with {cal['mc_samples']} samples, {cal['n_per_tissue']} images per "
                  "tissue inside/outside the training space; training/calibrate_bounds.py):",
                  "",
                  "| condition | truth in calibrated 50 % interval | in calibrated 95 % | "
                  "50 % width, % of volume | 95 % width, % of volume |",
                  "| --- | --- | --- | --- | --- |"]
        for c, v in summary["calibrated"].items():
            lines.append(f"| {c} | {100 * v['cal_in_iqr']:.0f} % | {100 * v['cal_in_95']:.0f} %"
                         f" | {v['cal_width_50_pct']:.1f} | {v['cal_width_95_pct']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
