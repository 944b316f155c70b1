#!/usr/bin/env python
"""Two consistency runs over the images they share: the CoV of each, side by side.

Reads the ``consistency.json`` of two ``bench/bench_consistency.py`` runs (``--a`` and
``--b``, with a label each) and, for every network, condition and subject both hold,
matches their images by acquisition parameters (TI; TR, TE and flip angle) and gives
the CoV of the hard volumes (x10^3, population SD as the benchmark's ``cov_x1e3``) of
each run over the shared images, per subject and as mean +- SD over subjects. A 31-TI
run shares every fourth image of a 121-TI run of the same seed, so a cheaper run of a
new setting is compared with a stored 121-image one on exactly the same images:

    python bench/compare_runs.py \\
        --a docs/results/consistency-121-mprage-id-harmonise --a-label curve \\
        --b docs/results/consistency-31-mprage-id-landmarks --b-label landmarks \\
        --out docs/results/consistency-31-mprage-id-landmarks

writes ``compare_runs.md`` and ``.json`` under --out. Runs of different phantom seeds
are refused (their images are of other phantoms); a subject whose runs share fewer
than 3 images is left out and named. Where both runs harmonised (``--harmonise``) and
flag the same shared images as re-rendered, the CoV over those images is given too
(``rendered``: the others were segmented as acquired in both). ``--conditions`` keeps
some of the conditions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from compare_harmonise import cov  # bench/, beside this script: the same CoV

PARAMS = ("ti", "tr", "te", "fa")


def _keys(row: dict) -> list[tuple]:
    """Each image's acquisition, rounded so that runs drawing it alike match."""
    n = len(row["volumes"])
    return [tuple(round(float(row[p][i]), 6) for p in PARAMS if p in row) for i in range(n)]


def compare(a: dict, b: dict, conditions: list[str] | None = None) -> dict:
    """``{network: {condition: {"subjects": {subj: {"n", "a", "b"[, "rendered"]}},
    "a": mean/sd, "b": mean/sd, "left_out": [...]}}}``; a subject's ``rendered`` holds
    the count and both CoVs over the images both runs re-rendered."""
    if a["meta"].get("seed") != b["meta"].get("seed"):
        raise SystemExit(f"the runs' seeds differ ({a['meta'].get('seed')} and "
                         f"{b['meta'].get('seed')}): their phantoms are not the same")
    out: dict = {}
    for m in (m for m in a["curves"] if m in b["curves"]):
        for c in (c for c in a["curves"][m] if c in b["curves"][m]
                  and (conditions is None or c in conditions)):
            ra = {r["subject"]: r for r in a["curves"][m][c]}
            cell: dict = {"subjects": {}, "left_out": []}
            for rb in b["curves"][m][c]:
                s = rb["subject"]
                if s not in ra:
                    continue
                at_a = {k: i for i, k in enumerate(_keys(ra[s]))}
                # (index in a, index in b) of each image both hold, in b's order
                pairs = [(at_a[k], i) for i, k in enumerate(_keys(rb)) if k in at_a]
                if len(pairs) < 3:
                    cell["left_out"].append(s)
                    continue
                ia, ib = [i for i, _ in pairs], [j for _, j in pairs]
                va = np.array(ra[s]["volumes"], dtype=np.float64)[ia]
                vb = np.array(rb["volumes"], dtype=np.float64)[ib]
                cell["subjects"][s] = {"n": len(pairs), "a": cov(va).round(3).tolist(),
                                       "b": cov(vb).round(3).tolist()}
                fa, fb = ra[s].get("harmonised"), rb.get("harmonised")
                if fa and fb:
                    fa = [fa[i] for i in ia]
                    fb = [fb[i] for i in ib]
                    both = np.array(fa) & np.array(fb)
                    if fa == fb and 3 <= both.sum() < len(pairs):
                        cell["subjects"][s]["rendered"] = {
                            "n": int(both.sum()), "a": cov(va[both]).round(3).tolist(),
                            "b": cov(vb[both]).round(3).tolist()}
            if not cell["subjects"]:
                continue
            for run in ("a", "b"):
                x = np.array([v[run] for v in cell["subjects"].values()])
                cell[run] = {"mean": x.mean(0).round(3).tolist(), "sd": x.std(0).round(3).tolist()}
            out.setdefault(m, {})[c] = cell
    return out


def markdown(res: dict, labels: tuple[str, str]) -> str:
    la, lb = labels
    lines = [f"CoV of the hard volumes (x10^3, GM / WM / CSF) of two runs over the images "
             f"both hold: **{la}** and **{lb}**.", ""]
    fmt = " / ".join(["{:.2f}"] * 3)
    for m, per in res.items():
        for c, cell in per.items():
            lines += [f"### {m}, {c}", "", f"| subject | images | {la} | {lb} |",
                      "| --- | --- | --- | --- |"]
            for s, v in cell["subjects"].items():
                lines.append(f"| {s} | {v['n']} | {fmt.format(*v['a'])} | {fmt.format(*v['b'])} |")
                if "rendered" in v:
                    r = v["rendered"]
                    lines.append(f"| {s}, the {r['n']} re-rendered by both | {r['n']} | "
                                 f"{fmt.format(*r['a'])} | {fmt.format(*r['b'])} |")
            pm = " / ".join(["{:.2f} +- {:.2f}"] * 3)

            def both(run, cell=cell, pm=pm):
                return pm.format(*[x for t in zip(cell[run]["mean"], cell[run]["sd"],
                                                   strict=True) for x in t])
            lines.append(f"| mean +- SD | | {both('a')} | {both('b')} |")
            if cell["left_out"]:
                lines.append(f"\nLeft out (fewer than 3 shared images): "
                             f"{', '.join(cell['left_out'])}")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="folder of the first run's consistency.json")
    ap.add_argument("--b", required=True, help="folder of the second run's consistency.json")
    ap.add_argument("--a-label", default="a")
    ap.add_argument("--b-label", default="b")
    ap.add_argument("--conditions", default=None,
                    help="comma-separated conditions to compare (default: all both hold)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs = [json.loads((Path(d) / "consistency.json").read_text()) for d in (args.a, args.b)]
    res = compare(*runs, args.conditions.split(",") if args.conditions else None)
    if not res:
        raise SystemExit("the runs share no network, condition and subject")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = (args.a_label, args.b_label)
    doc = {"a": {"label": labels[0], "path": args.a}, "b": {"label": labels[1], "path": args.b},
           "cov_x1e3": res}
    (out / "compare_runs.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(res, labels)
    (out / "compare_runs.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
