#!/usr/bin/env python
"""Is the demo's volume error in its anatomy or in the application's steps?

Through the application (bench/bench_demo_sites.py) a model's volume error on the demo
mixes its reading of the anatomy with the skull strip, N4, registration and the 1.5 mm
grid. This segments the demo's anatomy itself - the ICBM152
population-average tissue fractions on their 1 mm MNI grid (``phys_bids.demo``), mixed
into PD/R1/R2* maps as the demo does - simulated at each MPRAGE site's protocol,
noise-free, without a receive field, masked where the brain fractions sum to more
than 0.5 and divided by the brain mean: no 1.5 mm grid, skull strip, N4 or
registration. Per model and site: the signed error of the hard and soft volumes
against the true (fraction-summed) volumes inside the mask, and the GM/CSF voxels
binned by their true CSF fraction (intensity, true and read CSF). Per site also: how far
the demo's mixing of the parameters is from the training generator's mixing of the
signals, for a voxel half GM.

    python bench/bench_demo_anatomy.py --models seg-physics,seg-baseline \
        --out docs/results/demo-anatomy

writes ``demo_anatomy.json`` and ``demo_anatomy.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.demo import SITES, _mixed_maps, _mni_anatomy
from phys_bids.models.inference import FLIP_TTA, sliding_window_logits
from phys_bids.models.registry import load_model
from phys_bids.physics.simulate import simulate
from phys_bids.synth.evaluation import mixed_share
from phys_bids.synth.tissues import CLASSES

TISSUES = ("GM", "WM", "CSF")
DEMO_CLASS = {"GM": "gm_cortex", "WM": "wm", "CSF": "csf"}


def mixing_gap(site: str) -> dict:
    """How far the demo's way of mixing (PD/R1/R2* averaged by fraction, then simulated)
    is from the training generator's (the class signals averaged by fraction) at a
    site's protocol: the signal of a voxel half GM, half CSF (and half GM, half WM) both
    ways, as fractions of the pure-GM signal."""
    spec = SITES[site]

    def signal(frac: dict) -> float:
        f = np.zeros((len(CLASSES), 1), np.float32)
        for c, v in frac.items():
            f[CLASSES.index(c), 0] = v
        return float(simulate(spec["sequence"], _mixed_maps(f, {}), spec["params"]))

    gm = signal({"gm_cortex": 1.0})
    out = {}
    for other in ("csf", "wm"):
        pure = signal({other: 1.0})
        out[f"gm_{other}_half"] = {"parameters_mixed": signal({"gm_cortex": 0.5, other: 0.5}) / gm,
                                   "signals_mixed": 0.5 * (gm + pure) / gm}
    return out


#: bins of the true CSF fraction for the GM/CSF voxels (WM < 5 %)
CSF_BINS = ((0.0, 0.05), (0.05, 0.15), (0.15, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9),
            (0.9, 1.01))


def by_csf_fraction(image: np.ndarray, tissue: np.ndarray, mask: np.ndarray,
                    csf_prob: np.ndarray) -> list[dict]:
    """GM/CSF voxels (WM < 5 %) binned by their true CSF fraction: per bin the mean
    intensity as a fraction of the pure-GM intensity (GM > 95 %), the mean true CSF
    fraction and the model's mean CSF probability. A GM/CSF mixture's intensity lies
    between the pure ones; a bin darker than its CSF fraction allows is not GM + CSF
    (this table found the demo's empty space, session 23)."""
    gm, wm, csf = tissue
    pure = float(image[mask & (gm > 0.95)].mean())
    rows = []
    for lo, hi in CSF_BINS:
        sel = mask & (wm < 0.05) & (csf >= lo) & (csf < hi)
        if sel.any():
            rows.append({"csf_range": [lo, min(hi, 1.0)], "voxels": int(sel.sum()),
                         "intensity_vs_pure_gm": float(image[sel].mean()) / pure,
                         "true_csf": float(csf[sel].mean()),
                         "model_csf": float(csf_prob[sel].mean())})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="seg-physics,seg-baseline")
    ap.add_argument("--sites", default="siteA,siteB", help="MPRAGE sites of the demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--flip-tta", choices=sorted(FLIP_TTA), default="none",
                    help="flip test-time augmentation: lr (2 passes), all (8)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    sites = args.sites.split(",")
    for site in sites:
        if SITES[site]["sequence"] != "MPRAGE":
            raise SystemExit(f"--sites: {site} is {SITES[site]['sequence']}, not MPRAGE")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    frac, _ = _mni_anatomy()
    tissue = np.stack([frac[CLASSES.index(DEMO_CLASS[t])] for t in TISSUES])
    mask = tissue.sum(0) > 0.5
    truth = {t: float(tissue[k][mask].sum()) for k, t in enumerate(TISSUES)}
    mixed = mixed_share(tissue, mask)
    maps = _mixed_maps(frac, {})
    m = torch.from_numpy(mask)
    images = {}  # per site: the same image for every model
    for site in sites:
        img = simulate("MPRAGE", maps, SITES[site]["params"])[0] * m
        images[site] = img / img[m].mean()
    results = {"truth_ml": {t: v / 1000 for t, v in truth.items()}, "mixed_share": mixed,
               "mixing_gap": {site: mixing_gap(site) for site in sites}, "models": {}}
    for name in args.models.split(","):
        model = load_model(name)
        label = model.manifest["name"]
        results["models"][label] = {}
        for site in sites:
            params = SITES[site]["params"]
            phys = (model.encoder.encode("MPRAGE", {k: [v] for k, v in params.items()})
                    if model.physics else None)
            with torch.no_grad():
                logits = sliding_window_logits(model.network, images[site][None, None].float(),
                                               phys, window=args.window, overlap=0.25,
                                               flip_axes=FLIP_TTA[args.flip_tta])
            p = torch.softmax(logits[0], 0) * m
            lab = p.argmax(0) * m
            row = {}
            for k, t in enumerate(TISSUES, start=1):
                soft, hard = float(p[k].sum()), float((lab == k).sum())
                row[t] = {"soft_error_pct": 100 * (soft - truth[t]) / truth[t],
                          "hard_error_pct": 100 * (hard - truth[t]) / truth[t]}
            row["by_csf_fraction"] = by_csf_fraction(images[site].numpy(), tissue, mask,
                                                     p[3].numpy())
            results["models"][label][site] = row
            print(label, site, " ".join(f"{t} {row[t]['soft_error_pct']:+.1f}" for t in TISSUES),
                  f"({time.time() - t0:.0f} s)")
    results["flip_tta"] = args.flip_tta
    results["wall_s"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_anatomy.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"Demo anatomy (ICBM152 fractions, 1 mm MNI grid, {100 * mixed:.0f} % of the brain "
             "in mixed voxels), MPRAGE at each site's protocol, noise-free, no preprocessing"
             + ("" if args.flip_tta == "none" else f", flip TTA {args.flip_tta}") + "; "
             "signed volume error vs the true volumes inside the mask, % soft (hard). "
             "`bench/bench_demo_anatomy.py`", "",
             "| model | site | GM % | WM % | CSF % |", "| --- | --- | --- | --- | --- |"]
    for label, sites in results["models"].items():
        for site, row in sites.items():
            lines.append(f"| {label} | {site} | " + " | ".join(
                f"{row[t]['soft_error_pct']:+.1f} ({row[t]['hard_error_pct']:+.1f})"
                for t in TISSUES) + " |")
    lines += ["", "The demo mixes PD/R1/R2* by fraction and then simulates; training mixes the "
              "class signals. Signal of a half-GM voxel both ways, fraction of the pure-GM "
              "signal:", "", "| site | GM/CSF: parameters mixed | signals mixed | "
              "GM/WM: parameters mixed | signals mixed |", "| --- | --- | --- | --- | --- |"]
    for site, gap in results["mixing_gap"].items():
        lines.append(f"| {site} | " + " | ".join(
            f"{gap[k]['parameters_mixed']:.3f} | {gap[k]['signals_mixed']:.3f}"
            for k in ("gm_csf_half", "gm_wm_half")) + " |")
    lines += ["", "GM/CSF voxels (WM < 5 %) by true CSF fraction: mean intensity as a "
              "fraction of pure GM / mean true CSF fraction / the model's mean CSF "
              "probability, per model and site:", "",
              "| model | site | " + " | ".join(f"CSF {lo:.2f}-{min(hi, 1):.2f}"
                                             for lo, hi in CSF_BINS) + " |",
              "| --- | --- |" + " --- |" * len(CSF_BINS)]
    for label, sites in results["models"].items():
        for site, row in sites.items():
            cells = {tuple(b["csf_range"]): b for b in row["by_csf_fraction"]}
            lines.append(f"| {label} | {site} | " + " | ".join(
                "{intensity_vs_pure_gm:.2f} / {true_csf:.2f} / {model_csf:.2f}".format(
                    **cells[(lo, min(hi, 1.0))]) if (lo, min(hi, 1.0)) in cells else "-"
                for lo, hi in CSF_BINS) + " |")
    (out / "demo_anatomy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
