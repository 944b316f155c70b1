#!/usr/bin/env python
"""Calibration of the Monte-Carlo volume bounds on held-out synthetic subjects.

For each held-out subject of the models' split (the benchmark phantom of
``bench_consistency.py``: 1 mm, labels -> qMRI maps), simulate images in and out of
the training parameter space, add Rician noise (SNR 30 in the brain), segment each
with ``--mc-samples`` Monte-Carlo samples (dropout + aleatoric logit noise,
:func:`phys_bids.models.segment.segment_brain`), and check whether the true tissue
volume (label counts, mL) lies inside the sample [Q1, Q3] (nominal 50 %) and
[2.5, 97.5] percentiles (nominal 95 %). Also: IQR width in vs out of distribution,
and the time per Monte-Carlo sample.

    python bench/bench_calibration.py --subjects head_14 --n-images 3 --samples 8 \
        --out docs/results/calibration-preview
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.models.registry import load_model
from phys_bids.models.segment import segment_brain, volume_summary
from phys_bids.physics import rician_noise
from phys_bids.synth import load_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_consistency import conditions, phantom  # noqa: E402

TISSUES = {1: "GM", 2: "WM", 3: "CSF"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("PHYS_BIDS_DATA", str(
        Path(__file__).resolve().parents[2] / "shared" / "data")) + "/label-maps")
    ap.add_argument("--model", default="seg-physics")
    ap.add_argument("--subjects", default=None, help="default: the test split")
    ap.add_argument("--n-images", type=int, default=3, help="images per condition")
    ap.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples")
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="docs/results/calibration")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    subjects = args.subjects.split(",") if args.subjects else model.manifest["split"]["test"]
    conds = {k: v for k, v in conditions(args.n_images, args.seed).items()
             if k in args.conditions.split(",")}
    rows, sample_seconds = [], []
    g = torch.Generator().manual_seed(args.seed)
    for si, subj in enumerate(subjects):
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, present, mask, anatomy, _ = phantom(head, args.seed + si)
        truth = {t: float((anatomy == k).sum()) / 1000.0 for k, t in TISSUES.items()}
        for cname, (seq, params) in conds.items():
            for i in range(args.n_images):
                p = {k: v[i:i + 1] for k, v in params.items()}
                sig = gen.simulate_patch(seq, p, cmaps, frac)[0].abs()
                ref = float(sig[mask].mean())
                img = rician_noise(sig, ref / 30.0, generator=g) * mask
                t0 = time.perf_counter()
                res = segment_brain(model, img.numpy(), mask.numpy(), seq,
                                    {k: float(v[0]) for k, v in p.items()}, mc_samples=
                                    args.samples, seed=args.seed + i, threads=args.threads)
                sample_seconds.append((time.perf_counter() - t0) / args.samples)
                for k, t in TISSUES.items():
                    s = volume_summary(res.volumes[:, k - 1])
                    rows.append({"subject": subj, "condition": cname, "image": i, "tissue": t,
                                 "truth_ml": truth[t], **s,
                                 "in_iqr": s["q1"] <= truth[t] <= s["q3"],
                                 "in_95": s["p2_5"] <= truth[t] <= s["p97_5"]})
                print(f"{subj} {cname} {i + 1}/{args.n_images} "
                      f"{sample_seconds[-1]:.1f} s/sample", flush=True)
    summary = {}
    for cname in conds:
        r = [x for x in rows if x["condition"] == cname]
        summary[cname] = {
            "coverage_iqr": float(np.mean([x["in_iqr"] for x in r])),
            "coverage_95": float(np.mean([x["in_95"] for x in r])),
            "median_iqr_pct_of_volume": float(np.median([100 * x["iqr"] / x["median"]
                                                         for x in r])),
            "median_abs_error_pct": float(np.median([100 * abs(x["median"] - x["truth_ml"])
                                                     / x["truth_ml"] for x in r])),
            "n": len(r)}
    meta = {"model": args.model, "subjects": subjects, "images_per_condition": args.n_images,
            "samples": args.samples, "seconds_per_sample_median":
                float(np.median(sample_seconds)), "threads": args.threads,
            "command": "python bench/bench_calibration.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    lines = [f"Model {args.model}, subjects {', '.join(subjects)}, {args.n_images} images per "
             f"condition, {args.samples} samples, {meta['seconds_per_sample_median']:.1f} s "
             f"per sample ({args.threads} threads).", "",
             "| condition | truth in [Q1, Q3] (nominal 50 %) | truth in [2.5, 97.5] (nominal "
             "95 %) | median IQR, % of volume | median abs error % | n |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c, s in summary.items():
        lines.append(f"| {c} | {100 * s['coverage_iqr']:.0f} % | {100 * s['coverage_95']:.0f} %"
                     f" | {s['median_iqr_pct_of_volume']:.2f} | "
                     f"{s['median_abs_error_pct']:.1f} | {s['n']} |")
    (out / "calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
