#!/usr/bin/env python
"""Where a model's validation CoV comes from: error of the volume, or spread across acquisitions?

A training run scores its model on fixed validation batches: each is one patch of a
validation subject under N acquisitions (realisations) of one sequence. Per batch and
tissue this script reads the soft volume under every acquisition against the true
volume of the patch, and reports

* the mean signed volume error over the acquisitions (the patch's bias) and the CoV
  across them (what the validation ``cov_x1e3`` averages);
* over the batch x tissue cells: the Spearman correlation between |mean error| and
  CoV, and the medians of both (a model that is consistent because it is wrong shows
  a low CoV beside a large error);
* the voxel-level disagreement: mean squared difference of the class probabilities
  between the acquisitions of a batch (what ``output_consistency_weight`` penalises).

    python bench/validation_consistency.py --models <dir>,<dir>,seg-physics \\
        --out docs/results/validation-consistency

--models: model folders or model names (``$PHYS_BIDS_MODELS`` / shipped). The models'
validation batches are rebuilt from their manifests (:func:`run_validation_batches`):
models of different seeds, splits or generator settings are scored on different
batches, and the table says which share them. Writes ``validation_consistency.json``
and ``.md`` under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.stats import spearmanr

from phys_bids.models.losses import stratification_loss
from phys_bids.models.registry import load_model
from phys_bids.models.training import TrainConfig, _aligned_at, run_validation_batches
from phys_bids.synth.evaluation import aligned_label_maps, development_data

TISSUES = ("GM", "WM", "CSF")


def batches_key(manifest: dict) -> str:
    """What fixes a run's validation batches: seed, split, patch, realisations,
    generator settings and which label maps (native or aligned) it ended on."""
    cfg = TrainConfig.from_dict(manifest["train_config"])
    key = {"seed": cfg.seed, "val": list(cfg.val_subjects), "patch": cfg.patch,
           "realisations": cfg.realisations, "synth": cfg.synth,
           "aligned": _aligned_at(cfg, manifest["steps"])}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


@torch.no_grad()
def score(model, batches: list[dict]) -> dict:
    """Per batch: volumes under each acquisition, truth, error, CoV, disagreement."""
    net = model.network.eval()
    rows = []
    for b in batches:
        logits = net(b["image"], b["physics"] if model.physics else None)[0]
        probs = torch.softmax(logits, 1)
        vols = probs[:, 1:].sum((2, 3, 4)).double()  # (N, 3), voxels
        truth = b["target"][1:].sum((1, 2, 3)).double()  # (3,)
        err = (vols - truth) / truth
        rows.append({
            "sequence": b["sequence"],
            "params": {k: [round(float(x), 6) for x in v.flatten()]
                       for k, v in b["params"].items()},
            "truth_voxels": truth.tolist(),
            "volumes_voxels": vols.tolist(),
            "mean_error_pct": (100 * err.mean(0)).tolist(),
            "cov_x1e3": (1e3 * vols.std(0, unbiased=False) / vols.mean(0)).tolist(),
            "disagreement": float(stratification_loss(probs)),
        })
    err = np.abs([r["mean_error_pct"] for r in rows]).ravel()
    cov = np.array([r["cov_x1e3"] for r in rows]).ravel()
    # undefined (nan) where either is constant, e.g. a network that outputs the truth
    rho = (spearmanr(err, cov) if np.ptp(err) > 0 and np.ptp(cov) > 0
           else SimpleNamespace(statistic=float("nan"), pvalue=float("nan")))
    return {
        "batches": rows,
        "cov_x1e3_mean": dict(zip(TISSUES, np.mean([r["cov_x1e3"] for r in rows], 0).tolist(),
                                  strict=True)),
        "median_abs_error_pct": float(np.median(err)),
        "median_cov_x1e3": float(np.median(cov)),
        "median_cov_over_abs_error": float(np.median(cov / 10 / np.maximum(err, 1e-9))),
        "spearman_abs_error_cov": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "disagreement_mean": float(np.mean([r["disagreement"] for r in rows])),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated model folders or names")
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--aligned-data", default=str(aligned_label_maps()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results, cache = {}, {}
    for entry in args.models.split(","):
        try:
            model = load_model(entry)
        except FileNotFoundError as exc:
            sys.exit(f"--models: {exc}")
        key = batches_key(model.manifest)
        if key not in cache:
            cache[key] = run_validation_batches(model.manifest, args.data, args.aligned_data)
        name = model.manifest["name"]
        results[name] = {"batches_key": key, "steps": model.manifest["steps"],
                         "weights_sha256": model.manifest["weights_sha256"],
                         **score(model, cache[key])}
        r = results[name]
        print(f"{name}: median |error| {r['median_abs_error_pct']:.1f} %, median CoV "
              f"{r['median_cov_x1e3']:.1f}, Spearman {r['spearman_abs_error_cov']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation_consistency.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| model | steps | validation batches | CoV x10^3 GM / WM / CSF (mean over "
             "batches) | median CoV x10^3 | median abs volume error % | median CoV / abs "
             "error | Spearman(abs error, CoV) (p) | voxel disagreement |",
             "| --- " * 9 + "|"]
    for name, r in results.items():
        c = r["cov_x1e3_mean"]
        lines.append(f"| {name} | {r['steps']} | {r['batches_key']} | "
                     + " / ".join(f"{c[t]:.1f}" for t in TISSUES)
                     + f" | {r['median_cov_x1e3']:.1f} | {r['median_abs_error_pct']:.1f} | "
                     f"{r['median_cov_over_abs_error']:.2f} | "
                     f"{r['spearman_abs_error_cov']:.2f} ({r['spearman_p']:.1g}) | "
                     f"{r['disagreement_mean']:.4f} |")
    lines += ["", "Per batch (sequence; mean signed volume error % GM / WM / CSF; CoV x10^3 "
              "GM / WM / CSF):", ""]
    for name, r in results.items():
        cells = [f"{b['sequence']} " + "/".join(f"{e:+.0f}" for e in b["mean_error_pct"])
                 + "; " + "/".join(f"{c:.0f}" for c in b["cov_x1e3"]) for b in r["batches"]]
        lines.append(f"* {name}: " + " | ".join(cells))
    (out / "validation_consistency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2 + len(results)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
