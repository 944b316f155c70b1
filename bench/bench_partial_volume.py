#!/usr/bin/env python
"""How do the models' volumes hold up as partial volume grows? (docs/segmentation.md)

The consistency benchmark's phantoms have none (one class per voxel) and the training
phantoms have it only where a label border crosses a voxel; the demo heads, made from
the ICBM152 population-average tissue maps, hold 65 % of the brain volume in voxels
whose largest tissue fraction is below 0.9. This probe isolates that one difference.
For each held-out subject of the models' split: the consistency benchmark's 1 mm
phantom, its class fractions smoothed with a Gaussian of each ``--sigmas`` (mm; the
fractions still sum to 1), the signal the fraction-weighted sum of the class signals
(as in training and in the demo), MPRAGE at TI 0.9 s, noise-free, skull-stripped at
brain fraction 0.5 and divided by its brain mean, segmented with 96^3 windows (the
application's). Per model and sigma:

* the share of the brain volume in voxels whose largest tissue fraction is < 0.9;
* the signed volume error vs the true (soft) tissue volumes inside the mask, % per
  tissue, of the hard labels (what the application reports) and of the summed
  probabilities;
* where the soft WM error lies: the sum of (WM probability - true WM fraction) over the
  voxels that are nearly pure GM (GM fraction > 0.9), nearly pure WM (WM > 0.9) and the
  rest (mixed, CSF), each as % of the true WM volume (the three add up to the soft WM
  error);
* where the hard labels are wrong inside each tissue: the share of its voxels (of the
  argmax of the true fractions) labelled otherwise at depth 1, 2, 3 and >= 4 voxels
  from the tissue's border (``error_by_depth``), pooled over the subjects. Thin cortex
  lies at depths 1-2; depths >= 3 are the interiors of WM, deep GM and ventricles.

    python bench/bench_partial_volume.py --models seg-physics,seg-physics-logc \
        --out docs/results/partial-volume

writes ``partial_volume.json`` and ``partial_volume.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from phys_bids.models.inference import FLIP_TTA, sliding_window_logits
from phys_bids.synth import load_head
from phys_bids.synth.evaluation import (
    benchmark_models,
    error_by_depth,
    mixed_share,
    model_benchmark_parser,
    models_meta,
    phantom,
)
from phys_bids.synth.tissues import TARGET_OF_CLASS

log = logging.getLogger("bench.partial_volume")
TISSUES = ("GM", "WM", "CSF")
DEPTHS = (1, 2, 3, 4)  # voxels from the tissue's border; 4: that deep or deeper


REGIONS = {"gm_pure": "GM > 0.9 voxels", "wm_pure": "WM > 0.9 voxels",
           "other": "other voxels (mixed, CSF)"}


def wm_error_by_region(p_wm: np.ndarray, tissue: np.ndarray, mask: np.ndarray) -> dict:
    """The soft WM volume error split by where it lies: {region: % of the true WM volume}
    for nearly pure GM, nearly pure WM and the other voxels of the mask."""
    gm, wm = tissue[0], tissue[1]
    excess = p_wm - wm  # summed over subsets of the mask only
    true_wm = float(wm[mask].sum())
    gm_pure, wm_pure = mask & (gm > 0.9), mask & (wm > 0.9)
    parts = {"gm_pure": gm_pure, "wm_pure": wm_pure, "other": mask & ~gm_pure & ~wm_pure}
    return {r: 100 * float(excess[sel].sum()) / true_wm for r, sel in parts.items()}


def pooled_error(rows: list[dict], tissue: str, depth: str) -> float | None:
    """% of a tissue's voxels at one depth labelled otherwise, pooled over ``rows``
    (None where no subject has voxels that deep)."""
    cells = [r["hard_error_by_depth"][tissue][depth] for r in rows]
    n = sum(c["n"] for c in cells)
    return 100 * sum(c["wrong"] for c in cells) / n if n else None


def smoothed_phantom(frac: torch.Tensor, present: list[int], sigma: float):
    """Class fractions smoothed by ``sigma`` voxels, the skull-strip mask (brain fraction
    > 0.5), the true tissue fractions (GM, WM, CSF) and the mixed-voxel share."""
    f = frac.numpy()
    if sigma > 0:
        f = np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest") for c in f])
    f = f / f.sum(0, keepdims=True)
    target = np.asarray(TARGET_OF_CLASS)[present]
    tissue = np.stack([f[target == k].sum(0) for k in (1, 2, 3)])
    mask = tissue.sum(0) > 0.5
    return (torch.from_numpy(f.astype(np.float32)), torch.from_numpy(mask), tissue,
            mixed_share(tissue, mask))


def main(argv=None):
    ap = model_benchmark_parser(__doc__)
    ap.add_argument("--sigmas", default="0,0.75,1.5", help="Gaussian sigmas, mm (1 mm grid)")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--flip-tta", choices=sorted(FLIP_TTA), default="none",
                    help="flip test-time augmentation: lr (2 passes), all (8)")
    ap.add_argument("--out", default="docs/results/partial-volume")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models, subjects = benchmark_models(args)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    rows = []
    t0 = time.time()
    for si, subj in enumerate(subjects):
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, present, _, _, _ = phantom(head, args.seed + si)
        for sigma in sigmas:
            f, mask, tissue, mixed = smoothed_phantom(frac, present, sigma)
            sig = gen.simulate_patch("MPRAGE", {"ti": torch.tensor([0.9])}, cmaps, f)[0].abs()
            img = sig * mask
            img = img / img[mask].mean()
            truth = [float(tissue[k][mask.numpy()].sum()) for k in range(3)]
            truth_lab = (tissue.argmax(0) + 1) * mask.numpy()
            for name, model in models.items():
                phys = model.encoder.encode("MPRAGE", {"ti": [0.9]}) if model.physics else None
                with torch.no_grad():
                    logits = sliding_window_logits(model.network, img[None, None], phys,
                                                   window=args.window, overlap=0.25,
                                                   flip_axes=FLIP_TTA[args.flip_tta])
                p = torch.softmax(logits[0], 0) * mask
                lab = p.argmax(0) * mask
                hard = [float((lab == k).sum()) for k in (1, 2, 3)]
                soft = [float(p[k].sum()) for k in (1, 2, 3)]
                wm_where = wm_error_by_region(p[2].numpy(), tissue, mask.numpy())
                depth = error_by_depth(lab.numpy(), truth_lab, max_depth=DEPTHS[-1])
                rows.append({
                    "model": name, "subject": subj, "sigma_mm": sigma, "mixed_share": mixed,
                    "hard_error_pct": {t: 100 * (v - r) / r
                                       for t, v, r in zip(TISSUES, hard, truth, strict=True)},
                    "soft_error_pct": {t: 100 * (v - r) / r
                                       for t, v, r in zip(TISSUES, soft, truth, strict=True)},
                    "wm_soft_error_pct_by_region": wm_where,
                    "hard_error_by_depth": {t: {str(d): v for d, v in depth[k].items()}
                                            for k, t in enumerate(TISSUES, start=1)},
                })
                log.info("%s %s sigma %.2f (mixed %.2f): hard %s (%.0f s)", name, subj, sigma,
                         mixed, " ".join(f"{e:+.1f}" for e in rows[-1]["hard_error_pct"].values()),
                         time.time() - t0)
    summary = {}
    for name in models:
        for sigma in sigmas:
            sel = [r for r in rows if r["model"] == name and r["sigma_mm"] == sigma]
            summary.setdefault(name, {})[str(sigma)] = {
                "mixed_share": float(np.mean([r["mixed_share"] for r in sel])),
                **{key: {t: float(np.mean([r[key][t] for r in sel])) for t in TISSUES}
                   for key in ("hard_error_pct", "soft_error_pct")},
                "wm_soft_error_pct_by_region": {
                    r: float(np.mean([x["wm_soft_error_pct_by_region"][r] for x in sel]))
                    for r in REGIONS},
                "hard_error_pct_by_depth": {t: {str(d): pooled_error(sel, t, str(d))
                                                for d in DEPTHS} for t in TISSUES}}
    meta = {"subjects": subjects, "sigmas_mm": sigmas, "window": args.window,
            "flip_tta": args.flip_tta, "seed": args.seed,
            "image": "MPRAGE TI 0.9 s, noise-free, skull-stripped at brain fraction 0.5, "
                     "divided by the brain mean",
            "models": models_meta(models), "wall_s": time.time() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "partial_volume.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "per_subject": rows}, indent=1))
    lines = [f"Partial-volume probe ({', '.join(subjects)}; {meta['image']}; window "
             f"{args.window}" + ("" if args.flip_tta == "none" else f", flip TTA {args.flip_tta}")
             + "; `bench/bench_partial_volume.py`). Signed volume error vs the "
             "true tissue volumes inside the mask, %, mean over subjects: hard labels "
             "(soft: summed probabilities).", "",
             "| model | sigma mm | mixed share | GM err % | WM err % | CSF err % |",
             "|---|---|---|---|---|---|"]
    for name, per in summary.items():
        for s, v in per.items():
            h, o = v["hard_error_pct"], v["soft_error_pct"]
            lines.append(f"| {name} | {s} | {v['mixed_share']:.2f} | "
                         + " | ".join(f"{h[t]:+.1f} ({o[t]:+.1f})" for t in TISSUES) + " |")
    lines += ["", "Where the soft WM error lies: sum of (WM probability - true WM fraction) "
              "over each set of voxels, % of the true WM volume (the three add up to the "
              "soft WM error).", "",
              "| model | sigma mm | " + " | ".join(REGIONS.values()) + " |",
              "|---" * (2 + len(REGIONS)) + "|"]
    for name, per in summary.items():
        for s, v in per.items():
            w = v["wm_soft_error_pct_by_region"]
            lines.append(f"| {name} | {s} | " + " | ".join(f"{w[r]:+.1f}" for r in REGIONS)
                         + " |")
    lines += ["", "Where the hard labels are wrong: % of each tissue's voxels (argmax of the true "
              "fractions) labelled otherwise, by depth in voxels from the tissue's border "
              "(pooled over the subjects; cortex lies at depths 1-2, the interiors of WM, "
              "deep GM and ventricles deeper).", "",
              "| model | sigma mm | " + " | ".join(
                  f"{t} {d if d < DEPTHS[-1] else f'>={d}'}" for t in TISSUES for d in DEPTHS)
              + " |", "|---" * (2 + len(TISSUES) * len(DEPTHS)) + "|"]
    for name, per in summary.items():
        for s, v in per.items():
            e = v["hard_error_pct_by_depth"]
            lines.append(f"| {name} | {s} | " + " | ".join(
                "-" if e[t][str(d)] is None else f"{e[t][str(d)]:.1f}"
                for t in TISSUES for d in DEPTHS) + " |")
    md = "\n".join(lines) + "\n"
    (out / "partial_volume.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
