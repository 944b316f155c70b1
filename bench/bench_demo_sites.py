#!/usr/bin/env python
"""Travelling subjects through the whole application: physics model vs baseline.

Writes the demo dataset (three heads, each scanned at three sites: Siemens MPRAGE
TI 0.9 s, Philips MPRAGE TI 1.1 s, GE SPGR), runs ``phys-bids participant`` and
``group`` with each model (the preprocessing is shared through one work dir), and
compares, per tissue:

* the within-subject coefficient of variation across the three sites (x10^3), from
  ``group/site_effects.json`` - what the physics branch is meant to lower;
* the error against the true volumes of the demo's anatomy
  (:func:`phys_bids.demo.demo_truth`): mean signed and mean absolute % error.

    python bench/bench_demo_sites.py --out docs/results/demo-sites --omp-nthreads 2

``--models`` takes shipped network names and ``bayes``, the physics-tied Bayesian
segmentation (``participant --segmenter bayes``). ``--harmonise-contrast`` runs
participant with that option (each image re-rendered at the reference protocol by the
signal equation before segmentation, phys_bids.preproc.harmonise).

writes ``demo_sites.json`` and ``demo_sites.md``; every step's time is in the
runs' ``logs/*/steps.tsv``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from common import TISSUES, clear, error_vs_truth, run  # bench/, beside this script

from phys_bids.demo import demo_truth, write_demo_dataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/phys-bids-bench-demo", help="scratch folder")
    ap.add_argument("--out", default="docs/results/demo-sites")
    ap.add_argument("--omp-nthreads", type=int, default=2)
    ap.add_argument("--models", default="seg-physics,seg-baseline")
    ap.add_argument("--harmonise-contrast", action="store_true",
                    help="pass --harmonise-contrast to participant (recorded in the results)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    bids = work / "bids"
    if not bids.exists():
        write_demo_dataset(bids)
    truth = demo_truth()
    results = {"truth_ml": truth, "harmonise_contrast": args.harmonise_contrast, "models": {}}
    for model in args.models.split(","):
        out = work / f"out-{model}"
        clear(out, work / "work")
        method = ["--segmenter", "bayes"] if model == "bayes" else ["--model", model]
        seconds = run([str(bids), str(out), "participant", "-w", str(work / "work"),
                       *method, "--omp-nthreads", str(args.omp_nthreads),
                       "--nprocs", str(args.omp_nthreads)]
                      + (["--harmonise-contrast"] if args.harmonise_contrast else []))
        run([str(bids), str(out), "group", "-w", str(work / "work")])
        effects = json.loads((out / "group" / "site_effects.json").read_text())
        with open(out / "group" / "volumes.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        err = error_vs_truth(rows, truth)
        results["models"][model] = {
            "participant_seconds": round(seconds, 1),
            "within_subject_cov_x1e3": {t: effects["tissues"][t]["within_subject"]
                                        ["mean_cov_x1e3"] for t in TISSUES},
            "partial_eta2_site": {t: effects["tissues"][t]["partial_eta2_site_given_subject"]
                                  for t in TISSUES},
            "error_vs_truth": err,
            "volumes": rows,
        }
        print(model, json.dumps(results["models"][model]["within_subject_cov_x1e3"]))
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "demo_sites.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| model | within-subject CoV x10^3 GM | WM | CSF | site share of variance "
             "(after subject) GM | WM | CSF | mean abs error vs truth GM % | WM % | CSF % |",
             "| --- " * 10 + "|"]
    for m, r in results["models"].items():
        c, e, p = r["within_subject_cov_x1e3"], r["error_vs_truth"], r["partial_eta2_site"]
        lines.append(f"| {m} | " + " | ".join(f"{c[t]:.1f}" for t in TISSUES) + " | "
                     + " | ".join(f"{p[t]:.2f}" for t in TISSUES) + " | "
                     + " | ".join(f"{e[t]['mean_abs_pct']:.1f}" for t in TISSUES) + " |")
    (dest / "demo_sites.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
