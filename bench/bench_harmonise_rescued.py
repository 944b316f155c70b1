#!/usr/bin/env python
"""The acquisitions contrast harmonisation re-renders since session 38: worth it?

Session 38 stopped ``phys_bids.harmonise`` refusing two kinds of acquisition: curves
that run back by at most ``FOLD_TOLERANCE`` at a class mean (now flattened) and curves
whose deep GM is within ``MIN_STEP`` of cortical GM (now taken past deep GM).
:func:`refused_before` gives the earlier rule. For the benchmark's 121 acquisitions
per condition (``conditions(121, --seed-conditions)``: SPGR-ID, SPGR-OOD, MPRAGE-OOD)
it lists those the earlier rule refused and the present one re-renders, takes
``--n`` of them evenly, and on each **validation** subject's phantom (noise-free, as
the consistency benchmark's; seeded ``--seed`` + its place in ``--subjects``)
segments each of them with the network twice, as acquired (told its acquisition) and
re-rendered (told the reference), against the same phantom imaged at the reference
protocol. Per image and tissue: the hard volume's deviation from the reference image's,
in %; per subject the mean absolute deviation of both.

    python bench/bench_harmonise_rescued.py --models seg-physics --subjects head_12,head_13 \\
        --n 10 --threads 1 --out docs/results/harmonise-rescued

writes ``harmonise_rescued.json`` and ``.md`` under --out.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.harmonise import (
    CURVE_CLASSES,
    GAIN_CLASSES,
    REFERENCE,
    HarmonisationError,
    Harmoniser,
)
from phys_bids.models.inference import sliding_window_logits
from phys_bids.physics import simulate
from phys_bids.synth import load_head
from phys_bids.synth.evaluation import (
    benchmark_models,
    conditions,
    model_benchmark_parser,
    models_meta,
    phantom,
)

log = logging.getLogger("bench.harmonise_rescued")
TISSUES = ("GM", "WM", "CSF")
CONDITIONS = ("spgr-id", "spgr-ood", "mprage-ood")


def refused_before(sequence: str, params: dict) -> bool:
    """Whether the rule before session 38 refused the acquisition: the curve through deep
    GM was kept if strictly monotone (then its contrast, deep GM included, had to hold),
    else the curve past deep GM if strictly monotone, and its contrast had to hold."""
    try:
        h = Harmoniser(sequence, params)
    except HarmonisationError:
        return True
    r1 = np.array([h.classes[c]["r1"] for c in CURVE_CLASSES])
    for classes in (CURVE_CLASSES, GAIN_CLASSES):
        try:
            h._build(classes, simulate)
        except HarmonisationError:
            continue
        if h.excursion > 0:  # flattened: the earlier rule had no tolerance
            continue
        try:
            h._check_contrast(r1)
            return False
        except HarmonisationError:
            return True  # the earlier rule checked the contrast of the curve it kept
    return True


def rescued(n_conditions: int, seed: int) -> list[tuple[str, int, str, dict]]:
    """``(condition, index, sequence, params)`` of the acquisitions the present rule
    re-renders and the earlier one refused."""
    out = []
    for name, (seq, params) in conditions(n_conditions, seed).items():
        if name not in CONDITIONS:
            continue
        for i in range(n_conditions):
            q = {k: float(v[i]) for k, v in params.items()}
            try:
                Harmoniser(seq, q)
            except HarmonisationError:
                continue
            if refused_before(seq, q):
                out.append((name, i, seq, q))
    return out


def main(argv=None) -> int:
    ap = model_benchmark_parser(__doc__)
    ap.set_defaults(models="seg-physics", subjects="head_12,head_13", seed=100)
    ap.add_argument("--n", type=int, default=10, help="acquisitions measured per subject")
    ap.add_argument("--n-conditions", type=int, default=121,
                    help="acquisitions per condition the rescued ones are taken from")
    ap.add_argument("--seed-conditions", type=int, default=0,
                    help="seed of the SPGR draws (default 0: another draw than the "
                         "consistency benchmark's, whose seed is 2024)")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--harmonise", choices=("curve", "landmarks"), default="curve",
                    help="the re-rendering: the tissue curve alone (what the application "
                         "does and session 38 measured) or with the class peaks then moved "
                         "onto the reference signals (Harmoniser.apply's opt-in step)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models, subjects = benchmark_models(args)
    if len(models) != 1:
        raise SystemExit("--models: one network")
    (name, mod), = models.items()
    picks = rescued(args.n_conditions, args.seed_conditions)
    if not picks:
        raise SystemExit("no acquisition of these conditions is re-rendered now and was "
                         "refused before")
    sel = picks[::max(1, len(picks) // args.n)][: args.n]
    log.info("%d acquisitions re-rendered now and refused before; measuring %d",
             len(picks), len(sel))
    dev = torch.device("cpu")
    rseq, rpar = REFERENCE
    told_ref = {k: torch.tensor([v]) for k, v in rpar.items()}

    def volumes(img, mask, seq, told) -> np.ndarray:
        phys = mod.encoder.encode(seq, told, device=dev) if mod.physics else None
        with torch.no_grad():
            logits = sliding_window_logits(mod.network, img[None, None], phys,
                                           window=args.window, overlap=0.25)
        lab = logits[0].argmax(0) * mask
        return np.array([float((lab == k).sum()) for k in (1, 2, 3)])

    result = {"meta": {"model": models_meta(models), "subjects": subjects, "seed": args.seed,
                       "seed_conditions": args.seed_conditions, "n_rescued": len(picks),
                       "harmonise": args.harmonise,
                       "n_conditions": args.n_conditions, "window": args.window,
                       "rescued_per_condition": {c: sum(p[0] == c for p in picks)
                                                 for c in CONDITIONS}},
              "subjects": {}}
    t0 = time.time()
    for k, subj in enumerate(subjects):
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, _present, mask, _anatomy, _pgs = phantom(head, args.seed + k)
        ref = gen.simulate_patch(rseq, told_ref, cmaps, frac)[0].abs() * mask
        v_ref = volumes(ref / ref[mask].mean(), mask, rseq, told_ref)
        rows = []
        for cname, i, seq, q in sel:
            p = {key: torch.tensor([v]) for key, v in q.items()}
            img = gen.simulate_patch(seq, p, cmaps, frac)[0].abs() * mask
            img = img / img[mask].mean()
            h = Harmoniser(seq, q)
            harm, _ = h.apply(img, mask, landmarks=args.harmonise == "landmarks")
            dev_acq = 100 * (volumes(img, mask, seq, p) / v_ref - 1)
            dev_harm = 100 * (volumes(harm / harm[mask].mean(), mask, rseq, told_ref) / v_ref
                              - 1)
            rows.append({"condition": cname, "index": i, "params": q,
                         "excursion": round(h.excursion, 6),
                         "curve": "past deep GM" if h.curve_classes == GAIN_CLASSES
                         else "through deep GM",
                         "acquired_pct": dev_acq.round(2).tolist(),
                         "harmonised_pct": dev_harm.round(2).tolist()})
            log.info("%s %s %d: acquired %s, re-rendered %s (%.0f s)", subj, cname, i,
                     dev_acq.round(2), dev_harm.round(2), time.time() - t0)
        a = np.abs([r["acquired_pct"] for r in rows]).mean(0)
        b = np.abs([r["harmonised_pct"] for r in rows]).mean(0)
        result["subjects"][subj] = {
            "reference_volumes": v_ref.tolist(), "rows": rows,
            "mean_abs_pct": {"acquired": dict(zip(TISSUES, a.round(2).tolist(), strict=True)),
                             "harmonised": dict(zip(TISSUES, b.round(2).tolist(),
                                                    strict=True))}}
    result["meta"]["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "harmonise_rescued.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out / "harmonise_rescued.md").write_text(md)
    print(md)
    return 0


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"{meta['n_rescued']} of the {meta['n_conditions']} acquisitions per condition "
             "(" + ", ".join(f"{c} {n}" for c, n in meta["rescued_per_condition"].items())
             + ") are re-rendered now and were refused before session 38. Volume deviation "
             "from the same phantom imaged at the reference protocol, %, GM / WM / CSF "
             f"(model {', '.join(meta['model'])}, phantom seed {meta['seed']} + subject "
             "index; re-rendered along the tissue curve"
             + (", class peaks then moved onto the reference signals"
                if meta.get("harmonise", "curve") == "landmarks" else " alone") + "):", "",
             "| subject | condition | draw | parameters | run-back | curve | as acquired | "
             "re-rendered |", "| --- " * 8 + "|"]
    fmt = " / ".join(["{:+.1f}"] * 3)
    for subj, s in result["subjects"].items():
        for r in s["rows"]:
            par = ", ".join(f"{k} {v:.3g}" for k, v in r["params"].items())
            lines.append(f"| {subj} | {r['condition']} | {r['index']} | {par} | "
                         f"{100 * r['excursion']:.2f} % | {r['curve']} | "
                         f"{fmt.format(*r['acquired_pct'])} | "
                         f"**{fmt.format(*r['harmonised_pct'])}** |")
    lines += ["", "| subject | mean absolute deviation %, as acquired | re-rendered |",
              "| --- | --- | --- |"]
    for subj, s in result["subjects"].items():
        m = s["mean_abs_pct"]
        lines.append(f"| {subj} | " + " / ".join(f"{m['acquired'][t]:.2f}" for t in TISSUES)
                     + " | **" + " / ".join(f"{m['harmonised'][t]:.2f}" for t in TISSUES)
                     + "** |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
