#!/usr/bin/env python
"""qMRI maps from one image, and the physics-harmonised image, on held-out subjects.

For each held-out subject of the qMRI model's split: the 1 mm phantom of
``bench_consistency.py`` (labels -> true PD, R1, R2*, MT maps with smooth
within-tissue variation), images simulated per condition (MPRAGE TI and SPGR
draws, in and out of the training space; Rician noise, SNR 30 in the brain),
maps estimated with the network (:func:`phys_bids.models.qmri_net.estimate_maps`).

* **Maps**: NRMSE (RMSE / range of the true map in the brain), PSNR and SSIM
  (global, in the brain mask) per map, against a yardstick that knows the true
  tissue labels and assigns each voxel the literature mean of its tissue (an
  oracle "atlas" map: what anatomy alone gives).
* **R1 consistency across acquisitions**: the CoV (x10^3) over a condition's images
  of the mean estimated R1 in WM and in GM, and the voxel-wise mean absolute
  deviation from the per-voxel mean (% of R1).
* **Harmonisation**: pairs of scans of the same anatomy under protocols A and B:
  SSIM/PSNR of B re-synthesised from A's estimated maps vs B's noise-free image,
  beside the scan A itself vs B (before); and the GM/WM volume difference of Atropos
  (k-means, antspyx) on A vs B, before (the noisy scans) and after (both
  re-synthesised at the reference protocol ``mprage-3t`` from their estimated maps).

    python bench/bench_qmri.py --n-images 5 --out docs/results/qmri

writes ``qmri.json`` and ``qmri.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.bids.protocol import load_reference_protocol
from phys_bids.models.evaluation import development_data
from phys_bids.models.qmri_net import MAPS, estimate_maps, qmri_metrics, synthesise
from phys_bids.models.registry import load_model
from phys_bids.physics import rician_noise
from phys_bids.physics.tissues import CLASSES, priors_at
from phys_bids.synth import load_head
from phys_bids.synth.generator import true_maps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import atropos_labels  # noqa: E402

from phys_bids.models.evaluation import conditions, phantom  # noqa: E402

KEYS = ("pd", "r1", "r2s", "mt")


def phantom_true_maps(cmaps, frac, present) -> torch.Tensor:
    """The phantom's true maps; its class maps carry no MT, which is the prior mean."""
    mt = torch.tensor([priors_at(3.0)[CLASSES[k]]["mt"].mean for k in present])
    return true_maps({**cmaps, "mt": mt.reshape(-1, 1, 1, 1).expand_as(frac)}, frac)


def atlas_maps(frac, present) -> torch.Tensor:
    """Each voxel: the literature mean of its (true) tissue, partial-volume weighted."""
    pri = priors_at(3.0)
    w = frac / frac.sum(0).clamp_min(1e-6)
    return torch.stack([(torch.tensor([pri[CLASSES[k]][p].mean for k in present]
                                      ).reshape(-1, 1, 1, 1) * w).sum(0) for p in KEYS])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--model", default="qmri-physics")
    ap.add_argument("--subjects", default=None, help="default: the model's test split")
    ap.add_argument("--n-images", type=int, default=5, help="images per condition")
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default="docs/results/qmri")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    subjects = args.subjects.split(",") if args.subjects else model.manifest["split"]["test"]
    conds = {k: v for k, v in conditions(args.n_images, args.seed).items()
             if k in args.conditions.split(",")}
    ref = load_reference_protocol("mprage-3t")
    g = torch.Generator().manual_seed(args.seed)
    rows, cons, harm, seconds = [], [], [], []
    for si, subj in enumerate(subjects):
        head = load_head(Path(args.data) / f"{subj}.nii.gz")
        gen, cmaps, frac, present, mask, anatomy, _ = phantom(head, args.seed + si)
        truth = phantom_true_maps(cmaps, frac, present)
        atlas = atlas_maps(frac, present)
        m = mask.bool()
        a_metrics = qmri_metrics(atlas[None], truth, m)
        clean, est = {}, {}
        for cname, (seq, params) in conds.items():
            r1_means = []
            r1_maps = []
            for i in range(args.n_images):
                p = {k: v[i:i + 1] for k, v in params.items()}
                sig = gen.simulate_patch(seq, p, cmaps, frac)[0].abs() * m
                noisy = rician_noise(sig, float(sig[m].mean()) / 30.0, generator=g) * m
                pf = {k: float(v[0]) for k, v in p.items()}
                t0 = time.perf_counter()
                maps = torch.from_numpy(estimate_maps(model, noisy.numpy(), m.numpy(), seq, pf,
                                                      threads=args.threads))
                seconds.append(time.perf_counter() - t0)
                met = qmri_metrics(maps[None], truth, m)
                rows.append({"subject": subj, "condition": cname, "image": i, "params": pf,
                             **{f"{k}_{q}": met[k][q] for k in MAPS for q in met[k]},
                             **{f"atlas_{k}_{q}": a_metrics[k][q] for k in MAPS
                                for q in a_metrics[k]}})
                r1_means.append([float(maps[1][anatomy == 2].mean()),
                                 float(maps[1][anatomy == 1].mean())])
                r1_maps.append(maps[1][m])
                clean[(cname, i)], est[(cname, i)] = (sig, seq, pf, noisy), maps
                print(f"{subj} {cname} {i + 1}/{args.n_images}: R1 NRMSE "
                      f"{met['R1']['nrmse']:.3f} (atlas {a_metrics['R1']['nrmse']:.3f}) "
                      f"{seconds[-1]:.1f} s", flush=True)
            v = np.asarray(r1_means)
            stack = torch.stack(r1_maps)
            cons.append({"subject": subj, "condition": cname,
                         "r1_wm_cov_x1e3": float(1e3 * v[:, 0].std() / v[:, 0].mean()),
                         "r1_gm_cov_x1e3": float(1e3 * v[:, 1].std() / v[:, 1].mean()),
                         "r1_voxel_mad_pct": float(100 * ((stack - stack.mean(0)).abs()
                                                          / stack.mean(0)).mean())})
        # harmonisation pairs: TI extremes, and MPRAGE vs SPGR
        pairs = []
        if "mprage-id" in conds:
            pairs.append((("mprage-id", 0), ("mprage-id", args.n_images - 1)))
            if "spgr-id" in conds:
                pairs.append((("mprage-id", args.n_images // 2), ("spgr-id", 0)))
        for a, b in pairs:
            sig_a, seq_a, p_a, noisy_a = clean[a]
            sig_b, seq_b, p_b, noisy_b = clean[b]
            a_to_b = torch.from_numpy(synthesise(est[a].numpy(), m.numpy(), seq_b, p_b))
            before = _sim(_norm(noisy_a, m), _norm(sig_b, m), m)  # the scan A itself vs B
            after = _sim(_norm(a_to_b, m), _norm(sig_b, m), m)
            ha = synthesise(est[a].numpy(), m.numpy(), ref["sequence"], ref["params"])
            hb = synthesise(est[b].numpy(), m.numpy(), ref["sequence"], ref["params"])
            vols = {}
            # Atropos sees what a study has: the noisy scans, or their harmonised versions
            for tag, x in (("raw_a", noisy_a), ("raw_b", noisy_b),
                           ("harm_a", torch.from_numpy(ha)), ("harm_b", torch.from_numpy(hb))):
                try:
                    lab = atropos_labels(x.float(), m, anatomy)
                except Exception as err:  # noqa: BLE001 - e.g. k-means on a flat image
                    raise SystemExit(f"Atropos failed on {tag} of {a} -> {b}: {err}") from None
                vols[tag] = {t: float((lab == k).sum()) / 1000 for k, t in
                             ((1, "GM"), (2, "WM"))}
            diff = {f"{w}_{t}_pct": 100 * abs(vols[f"{w}_a"][t] - vols[f"{w}_b"][t])
                    / vols[f"{w}_b"][t] for w in ("raw", "harm") for t in ("GM", "WM")}
            harm.append({"subject": subj, "a": f"{a[0]}#{a[1]} {clean[a][2]}",
                         "b": f"{b[0]}#{b[1]} {clean[b][2]}",
                         "ssim_before": before[0], "psnr_before": before[1],
                         "ssim_after": after[0], "psnr_after": after[1], **diff})
            print(f"{subj} harmonisation {a} -> {b}: SSIM {before[0]:.3f} -> {after[0]:.3f}; "
                  f"Atropos GM diff {diff['raw_GM_pct']:.1f} % -> {diff['harm_GM_pct']:.1f} %",
                  flush=True)
    summary = _summarise(rows, cons, harm, conds)
    meta = {"model": args.model, "steps": model.manifest.get("steps"), "subjects": subjects,
            "images_per_condition": args.n_images, "threads": args.threads,
            "seconds_per_image_median": float(np.median(seconds)),
            "reference_protocol": ref["name"],
            "command": "python bench/bench_qmri.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qmri.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows,
                                               "consistency": cons, "harmonisation": harm},
                                              indent=1) + "\n")
    md = _markdown(meta, summary)
    (out / "qmri.md").write_text(md)
    print(md)
    return 0


def _norm(x, m):
    return x / x[m].mean()


def _sim(x, y, m):
    from phys_bids.models.qmri_net import _ssim

    rng = float(y[m].max() - y[m].min()) or 1.0
    rmse = float(((x[m] - y[m]) ** 2).mean().sqrt())
    return _ssim(x, y, m, rng), 20 * np.log10(rng / max(rmse, 1e-12))


def _ms(vals):
    v = np.asarray(vals, float)
    return [float(v.mean()), float(v.std())]


def _summarise(rows, cons, harm, conds):
    out = {"maps": {}, "consistency": {}, "harmonisation": {}}
    for c in conds:
        r = [x for x in rows if x["condition"] == c]
        out["maps"][c] = {k: {q: _ms([x[f"{k}_{q}"] for x in r]) for q in
                              ("nrmse", "psnr_db", "ssim")} for k in MAPS}
        out["maps"][c]["atlas"] = {k: {q: _ms([x[f"atlas_{k}_{q}"] for x in r]) for q in
                                       ("nrmse", "psnr_db", "ssim")} for k in MAPS}
        cc = [x for x in cons if x["condition"] == c]
        out["consistency"][c] = {k: _ms([x[k] for x in cc]) for k in
                                 ("r1_wm_cov_x1e3", "r1_gm_cov_x1e3", "r1_voxel_mad_pct")}
    if harm:
        out["harmonisation"] = {k: _ms([h[k] for h in harm]) for k in harm[0]
                                if k not in ("subject", "a", "b")}
    return out


def _markdown(meta, s) -> str:
    f = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    lines = [f"Model {meta['model']} ({meta['steps']} steps); subjects "
             f"{', '.join(meta['subjects'])}; {meta['images_per_condition']} images per "
             f"condition; {meta['seconds_per_image_median']:.1f} s per image "
             f"({meta['threads']} threads). Mean ± SD over images.", "",
             "| condition | map | NRMSE | PSNR dB | SSIM | atlas NRMSE | atlas SSIM |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c, maps in s["maps"].items():
        for k in MAPS:
            m, a = maps[k], maps["atlas"][k]
            lines.append(f"| {c} | {k} | {f(m['nrmse'])} | {f(m['psnr_db'], 1)} | "
                         f"{f(m['ssim'])} | {f(a['nrmse'])} | {f(a['ssim'])} |")
    lines += ["", "R1 consistency across the images of a condition (same anatomy):", "",
              "| condition | mean R1 in WM, CoV x1e3 | in GM, CoV x1e3 | voxel-wise MAD % |",
              "| --- | --- | --- | --- |"]
    for c, v in s["consistency"].items():
        lines.append(f"| {c} | {f(v['r1_wm_cov_x1e3'], 1)} | {f(v['r1_gm_cov_x1e3'], 1)} | "
                     f"{f(v['r1_voxel_mad_pct'], 2)} |")
    h = s.get("harmonisation")
    if h:
        lines += ["", "Harmonisation (pairs A, B of the same anatomy):", "",
                  "| | before (A vs B) | after (A re-synthesised as B vs B) |",
                  "| --- | --- | --- |",
                  f"| SSIM | {f(h['ssim_before'])} | {f(h['ssim_after'])} |",
                  f"| PSNR dB | {f(h['psnr_before'], 1)} | {f(h['psnr_after'], 1)} |", "",
                  "| Atropos volume difference A vs B | raw images | both harmonised to "
                  "mprage-3t |", "| --- | --- | --- |",
                  f"| GM % | {f(h['raw_GM_pct'], 2)} | {f(h['harm_GM_pct'], 2)} |",
                  f"| WM % | {f(h['raw_WM_pct'], 2)} | {f(h['harm_WM_pct'], 2)} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
