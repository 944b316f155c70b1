#!/usr/bin/env python
"""Which differences between training arms are larger than the seed-to-seed spread?

Every arm of docs/segmentation.md is one training run. A replicate of the reference
recipe under another seed gives, per benchmark cell (condition x tissue), how far two
runs of the *same* recipe land apart: |replicate - reference|. This script reads the
``consistency.json`` files of ``bench/bench_consistency.py`` (same subjects, images,
phantom seed and window, else it refuses), and for each arm and cell says whether it is
better or worse than the reference by more than that spread, or within it.

A single replicate is one draw of the spread, not its distribution: a cell "within"
the spread may still differ, and one "beyond" it may not. It is the control the arms
lacked, not a significance test.

    python bench/compare_arms.py \\
        --reference docs/results/consistency:seg-physics \\
        --replicate docs/results/consistency-seed2:seg-physics-seed2 \\
        --baseline docs/results/consistency:seg-baseline \\
        --arms docs/results/consistency-nodrop,docs/results/consistency-vdrop \\
        --out docs/results/arm-spread

An entry is ``FOLDER[:MODEL]`` (MODEL defaults to the only model in the folder's JSON).
Writes ``arm_spread.json`` and ``arm_spread.md`` under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TISSUES = ("GM", "WM", "CSF")
#: metric -> (label, how a value is scored: larger score is better)
METRICS = {
    "cov_x1e3": ("CoV x10^3", lambda v: -v),
    "dice_anatomy": ("Dice vs anatomy", lambda v: v),
    "volume_error_pct": ("|hard volume error| %", lambda v: -abs(v)),
}
#: the benchmark settings two result files must share to be compared
SAME = ("n_images", "subjects", "seed", "window")


def load(entry: str) -> tuple[str, dict, dict]:
    """``FOLDER[:MODEL]`` -> (model name, its summary, the file's meta)."""
    folder, _, model = entry.partition(":")
    path = Path(folder)
    path = path / "consistency.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{entry}: no consistency.json at {path}")
    data = json.loads(path.read_text())
    models = [m for m in data["summary"] if m != "atropos"]
    if not model:
        if len(models) != 1:
            raise ValueError(f"{entry}: {path} holds {models}; name one as FOLDER:MODEL")
        model = models[0]
    if model not in data["summary"]:
        raise ValueError(f"{entry}: {path} has no model {model!r} (it has {models})")
    return model, data["summary"][model], data["meta"]


def _check_same(metas: dict[str, dict]) -> None:
    names = list(metas)
    first = metas[names[0]]
    for name in names[1:]:
        for key in SAME:
            if metas[name].get(key) != first.get(key):
                raise ValueError(f"{name} was benchmarked with {key}={metas[name].get(key)!r}, "
                                 f"{names[0]} with {first.get(key)!r}: not the same images")


def _mean(summary: dict, metric: str, condition: str, tissue: str) -> float:
    try:
        return float(summary[condition][metric][tissue][0])  # [mean, SD over subjects]
    except KeyError as err:
        raise ValueError(f"a result has no {condition} {metric} {tissue} (a partial run? "
                         f"rerun bench_consistency.py with --resume): missing {err}") from None


def _verdict(gain: float, spread: float, labels=("better", "worse")) -> str:
    """``labels[0]`` where ``gain`` exceeds the spread, ``labels[1]`` where the loss
    does, else ``within``."""
    return labels[0] if gain > spread else labels[1] if -gain > spread else "within"


def compare(reference: tuple, replicate: tuple, arms: list[tuple],
            baseline: tuple | None = None) -> dict:
    """Each argument is a ``load()`` result. Per metric and cell: the reference, the
    replicate and their spread; per arm, its value and verdict (``better``/``worse``
    by more than the spread, or ``within``) and the counts; with a baseline, in how
    many CoV columns each physics run is lower than the baseline, and in how many it is
    lower or higher by more than the spread (``cov_vs_baseline_beyond_spread``)."""
    runs = [reference, replicate, *arms] + ([baseline] if baseline else [])
    names = [r[0] for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model appears twice: {names}")
    _check_same({r[0]: r[2] for r in runs})
    ref, rep = reference[1], replicate[1]
    # the conditions the reference was benchmarked on (bench_consistency --conditions);
    # every other run must have them all
    conditions = list(ref)
    out = {"reference": reference[0], "replicate": replicate[0],
           "baseline": baseline[0] if baseline else None,
           "arms": [a[0] for a in arms],
           "settings": {k: reference[2].get(k) for k in SAME}, "conditions": conditions,
           "metrics": {}}
    for metric, (label, score) in METRICS.items():
        cells, counts = [], {a[0]: {"better": 0, "worse": 0, "within": 0} for a in arms}
        for c in conditions:
            for t in TISSUES:
                r0, r1 = _mean(ref, metric, c, t), _mean(rep, metric, c, t)
                spread = abs(score(r1) - score(r0))
                cell = {"condition": c, "tissue": t, "reference": r0, "replicate": r1,
                        "spread": spread, "arms": {}}
                for name, summary, _ in arms:
                    v = _mean(summary, metric, c, t)
                    gain = score(v) - score(r0)
                    verdict = _verdict(gain, spread)
                    counts[name][verdict] += 1
                    cell["arms"][name] = {"value": v, "verdict": verdict}
                cells.append(cell)
        spreads = [c["spread"] for c in cells]
        relative = [c["spread"] / abs(c["reference"]) for c in cells if c["reference"]]
        out["metrics"][metric] = {"label": label, "cells": cells, "counts": counts,
                                  "median_spread": float(np.median(spreads)),
                                  "median_relative_spread": float(np.median(relative))}
    if baseline:
        base = baseline[1]
        physics_runs = [reference, replicate, *arms]
        out["cov_below_baseline"] = {
            name: sum(_mean(s, "cov_x1e3", c, t) < _mean(base, "cov_x1e3", c, t)
                      for c in conditions for t in TISSUES)
            for name, s, _ in physics_runs}
        # the same question asked against the seed spread: lower (or higher) than the
        # baseline by more than two runs of one recipe differ in that cell
        spread = {(cell["condition"], cell["tissue"]): cell["spread"]
                  for cell in out["metrics"]["cov_x1e3"]["cells"]}
        vs = {}
        for name, s, _ in physics_runs:
            n = {"lower": 0, "higher": 0, "within": 0}
            for c in conditions:
                for t in TISSUES:
                    gap = _mean(base, "cov_x1e3", c, t) - _mean(s, "cov_x1e3", c, t)
                    n[_verdict(gap, spread[c, t], ("lower", "higher"))] += 1
            vs[name] = n
        out["cov_vs_baseline_beyond_spread"] = vs
    return out


def markdown(res: dict) -> str:
    arms = res["arms"]
    n_cells = len(res["conditions"]) * len(TISSUES)
    lines = [f"Reference `{res['reference']}`, replicate `{res['replicate']}` (same recipe, "
             "another seed). Spread = |replicate - reference| in the cell; an arm is "
             "**better** or *worse* where it differs from the reference by more than "
             "that, `=` where it does not.", ""]
    for metric in METRICS:
        m = res["metrics"][metric]
        lines += [f"### {m['label']}", "",
                  "| cell | reference | replicate | spread | " + " | ".join(arms) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in arms) + " |"]
        for cell in m["cells"]:
            marks = []
            for a in arms:
                v, verdict = cell["arms"][a]["value"], cell["arms"][a]["verdict"]
                marks.append(f"**{v:.3g}**" if verdict == "better" else
                             f"*{v:.3g}*" if verdict == "worse" else f"{v:.3g} =")
            lines.append(f"| {cell['condition']} {cell['tissue']} | {cell['reference']:.3g} | "
                         f"{cell['replicate']:.3g} | {cell['spread']:.3g} | "
                         + " | ".join(marks) + " |")
        lines.append("| better / worse / within | | | | " + " | ".join(
            "{better} / {worse} / {within}".format(**m["counts"][a]) for a in arms) + " |")
        lines += ["", f"Median spread over the {n_cells} cells: {m['median_spread']:.3g} "
                  f"({100 * m['median_relative_spread']:.0f} % of the reference's value).", ""]
    if res.get("cov_below_baseline"):
        lines += [f"CoV columns (of {n_cells}) below the baseline `{res['baseline']}`: "
                  + ", ".join(f"`{k}` {v}" for k, v in res["cov_below_baseline"].items()), ""]
        lines += ["Lower / higher than the baseline's CoV by more than the seed spread "
                  "(else within): " + ", ".join(
                      "`{}` {lower} / {higher} / {within}".format(k, **v)
                      for k, v in res["cov_vs_baseline_beyond_spread"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="FOLDER[:MODEL] of the reference run")
    ap.add_argument("--replicate", required=True,
                    help="FOLDER[:MODEL] of the same recipe under another seed")
    ap.add_argument("--arms", default="", help="comma-separated FOLDER[:MODEL] of the arms")
    ap.add_argument("--baseline", default=None,
                    help="FOLDER[:MODEL] of the baseline: count the CoV columns below it")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for arm_spread.json and .md (default: print only)")
    args = ap.parse_args(argv)
    try:
        result = compare(load(args.reference), load(args.replicate),
                         [load(e) for e in args.arms.split(",") if e.strip()],
                         load(args.baseline) if args.baseline else None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = markdown(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "arm_spread.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "arm_spread.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
