#!/usr/bin/env python
"""Does a model's output depend on the inference window? (docs/segmentation.md)

A fully convolutional network with fixed statistics is the same function whatever
window it is given; instance norm is not, and it cancels a tiled physics vector away
from the window's zero-padded borders. For each held-out subject of the models'
split: a noise-free 1 mm phantom of its labels (the consistency benchmark's), MPRAGE
at TI 0.9 s, segmented with sliding windows of each ``--windows`` edge. Per model and
window:

* volume error vs the anatomy, % per tissue (hard labels) and Dice vs the anatomy;
* physics sensitivity: mean |change of the tissue probabilities| over the brain
  when the network is told TI 0.6 s instead of 1.2 s for the *same* image (0 for
  the baseline, which is not told; it should not shrink as the window grows).

    python bench/bench_window.py --models seg-physics,seg-physics-film \
        --out docs/results/window

writes ``window.json`` and ``window.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.models.inference import sliding_window_logits
from phys_bids.synth import load_head
from phys_bids.synth.evaluation import (
    benchmark_models,
    dice,
    model_benchmark_parser,
    models_meta,
    phantom,
)

log = logging.getLogger("bench.window")
TISSUES = ("GM", "WM", "CSF")


def probabilities(model, img, mask, ti: float, window: int) -> torch.Tensor:
    phys = model.encoder.encode("MPRAGE", {"ti": [ti]}) if model.physics else None
    logits = sliding_window_logits(model.network, img[None, None], phys, window=window,
                                   overlap=0.25)
    return torch.softmax(logits[0], 0) * mask


def main(argv=None):
    ap = model_benchmark_parser(__doc__)
    ap.add_argument("--windows", default="48,96,160")
    ap.add_argument("--out", default="docs/results/window")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models, subjects = benchmark_models(args)
    windows = [int(w) for w in args.windows.split(",")]
    rows = []
    t0 = time.time()
    for si, subj in enumerate(subjects):
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, _, mask, anatomy, _ = phantom(head, args.seed + si)
        sig = gen.simulate_patch("MPRAGE", {"ti": torch.tensor([0.9])}, cmaps, frac)[0].abs()
        img = sig * mask
        img = img / img[mask].mean()
        truth = [float((anatomy == k).sum()) for k in (1, 2, 3)]
        for name, model in models.items():
            for w in windows:
                with torch.no_grad():
                    p = probabilities(model, img, mask, 0.9, w)
                    lab = p.argmax(0) * mask
                    sens = 0.0
                    if model.physics:
                        d = (probabilities(model, img, mask, 0.6, w)
                             - probabilities(model, img, mask, 1.2, w))
                        sens = float(d[1:].abs().sum(0)[mask].mean())
                vols = [int((lab == k).sum()) for k in (1, 2, 3)]
                rows.append({"model": name, "subject": subj, "window": w,
                             "volume_error_pct": dict(zip(TISSUES, (
                                 100 * (v - t) / t for v, t in zip(vols, truth, strict=True)),
                                 strict=True)),
                             "dice_anatomy": dict(zip(TISSUES, (dice(lab, anatomy, k)
                                                                for k in (1, 2, 3)),
                                                     strict=True)),
                             "physics_sensitivity": sens})
                log.info("%s %s window %d: errors %s, sensitivity %.4f (%.0f s)", name, subj,
                         w, " ".join(f"{e:+.1f}" for e in
                                     rows[-1]["volume_error_pct"].values()), sens,
                         time.time() - t0)
    summary = {}
    for name in models:
        for w in windows:
            sel = [r for r in rows if r["model"] == name and r["window"] == w]
            summary.setdefault(name, {})[str(w)] = {
                "volume_error_pct": {t: float(np.mean([r["volume_error_pct"][t] for r in sel]))
                                     for t in TISSUES},
                "dice_anatomy": float(np.mean([np.mean(list(r["dice_anatomy"].values()))
                                               for r in sel])),
                "physics_sensitivity": float(np.mean([r["physics_sensitivity"] for r in sel])),
            }
    meta = {"subjects": subjects, "windows": windows, "seed": args.seed,
            "image": "MPRAGE TI 0.9 s, noise-free, skull-stripped, divided by the brain mean",
            "models": models_meta(models), "wall_s": time.time() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "window.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                 "per_subject": rows}, indent=1))
    lines = [f"Inference-window dependence ({', '.join(subjects)}; {meta['image']}; "
             f"`bench/bench_window.py`). Volume error vs anatomy (%, mean over subjects), "
             "mean Dice, physics sensitivity (mean |p(TI 0.6 s) - p(TI 1.2 s)| over the "
             "brain, summed over tissues).", "",
             "| model | window | GM err % | WM err % | CSF err % | Dice | physics sensitivity |",
             "|---|---|---|---|---|---|---|"]
    for name, per in summary.items():
        for w, s in per.items():
            e = s["volume_error_pct"]
            lines.append(f"| {name} | {w} | {e['GM']:+.1f} | {e['WM']:+.1f} | {e['CSF']:+.1f}"
                         f" | {s['dice_anatomy']:.3f} | {s['physics_sensitivity']:.4f} |")
    md = "\n".join(lines) + "\n"
    (out / "window.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
