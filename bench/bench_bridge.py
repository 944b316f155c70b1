#!/usr/bin/env python
"""Site effects and protocol bridging on a synthetic travelling-subject study.

Writes a demo dataset of ``--subjects`` heads, each scanned at the three demo sites
(A: MPRAGE TI 0.9 s, B: MPRAGE TI 1.1 s, C: SPGR 20 ms / 25 deg), runs the
participant level (physics model, one deterministic pass: ``--mc-samples 0``, no
qMRI) and the group level with ``--bridge siteA siteB``, and reports, against the
known truth (the same anatomy at every site, the simulated parameters):

* site effects of the physics model vs the classical segmentation (Atropos) of the
  same images: partial eta squared of site after subject and the within-subject CoV;
* accuracy: per site, the mean signed % error of the model's and Atropos's volumes
  against the true volumes of the demo's anatomy (:func:`phys_bids.demo.demo_truth`),
  so that a model consistent because it is wrong shows it;
* bridging: the searched (TI_A, TI_B) vs the simulated (0.9, 1.1) s, and the test
  pairs' mean |% volume difference| uncorrected / linear / bridged.

    python bench/bench_bridge.py --subjects 6 --omp-nthreads 2 --out docs/results/bridge

``--model`` measures another shipped segmentation model (e.g. seg-physics-film) through
the same participant and group levels (default: seg-physics, the application's
default).

``--report-only`` writes the report again from an earlier run's outputs in ``--work``
(the run times come from the ``bridge_bench.json`` it wrote to ``--out``).

writes ``bridge_bench.json`` and ``bridge_bench.md`` (and copies the contour plot).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from common import (  # the same runner of the phys-bids command, the same errors
    TISSUES,
    clear,
    error_vs_truth,
    run,
)

from phys_bids.demo import SITES, demo_truth, write_demo_dataset


def commands(args, bids: Path, out: Path, work: Path) -> tuple[list[str], list[str]]:
    """The participant and group ``phys-bids`` command lines of the benchmark: both
    levels with ``--model`` (the group level's bridging search runs the model too)."""
    common = ["-w", str(work / "work"), "--omp-nthreads", str(args.omp_nthreads),
              "--nprocs", str(args.omp_nthreads), "--model", args.model]
    participant = [str(bids), str(out), "participant", "--mc-samples", "0",
                   "--qmri-model", "none", *common]
    group = [str(bids), str(out), "group", "--bridge", "siteA", "siteB",
             "--bridge-steps", str(args.steps), *common]
    return participant, group


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/phys-bids-bench-bridge", help="scratch folder")
    ap.add_argument("--out", default="docs/results/bridge")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--voxel", type=float, default=1.5)
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--omp-nthreads", type=int, default=2)
    ap.add_argument("--model", default="seg-physics",
                    help="the segmentation model (phys-bids --model; default: seg-physics)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the report again from the phys-bids outputs "
                         "an earlier run left in --work, with the run times of the "
                         "bridge_bench.json it wrote to --out")
    return ap


def markdown(result: dict) -> str:
    """The benchmark's markdown report of ``result`` (as in ``bridge_bench.json``); the
    model's column is headed with the model measured."""
    b = result["bridge"]
    lines = [f"{result['subjects']} travelling subjects x 3 sites, {result['voxel_mm']} mm, "
             f"{result['model']}; participant {result['participant_seconds']:.0f} s, "
             f"group with bridging {result['group_seconds']:.0f} s.", "",
             f"| tissue | {result['model']}: site share after subject | "
             "within-subject CoV x10^3 | classical (Atropos): site share after subject | "
             "within-subject CoV x10^3 |",
             "| --- | --- | --- | --- | --- |"]
    for t, s in result["site_effects"].items():
        lines.append(f"| {t} | {s['physics']['partial_eta2_site']:.3f} | "
                     f"{s['physics']['within_subject_cov_x1e3']:.1f} | "
                     f"{s['classical']['partial_eta2_site']:.3f} | "
                     f"{s['classical']['within_subject_cov_x1e3']:.1f} |")
    if "error_vs_truth" in result:
        lines += ["", f"Mean signed % error against the true volumes, per site "
                  f"({result['model']} / Atropos):", "",
                  "| site | GM | WM | CSF |", "| --- | --- | --- | --- |"]
        for site, e in result["error_vs_truth"].items():
            lines.append(f"| {site} | " + " | ".join(
                " / ".join("n/a" if e[m][t]["mean_signed_pct"] is None
                           else f"{e[m][t]['mean_signed_pct']:+.1f}"
                           for m in ("model", "classical")) for t in TISSUES) + " |")
    (a, b_ti), truth = b["chosen"], b["truth"]
    lines += ["", f"Bridging siteA -> siteB: searched TI ({a:.3f}, {b_ti:.3f}) s, "
              f"simulated ({truth[0]}, {truth[1]}) s, grid step {b['grid_step']:.3f} s.", "",
              "| test pairs | mean abs % difference GM+WM | GM | WM |", "| --- | --- | --- | --- |"]
    for k, v in b["test_mean_abs_pct_difference"].items():
        lines.append(f"| {k} | {v['mean_pct']:.2f} | {v['GM_pct']:.2f} | {v['WM_pct']:.2f} |")
    return "\n".join(lines) + "\n"


def accuracy(rows: list[dict], truth: dict) -> dict:
    """Per site (the ``session_id``), the mean signed and absolute % error against the
    true volumes of the model's (``model``) and Atropos's (``classical``) volumes."""
    by_site: dict[str, list[dict]] = {}
    for r in rows:
        by_site.setdefault(r["session_id"].removeprefix("ses-"), []).append(r)
    return {site: {"model": error_vs_truth(site_rows, truth),
                   "classical": error_vs_truth(site_rows, truth, "{t}_atropos_ml")}
            for site, site_rows in sorted(by_site.items())}


def collect(args, out: Path, t_part: float, t_group: float) -> dict:
    """The benchmark's result from the participant and group outputs in ``out``."""
    effects = json.loads((out / "group" / "site_effects.json").read_text())
    bridge = json.loads((out / "group" / "bridge.json").read_text())
    if bridge.get("model") != args.model:
        raise SystemExit(f"{out}/group/bridge.json was made with {bridge.get('model')!r}, "
                         f"not --model {args.model}")
    with open(out / "group" / "volumes.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    truth = (SITES["siteA"]["params"]["ti"], SITES["siteB"]["params"]["ti"])
    chosen = (bridge["chosen"]["A"], bridge["chosen"]["B"])
    step = bridge["grid"]["A"][1] - bridge["grid"]["A"][0]
    site = {}
    for t in TISSUES:
        e = effects["tissues"][t]
        site[t] = {
            "physics": {"partial_eta2_site": e["partial_eta2_site_given_subject"],
                        "within_subject_cov_x1e3": e["within_subject"]["mean_cov_x1e3"]},
            "classical": {"partial_eta2_site": e["classical"]["partial_eta2_site_given_subject"],
                          "within_subject_cov_x1e3":
                              e["classical"]["within_subject"]["mean_cov_x1e3"]},
        }
    return {"model": args.model,
            "subjects": args.subjects, "voxel_mm": args.voxel, "steps": args.steps,
            "participant_seconds": round(t_part, 1), "group_seconds": round(t_group, 1),
            "site_effects": site,
            "error_vs_truth": accuracy(rows, demo_truth(subjects=args.subjects,
                                                        voxel=args.voxel)),
            "bridge": {"truth": truth, "chosen": chosen, "grid_step": step,
                       "error": [abs(c - t) for c, t in zip(chosen, truth, strict=True)],
                       "per_test_subject": bridge["per_test_subject"],
                       "pairs": bridge["pairs"],
                       "test_mean_abs_pct_difference":
                           bridge["test_mean_abs_pct_difference"]}}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    work = Path(args.work)
    bids, out = work / "bids", work / "out"
    dest = Path(args.out)
    if args.report_only:
        earlier = dest / "bridge_bench.json"
        if not earlier.is_file() or not (out / "group" / "bridge.json").is_file():
            raise SystemExit(f"--report-only needs {earlier} and {out}/group/bridge.json "
                             "from an earlier run with the same --work and --out")
        before = json.loads(earlier.read_text())
        for key, arg in (("model", "model"), ("subjects", "subjects"), ("voxel_mm", "voxel"),
                         ("steps", "steps")):
            if key in before and before[key] != getattr(args, arg):
                raise SystemExit(f"--report-only: {earlier} was measured with {key} "
                                 f"{before[key]!r}; pass the same")
        t_part, t_group = before["participant_seconds"], before["group_seconds"]
    else:
        if not bids.exists():
            write_demo_dataset(bids, subjects=args.subjects, voxel=args.voxel)
        clear(out, work / "work")
        participant, group = commands(args, bids, out, work)
        t_part = run(participant)
        t_group = run(group)
    result = collect(args, out, t_part, t_group)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bridge_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.copy(out / "group" / "bridge_contour.png", dest / "bridge_contour.png")
    md = markdown(result)
    (dest / "bridge_bench.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
