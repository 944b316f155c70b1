#!/usr/bin/env python
"""Compare two calibration files of one model on the images they share.

Two ``calibration.json`` files (``training/calibrate_bounds.py``) that scored the same
images - same subjects, conditions, seed - with different Monte-Carlo samplers: per
tissue, how far the median volume moved, how wide the raw [Q1, Q3] and 95 % intervals
are before and after, and the conformal margins each set of rows gives. It
measured the blank-window fix of Monte-Carlo sampling with it (docs/uncertainty.md):

    python bench/compare_calibration_rows.py \\
        --old phys_bids/data/models/seg-physics/calibration.json \\
        --new docs/results/mc-blank-windows/calibration-seed101-fixed-sampler.json --seed 101
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from phys_bids.models.calibration import fit_margins

TISSUES = ("GM", "WM", "CSF")


def _key(row: dict) -> tuple:
    return row["subject"], row["condition"], row["image"], row["tissue"]


def compare(old_rows: list[dict], new_rows: list[dict], seed: int | None = None) -> dict:
    """Per tissue: median and largest |shift| of the median volume (%), median raw interval
    widths (% of the volume) before and after, and the margins fitted on each side's
    shared rows."""
    old = {_key(r): r for r in old_rows if seed is None or r["seed"] == seed}
    new = {_key(r): r for r in new_rows if seed is None or r["seed"] == seed}
    shared = sorted(set(old) & set(new))
    if not shared:
        raise ValueError("the two files share no scored image")

    def width(r, lo, hi):
        return 100 * (r[hi] - r[lo]) / r["median"]

    out = {"rows": len(shared), "tissues": {}}
    for t in TISSUES:
        ks = [k for k in shared if k[3] == t]
        if not ks:
            continue
        shift = [100 * abs(new[k]["median"] - old[k]["median"]) / old[k]["median"] for k in ks]
        out["tissues"][t] = {
            "median_shift_pct": float(np.median(shift)), "max_shift_pct": float(max(shift)),
            "iqr_width_pct": [float(np.median([width(s[k], "q1", "q3") for k in ks]))
                              for s in (old, new)],
            "p95_width_pct": [float(np.median([width(s[k], "p2_5", "p97_5") for k in ks]))
                              for s in (old, new)],
        }
    out["margins"] = {"old": fit_margins([old[k] for k in shared]),
                      "new": fit_margins([new[k] for k in shared])}
    return out


def markdown(result: dict) -> str:
    lines = [f"{result['rows']} shared rows", "",
             "| tissue | median shift of the median volume % (max) | raw [Q1, Q3] width % "
             "old / new | raw 95 % width % old / new |", "| --- | --- | --- | --- |"]
    for t, r in result["tissues"].items():
        lines.append(f"| {t} | {r['median_shift_pct']:.2f} ({r['max_shift_pct']:.2f}) | "
                     f"{r['iqr_width_pct'][0]:.2f} / {r['iqr_width_pct'][1]:.2f} | "
                     f"{r['p95_width_pct'][0]:.2f} / {r['p95_width_pct'][1]:.2f} |")
    lines += ["", "| margins (old / new) | level | " + " | ".join(TISSUES) + " |",
              "| --- | --- | " + " | ".join("---" for _ in TISSUES) + " |"]
    old, new = result["margins"]["old"], result["margins"]["new"]
    for group in ("in", "out"):
        if not old.get(group) or not new.get(group):
            continue
        for level in ("0.5", "0.95"):
            cells = [f"{old[group][t][level]:.3f} / {new[group][t][level]:.3f}"
                     if t in old[group] else "n/a" for t in TISSUES]
            where = f"{group}side the training space"
            lines.append(f"| {where} | {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="calibration.json scored first")
    ap.add_argument("--new", required=True, help="calibration.json of the same images")
    ap.add_argument("--seed", type=int, default=None, help="only the rows of this seed")
    args = ap.parse_args(argv)
    rows = [json.loads(Path(p).read_text())["rows"] for p in (args.old, args.new)]
    try:
        result = compare(*rows, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
