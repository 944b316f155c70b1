#!/usr/bin/env python
"""The consistency benchmark with and without contrast harmonisation, side by side.

Reads ``consistency.json`` files of ``bench/bench_consistency.py`` measured on the
same images (image count, seed, window, weights, and the same phantom seed for every
subject two files share, in whatever order they list them; else it refuses):
``--control`` without ``--harmonise`` (repeatable: each subject's per-image volumes are
taken from the first control folder that holds them) and ``--harmonised`` with it
(repeatable: runs of other conditions).
For every network and condition it gives the CoV of the volumes (x10^3, mean +- SD over
subjects) of both runs, over every image and over the images the harmonised run
re-rendered (``harmonised`` in its curves; the others it segmented as acquired, so both
runs hold the same volumes there) and over those it refused, Dice vs anatomy and the
hard volume error. Each ``--band PARAM:LO:HI`` (repeatable, e.g. ``ti:0.6:1.2``, in the
units of the curves: s, degrees) adds the CoV over the images whose parameter lies in
[LO, HI].

    python bench/compare_harmonise.py --control docs/results/consistency \\
        --control docs/results/consistency-harmonise/control-spgr \\
        --harmonised docs/results/consistency-harmonise/mprage \\
        --harmonised docs/results/consistency-harmonise/spgr \\
        --out docs/results/consistency-harmonise
    python bench/compare_harmonise.py --control docs/results/consistency-121-mprage-ood \\
        --harmonised docs/results/consistency-121-mprage-ood-harmonise \\
        --band ti:0.6:1.2 --band ti:1.2:2.0 --out docs/results/consistency-121-mprage-ood-harmonise

writes ``harmonise_vs_control.md`` and ``.json`` under --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from common import SAME  # bench/, beside this script: the settings both runs must share

TISSUES = ("GM", "WM", "CSF")


def phantom_seeds(doc: dict) -> dict[str, int]:
    """``{subject: phantom seed}`` of a benchmark file: as recorded per subject, or, in a
    file from before the seed was recorded, by the benchmark's rule
    (:func:`~phys_bids.models.evaluation.phantom_seed`), so that runs of the same phantoms
    listed in another order (one subject per process, then merged) compare."""
    from phys_bids.models.evaluation import benchmark_split, phantom_seed

    seeds = {r["subject"]: r["phantom_seed"]
             for conds in doc["per_subject"].values() for rows in conds.values()
             for r in rows if "phantom_seed" in r}
    listed, test = doc["meta"]["subjects"], benchmark_split({}).get("test", [])
    return {s: seeds.get(s, phantom_seed(s, doc["meta"]["seed"], test, listed))
            for s in listed}


def cov(v: np.ndarray) -> np.ndarray:
    """10^3 SD / mean per tissue of an (images, 3) volume array (population SD, as the
    benchmark's ``cov_x1e3``)."""
    return 1e3 * v.std(0) / v.mean(0)


def _row(docs: list[dict], part: str, m: str, c: str, subject: str) -> dict:
    """``subject``'s row of ``doc[part][m][c]`` in the first of ``docs`` that holds it
    (``curves``: per-image volumes; ``per_subject``: Dice and volume errors)."""
    for d in docs:
        for r in d.get(part, {}).get(m, {}).get(c, []):
            if r["subject"] == subject:
                return r
    raise SystemExit(f"no --control holds the {part.replace('_', ' ')} of {m} {c} {subject}")


#: relative slack of a band's ends (the curves store float32 parameters)
BAND_TOL = 1e-6


def parse_band(text: str) -> tuple[str, float, float]:
    """``"ti:0.6:1.2"`` -> ``("ti", 0.6, 1.2)``; one actionable line when malformed."""
    parts = text.split(":")
    try:
        name, lo, hi = parts[0], float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise SystemExit(f"--band {text!r}: expected PARAM:LO:HI, e.g. ti:0.6:1.2") from None
    if len(parts) != 3 or not name or not lo < hi:
        raise SystemExit(f"--band {text!r}: expected PARAM:LO:HI with LO < HI, e.g. ti:0.6:1.2")
    return name, lo, hi


def band_key(band: tuple[str, float, float]) -> str:
    name, lo, hi = band
    return f"{name} {lo:g}-{hi:g}"


def compare(controls: list[dict], harmonised_runs: list[dict],
            bands: tuple[tuple[str, float, float], ...] = ()) -> dict:
    """Per network and condition: the CoV over every image, over the re-rendered ones,
    over the refused ones and over each band's (mean and SD over subjects, both runs;
    a subset of fewer than two images gives no CoV), Dice and hard volume error (both runs, mean
    over the harmonised run's subjects). Each subject's control is the first
    ``--control`` that holds its per-image volumes (a merged file may lack a subject's
    curve that an earlier single-subject run kept)."""
    out: dict = {}
    for harmonised, m, per in ((h, m, per) for h in harmonised_runs
                               for m, per in h["curves"].items()):
        for c, rows in per.items():
            subsets = ("all", "rendered", "refused", *map(band_key, bands))
            cells: dict = {k: {"control": [], "harmonised": []} for k in subsets}
            counts: dict = {k: [] for k in subsets}
            scores: dict = {k: {"control": [], "harmonised": []}
                            for k in ("dice_anatomy", "volume_error_pct")}
            share = []
            for r in rows:
                flags = np.array(r["harmonised"], dtype=bool)
                share.append(flags.mean())
                pick = {"all": np.ones_like(flags), "rendered": flags, "refused": ~flags}
                for band in bands:
                    name, lo, hi = band
                    if name not in r:
                        held = sorted(set(r) - {"volumes", "subject", "harmonised"})
                        raise SystemExit(f"--band {name}: the {m} {c} curves hold no "
                                         f"{name!r} (they hold {held})")
                    x = np.asarray(r[name], dtype=np.float64)
                    pick[band_key(band)] = ((x >= lo * (1 - BAND_TOL))
                                            & (x <= hi * (1 + BAND_TOL)))
                for k, sel in pick.items():
                    counts[k].append(int(sel.sum()))
                ctrl_curve = _row(controls, "curves", m, c, r["subject"])
                for run, vols in (("control", ctrl_curve["volumes"]),
                                  ("harmonised", r["volumes"])):
                    v = np.asarray(vols, dtype=np.float64)
                    for k, sel in pick.items():
                        if sel.sum() >= 2:
                            cells[k][run].append(cov(v[sel]))
                for run, docs in (("control", controls), ("harmonised", [harmonised])):
                    row = _row(docs, "per_subject", m, c, r["subject"])
                    for k, x in scores.items():
                        x[run].append([row[k][t] for t in TISSUES])
            # the subjects each subset's CoV list holds: those with two images or more there
            who = {k: [r["subject"] for r, n in zip(rows, counts[k], strict=True) if n >= 2]
                   for k in subsets}
            summary = {k: {run: None if not x else {
                "mean": dict(zip(TISSUES, np.mean(x, 0).round(2).tolist(), strict=True)),
                "sd": dict(zip(TISSUES, np.std(x, 0).round(2).tolist(), strict=True)),
                "subjects": {subj: dict(zip(TISSUES, np.round(one, 2).tolist(), strict=True))
                             for subj, one in zip(who[k], x, strict=True)}}
                for run, x in d.items()} for k, d in cells.items()}
            for k, digits in (("dice_anatomy", 3), ("volume_error_pct", 1)):
                summary[k] = {run: dict(zip(TISSUES, np.mean(x, 0).round(digits).tolist(),
                                            strict=True))
                              for run, x in scores[k].items()}
            summary["rendered_share"] = round(float(np.mean(share)), 3)
            summary["images"] = counts
            out.setdefault(m, {})[c] = summary
    return out


def markdown(result: dict) -> str:
    def trio(d):
        return " / ".join(f"{d['mean'][t]:.1f}" for t in TISSUES) if d else "n/a"
    lines = ["| model | condition | share re-rendered | CoV x10^3 GM / WM / CSF, control | "
             "harmonised | over the re-rendered images: control | harmonised | Dice "
             "control | Dice harmonised | volume error % control | harmonised |",
             "| --- " * 11 + "|"]
    for m, per in result.items():
        for c, s in per.items():
            lines.append(
                f"| {m} | {c} | {100 * s['rendered_share']:.0f} % | "
                f"{trio(s['all']['control'])} | **{trio(s['all']['harmonised'])}** | "
                f"{trio(s['rendered']['control'])} | **{trio(s['rendered']['harmonised'])}** | "
                + " | ".join(" / ".join(f"{s[k][run][t]:{f}}" for t in TISSUES)
                             for k, f in (("dice_anatomy", ".3f"), ("volume_error_pct", "+.1f"))
                             for run in ("control", "harmonised")) + " |")
    lines += ["", "CoV x10^3 GM / WM / CSF, mean +- SD over subjects, over a subset of the "
              "images (their count per subject in parentheses; refused: segmented as acquired "
              "in both runs):", "",
              "| model | condition | images | control | harmonised |", "| --- " * 5 + "|"]
    for m, per in result.items():
        for c, s in per.items():
            for k, n in s["images"].items():
                if k == "all":
                    continue
                lines.append(f"| {m} | {c} | {k} ({'/'.join(map(str, n))}) | "
                             f"{spread(s[k]['control'])} | {spread(s[k]['harmonised'])} |")
    return "\n".join(lines) + "\n"


def spread(d: dict | None) -> str:
    return " / ".join(f"{d['mean'][t]:.1f} +- {d['sd'][t]:.1f}" for t in TISSUES) if d else "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--control", required=True, action="append",
                    help="folder of a run without --harmonise (repeatable)")
    ap.add_argument("--harmonised", required=True, action="append",
                    help="folder of a run with --harmonise (repeatable)")
    ap.add_argument("--band", action="append", default=[], metavar="PARAM:LO:HI",
                    help="also the CoV over the images whose PARAM (a key of the curves: "
                         "ti, tr, te, fa; s and degrees) lies in [LO, HI] (repeatable)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    bands = tuple(map(parse_band, args.band))
    ctrls = [json.loads((Path(d) / "consistency.json").read_text()) for d in args.control]
    harms = [json.loads((Path(d) / "consistency.json").read_text()) for d in args.harmonised]
    if (any(c["meta"].get("harmonise") for c in ctrls)
            or not all(h["meta"].get("harmonise") for h in harms)):
        raise SystemExit("--control must be a run without --harmonise, --harmonised one with it")
    for (folder, ctrl), (hfolder, harm) in itertools.product(
            zip(args.control, ctrls, strict=True), zip(args.harmonised, harms, strict=True)):
        differs = [k for k, missing in SAME.items()
                   if ctrl["meta"].get(k, missing) != harm["meta"].get(k, missing)]
        cs, hs = phantom_seeds(ctrl), phantom_seeds(harm)
        if any(cs[s] != hs[s] for s in set(cs) & set(hs)):
            differs.append("phantom seeds")
        for m in harm["curves"]:
            a = ctrl["meta"]["models"].get(m, {}).get("weights_sha256")
            if a != harm["meta"]["models"][m]["weights_sha256"]:
                differs.append(f"{m} weights")
        if differs:
            raise SystemExit(f"{folder} and {hfolder} differ in " + ", ".join(differs)
                             + ": not the same images and networks")
    result = compare(ctrls, harms, bands)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "harmonise_vs_control.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out / "harmonise_vs_control.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
