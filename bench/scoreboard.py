#!/usr/bin/env python
"""The segmentation goals, cell by cell, from the 121-image consistency benchmark folders.

The consistency benchmark's results lie in one folder per condition and method group
(``bench/bench_consistency.py`` runs measured in different sessions: the networks on
MPRAGE-ID, Atropos alone, the networks behind ``--harmonise``, ...). This script reads
their ``consistency.json`` files and writes, in one table per measure, every method
(a network as acquired, a network behind the harmoniser, Atropos) against every
condition, beside the paper's best (Phys-Strat-Aug, CoV x10^3 GM / WM), and then
the goals for each physics row:

* CoV below the paper's best in GM and WM (the paper gives no CSF figure);
* Dice vs anatomy >= 0.93 in GM, WM and CSF;
* CoV below the baseline's and Atropos's (as acquired) in GM, WM and CSF.

A cell is the mean over the subjects that measured it (from each file's
``per_subject``, so a folder of some subjects is used as it is). A cell measured on
fewer subjects than the others is marked; a method is compared with another over the
subjects both measured, and a goal judged on fewer than all says on which. Cells no
folder holds are listed as not measured:

    python bench/scoreboard.py --results docs/results/consistency-121 \\
        --results docs/results/consistency-121-spgr-id ... --out docs/results/scoreboard

writes ``scoreboard.md`` and ``scoreboard.json`` under --out. Folders of another image
count, phantom seed, window, flip TTA or physics clamp than the rest (the settings
``bench/compare_harmonise.py`` requires alike) are refused, and so is a cell that two
folders both hold (which one counts would be a guess).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import SAME  # bench/, beside this script: the settings runs share

CONDITIONS = ("mprage-id", "mprage-ood", "spgr-id", "spgr-ood")
TISSUES = ("GM", "WM", "CSF")
#: the paper's best (acquisition-invariant-segmentation-uncertainty, Phys-Strat-Aug),
#: CoV x10^3 GM / WM per condition, as Borges et al. 2021 report them (Phys-Strat-Aug)
PAPER_BEST = {"mprage-id": (0.42, 0.51), "mprage-ood": (4.74, 3.65),
              "spgr-id": (15.76, 7.12), "spgr-ood": (28.88, 44.78)}
DICE_GOAL = 0.93


def row_name(method: str, meta: dict) -> str:
    """A method's row: its name, with the harmoniser's mode where the run used one (runs
    from before the landmark mode recorded ``true``: the curve, the only mode then)."""
    mode = meta.get("harmonise")
    if mode is True:
        mode = "curve"
    return f"{method} --harmonise {mode}" if mode and mode != "none" else method


def gather(folders: list[Path]) -> tuple[dict, dict]:
    """``({row: {condition: {subject: {"cov": [3], "dice": [3]}}}}, settings)`` over the
    folders' ``per_subject`` entries; one actionable line for a missing file, mixed
    image counts or seeds, and a cell two folders hold."""
    cells: dict = {}
    source: dict = {}
    settings: dict = {}
    for folder in folders:
        path = folder / "consistency.json"
        if not path.is_file():
            raise SystemExit(f"--results {folder}: no consistency.json there "
                             "(a bench/bench_consistency.py --out folder)")
        doc = json.loads(path.read_text())
        meta = doc["meta"]
        for key, missing in SAME.items():  # compare_harmonise's: images and settings
            value = meta.get(key, missing)
            seen = settings.setdefault(key, (value, folder))
            if seen[0] != value:
                raise SystemExit(f"--results {folder}: {key} {value} where {seen[1]} "
                                 f"has {seen[0]}; the cells would not compare")
        for method, conds in doc["per_subject"].items():
            row = row_name(method, meta)
            for cond, subjects in conds.items():
                if cond not in CONDITIONS:
                    raise SystemExit(f"--results {folder}: unknown condition {cond!r}")
                if (row, cond) in source:
                    raise SystemExit(f"--results: {row} {cond} is in both "
                                     f"{source[row, cond]} and {folder}; give one of them")
                source[row, cond] = folder
                cells.setdefault(row, {})[cond] = {
                    r["subject"]: {"cov": [r["cov_x1e3"][t] for t in TISSUES],
                                   "dice": [r["dice_anatomy"][t] for t in TISSUES]}
                    for r in subjects}
    return cells, {k: v[0] for k, v in settings.items()}


def summarise(cells: dict) -> dict:
    """Per row and condition: mean CoV and Dice over the cell's subjects, the subjects,
    and whether they are all the subjects any cell holds (``complete``)."""
    everyone = sorted({s for conds in cells.values() for c in conds.values() for s in c})
    out: dict = {}
    for row, conds in cells.items():
        for cond, subj in conds.items():
            cov = np.array([v["cov"] for v in subj.values()], dtype=np.float64)
            dice = np.array([v["dice"] for v in subj.values()], dtype=np.float64)
            out.setdefault(row, {})[cond] = {
                "subjects": sorted(subj), "complete": sorted(subj) == everyone,
                # nanmean: a subject on which every Atropos image failed has NaN figures
                "cov_x1e3": dict(zip(TISSUES, np.nanmean(cov, 0).tolist(), strict=True)),
                "dice_anatomy": dict(zip(TISSUES, np.nanmean(dice, 0).tolist(),
                                         strict=True))}
    return {"subjects": everyone, "rows": out}


def _mean_cov(cell: dict, subjects: list[str]) -> dict:
    """A cell's mean CoV per tissue over ``subjects``."""
    cov = np.nanmean([cell[s]["cov"] for s in subjects], 0)
    return dict(zip(TISSUES, cov.tolist(), strict=True))


def goals(cells: dict, summary: dict, physics: list[str], baseline: str,
          classical: str) -> dict:
    """Per physics row and condition: each goal as ``True`` / ``False`` / ``None`` (not
    measured), the tissues where a comparison fails, and ``partial``: the goals judged
    on fewer subjects than the board holds. Two methods are compared over the subjects
    both measured (``compared_on``), never a mean of some subjects against another's."""
    rows = summary["rows"]
    out: dict = {}
    for p in physics:
        for cond in CONDITIONS:
            cell = rows.get(p, {}).get(cond)
            if cell is None:
                continue
            cov, dice = cell["cov_x1e3"], cell["dice_anatomy"]
            g = {"paper": all(cov[t] < b for t, b in zip(("GM", "WM"), PAPER_BEST[cond],
                                                      strict=True)),
                 "dice": all(dice[t] >= DICE_GOAL for t in TISSUES)}
            partial = [] if cell["complete"] else ["paper", "dice"]
            for name, other in (("baseline", baseline), ("classical", classical)):
                if cond not in cells.get(other, {}):
                    g[name] = None
                    continue
                common = sorted(set(cells[p][cond]) & set(cells[other][cond]))
                if not common:
                    g[name] = None
                    continue
                ours = _mean_cov(cells[p][cond], common)
                theirs = _mean_cov(cells[other][cond], common)
                worse = [t for t in TISSUES if not ours[t] < theirs[t]]
                g[name] = not worse
                g[f"{name}_not_below"] = worse
                g[f"{name}_compared_on"] = common
                if common != summary["subjects"]:
                    partial.append(name)
            g["partial"] = partial
            out.setdefault(p, {})[cond] = g
    return out


def _fmt(values: dict, digits: int) -> str:
    return " / ".join(f"{values[t]:.{digits}f}" for t in TISSUES)


def markdown(summary: dict, verdict: dict, order: list[str], settings: dict,
             folders: list[Path], baseline: str, classical: str) -> str:
    rows = summary["rows"]
    head = "| | " + " | ".join(CONDITIONS) + " |"
    rule = "|---" * (len(CONDITIONS) + 1) + "|"

    def cell(row: str, cond: str, key: str, digits: int) -> str:
        c = rows.get(row, {}).get(cond)
        if c is None:
            return "not measured"
        mark = "" if c["complete"] else f" ({', '.join(c['subjects'])} only)"
        return _fmt(c[key], digits) + mark

    lines = [f"The consistency benchmark: {settings['n_images']} images per subject and "
             f"condition, phantom seed {settings['seed']}, subjects "
             f"{', '.join(summary['subjects'])}; each cell the mean over its subjects "
             "(GM / WM / CSF). Written by `bench/scoreboard.py` from "
             + ", ".join(f"`{f}`" for f in folders) + ".", "",
             "### CoV of volume (x10^3, lower is better)", "", head, rule,
             "| paper's best (Phys-Strat-Aug; GM / WM) | "
             + " | ".join(" / ".join(f"{b:g}" for b in PAPER_BEST[c]) for c in CONDITIONS)
             + " |"]
    lines += [f"| {r} | " + " | ".join(cell(r, c, "cov_x1e3", 2) for c in CONDITIONS) + " |"
              for r in order]
    lines += ["", f"### Dice vs anatomy (goal >= {DICE_GOAL})", "", head, rule]
    lines += [f"| {r} | " + " | ".join(cell(r, c, "dice_anatomy", 3) for c in CONDITIONS)
              + " |" for r in order]
    lines += ["", "### The goals", "",
              f"Each physics row against the paper's best (GM, WM), Dice >= {DICE_GOAL} "
              f"(every tissue), and the CoV of `{baseline}` and `{classical}` (every "
              "tissue; the tissues where it is not below are named; two methods are "
              "compared over the subjects both measured).", "",
              f"| row | condition | CoV below the paper's best | Dice >= {DICE_GOAL} | "
              f"CoV below {baseline} | CoV below {classical} |", "|---|---|---|---|---|---|"]

    def word(g: dict, name: str) -> str:
        v = g[name]
        if v is None:
            return "not measured"
        text = "yes" if v else "no"
        if v is False and g.get(f"{name}_not_below"):
            text += f" ({', '.join(g[name + '_not_below'])})"
        if name in g["partial"]:
            text += (f" (on {', '.join(g[name + '_compared_on'])})"
                     if name + "_compared_on" in g else " (partial)")
        return text

    met = total = 0
    for p, conds in verdict.items():
        for cond, g in conds.items():
            lines.append(f"| {p} | {cond} | " + " | ".join(
                word(g, k) for k in ("paper", "dice", "baseline", "classical")) + " |")
            for k in ("paper", "dice", "baseline", "classical"):
                met += g[k] is True
                total += 1
    missing = [f"{r} {c}" for r in order for c in CONDITIONS if c not in rows.get(r, {})]
    missing += [f"{r} {c} ({', '.join(sorted(set(summary['subjects']) - set(cell['subjects'])))})"
                for r in order for c, cell in rows.get(r, {}).items() if not cell["complete"]]
    lines += ["", f"Goals met: {met} of {total} (a goal with a cell not measured counts as "
              "not met).", "", "Not measured" + (": " + "; ".join(missing) if missing
                                                  else ": nothing."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", action="append", type=Path, required=True,
                    help="a bench_consistency.py --out folder (repeat for each)")
    ap.add_argument("--physics", default="seg-physics",
                    help="comma-separated rows whose goals are checked; each also with "
                         "its ' --harmonise MODE' rows (default: seg-physics)")
    ap.add_argument("--baseline", default="seg-baseline")
    ap.add_argument("--classical", default="atropos")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    cells, settings = gather(args.results)
    summary = summarise(cells)
    named = [p for p in args.physics.split(",") if p]
    physics = [r for r in cells if r in named or r.split(" --harmonise ")[0] in named]
    if not physics:
        raise SystemExit(f"--physics {args.physics}: no folder holds it (rows: "
                         f"{', '.join(sorted(cells))})")
    order = sorted(cells, key=lambda r: (r not in physics, r != args.baseline, r))
    verdict = goals(cells, summary, physics, args.baseline, args.classical)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scoreboard.json").write_text(json.dumps(
        {"settings": settings, "folders": [str(f) for f in args.results],
         "paper_best": PAPER_BEST, "dice_goal": DICE_GOAL, **summary, "goals": verdict},
        indent=1) + "\n")
    text = markdown(summary, verdict, order, settings, args.results, args.baseline,
                    args.classical)
    (args.out / "scoreboard.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
