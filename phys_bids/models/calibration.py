"""Calibrated volume bounds: split-conformal widening of the Monte-Carlo quantiles.

The Monte-Carlo samples (dropout + aleatoric logit noise) measure the network's
*spread*, not its error: on held-out synthetic subjects the true volume falls
inside the sample [Q1, Q3] far less often than the nominal 50 %
(docs/results/calibration-preview). Conformalised quantile regression (Romano,
Patterson & Candes 2019) fixes the coverage without retraining: on calibration
images with known truth, score each interval by how far the truth lies outside it,

    E_i = max(lo_i - y_i, y_i - hi_i) / median_i          (relative to the volume)

and widen every later interval by the ``ceil((n + 1) level) / n`` empirical quantile
of the scores, per tissue and nominal level. With calibration and test images
exchangeable, the widened intervals cover the truth with probability >= level.
The margins belong to one model and one sample count; they live next to the weights
in ``calibration.json``, written by ``training/calibrate_bounds.py``.

>>> rows = [{"tissue": "GM", "truth_ml": 100.0, "median": 90.0, "q1": 89.0, "q3": 91.0,
...          "p2_5": 88.0, "p97_5": 92.0}] * 3
>>> m = conformal_margins(rows)
>>> round(m["GM"]["0.5"], 4), round(m["GM"]["0.95"], 4)
(0.1, 0.0889)
>>> widen({"median": 90.0, "q1": 89.0, "q3": 91.0, "p2_5": 88.0, "p97_5": 92.0}, m["GM"])
{'q1': 80.0, 'q3': 100.0, 'p2_5': 80.0, 'p97_5': 100.0}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..physics.tissues import TARGETS

__all__ = ["LEVELS", "conformal_margins", "fit_margins", "margins_for", "widen",
           "load_calibration", "calibration_rows", "training_space_flags", "coverage_summary"]

#: nominal level -> the sample quantiles bounding it
LEVELS = {"0.5": ("q1", "q3"), "0.95": ("p2_5", "p97_5")}


def conformal_margins(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per tissue and level, the relative margin that makes the intervals cover."""
    out: dict[str, dict[str, float]] = {}
    for tissue in sorted({r["tissue"] for r in rows}):
        rs = [r for r in rows if r["tissue"] == tissue]
        out[tissue] = {}
        for level, (lo, hi) in LEVELS.items():
            scores = np.array([max(r[lo] - r["truth_ml"], r["truth_ml"] - r[hi]) / r["median"]
                               for r in rs])
            n = len(scores)
            k = min(n, math.ceil((n + 1) * float(level)))
            out[tissue][level] = float(np.sort(scores)[k - 1])
    return out


def fit_margins(rows: list[dict]) -> dict:
    """Margins fitted separately for acquisitions inside and outside the model's training
    space (``row["in_training_space"]``): out-of-distribution errors are larger, and one
    pooled margin would widen in-distribution bounds for them. ``None`` for an empty group.
    """
    out = {}
    for key, flag in (("in", True), ("out", False)):
        group = [r for r in rows if r["in_training_space"] is flag]
        out[key] = conformal_margins(group) if group else None
    return out


def margins_for(calibration: dict | None, tissue: str, inside: bool) -> dict | None:
    """The margins of ``tissue`` for an acquisition inside/outside the training space."""
    if not calibration:
        return None
    group = calibration["margins"].get("in" if inside else "out")
    return None if group is None else group.get(tissue)


def training_space_flags(rows: list[dict], n_images: int, seed: int) -> None:
    """Set ``in_training_space`` on calibration rows from their condition and image index
    (the parameters are those of :func:`phys_bids.models.evaluation.conditions`)."""
    from ..physics.spaces import in_training_space
    from .evaluation import conditions

    conds = conditions(n_images, seed)
    for r in rows:
        seq, params = conds[r["condition"]]
        r["in_training_space"] = in_training_space(
            seq, {k: float(v[r["image"]]) for k, v in params.items()})[0]


def widen(stats: dict, margins: dict[str, float]) -> dict[str, float]:
    """Calibrated bounds of one tissue's sample summary (mL)."""
    res = {}
    for level, (lo, hi) in LEVELS.items():
        d = margins[level] * stats["median"]
        res[lo], res[hi] = stats[lo] - d, stats[hi] + d
    return {k: res[k] for k in ("q1", "q3", "p2_5", "p97_5")}


def coverage_summary(rows: list[dict], calibration: dict | None) -> dict:
    """How often the truth lies inside the raw and (with ``calibration``) the widened
    intervals, per condition and for all rows in / out of the training space.

    Sets per-row flags (``in_iqr``, ``in_95``, ``cal_in_iqr``, ``cal_in_95``, and the
    calibrated widths in % of the median volume); returns, per group, the raw coverage,
    median IQR and absolute error (% of volume) and n, plus a ``"calibrated"`` section.
    """
    for x in rows:
        x["in_iqr"] = x["q1"] <= x["truth_ml"] <= x["q3"]
        x["in_95"] = x["p2_5"] <= x["truth_ml"] <= x["p97_5"]
        for k in ("cal_in_iqr", "cal_in_95", "cal_width_50_pct", "cal_width_95_pct"):
            x.pop(k, None)  # flags of an earlier scoring
        margins = margins_for(calibration, x["tissue"], x["in_training_space"])
        if margins:
            w = widen(x, margins)
            x["cal_in_iqr"] = w["q1"] <= x["truth_ml"] <= w["q3"]
            x["cal_in_95"] = w["p2_5"] <= x["truth_ml"] <= w["p97_5"]
            x["cal_width_50_pct"] = 100 * (w["q3"] - w["q1"]) / x["median"]
            x["cal_width_95_pct"] = 100 * (w["p97_5"] - w["p2_5"]) / x["median"]
    groups = {c: [x for x in rows if x["condition"] == c]
              for c in dict.fromkeys(x["condition"] for x in rows)}
    groups["all in distribution"] = [x for x in rows if x["in_training_space"]]
    groups["all out of distribution"] = [x for x in rows if not x["in_training_space"]]
    summary: dict = {}
    for name, r in groups.items():
        if not r:
            continue
        if calibration and all("cal_in_iqr" in x for x in r):
            summary.setdefault("calibrated", {})[name] = {
                k: float(np.mean([x[k] for x in r])) for k in
                ("cal_in_iqr", "cal_in_95", "cal_width_50_pct", "cal_width_95_pct")}
        summary[name] = {
            "coverage_iqr": float(np.mean([x["in_iqr"] for x in r])),
            "coverage_95": float(np.mean([x["in_95"] for x in r])),
            "median_iqr_pct_of_volume": float(np.median([100 * x["iqr"] / x["median"]
                                                         for x in r])),
            "median_abs_error_pct": float(np.median([100 * abs(x["median"] - x["truth_ml"])
                                                     / x["truth_ml"] for x in r])),
            "n": len(r)}
    return summary


def load_calibration(model_dir) -> dict | None:
    """``calibration.json`` of a model folder, or None when the model has none."""
    p = Path(model_dir) / "calibration.json"
    return json.loads(p.read_text()) if p.is_file() else None


#: label value -> tissue, as in dseg.tsv
TISSUES = {k: name for k, name in enumerate(TARGETS) if k}


def calibration_rows(model, heads: dict, *, condition_names, n_images: int, samples: int,
                     seed: int, threads: int | None = None, progress=print):
    """Monte-Carlo volume summaries and the truth, per image and tissue, on 1 mm phantoms
    of ``heads`` ({subject: Head}) under the named conditions; also the seconds per sample.

    Each image: :func:`phys_bids.models.evaluation.noisy_image` (SNR 30), segmented with
    ``samples`` Monte-Carlo samples (seed ``seed + image``); truth = label voxel counts.
    """
    import time

    import torch

    from .evaluation import conditions, noisy_image, phantom
    from .segment import segment_brain, volume_summary

    conds = {k: v for k, v in conditions(n_images, seed).items() if k in condition_names}
    g = torch.Generator().manual_seed(seed)
    rows, seconds = [], []
    for si, (subj, head) in enumerate(heads.items()):
        gen, cmaps, frac, present, mask, anatomy, _ = phantom(head, seed + si)
        truth = {t: float((anatomy == k).sum()) / 1000.0 for k, t in TISSUES.items()}
        for cname, (seq, params) in conds.items():
            for i in range(n_images):
                p = {k: v[i:i + 1] for k, v in params.items()}
                img = noisy_image(gen, cmaps, frac, mask, seq, p, g)
                t0 = time.perf_counter()
                res = segment_brain(model, img.numpy(), mask.numpy(), seq,
                                    {k: float(v[0]) for k, v in p.items()},
                                    mc_samples=samples, seed=seed + i, threads=threads)
                seconds.append((time.perf_counter() - t0) / samples)
                for k, t in TISSUES.items():
                    s = volume_summary(res.volumes[:, k - 1])
                    rows.append({"subject": subj, "condition": cname, "image": i,
                                 "tissue": t, "truth_ml": truth[t], **s})
                if progress:
                    progress(f"{subj} {cname} {i + 1}/{n_images} {seconds[-1]:.1f} s/sample")
    training_space_flags(rows, n_images, seed)
    return rows, seconds
