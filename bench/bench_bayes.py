#!/usr/bin/env python
"""The physics-tied Bayesian segmentation on the consistency benchmark's phantoms.

Each test subject's label map becomes the benchmark's phantom (the same generator, seed
and conditions as ``bench/bench_consistency.py``: MPRAGE TI evenly over the in- and
out-of-distribution ranges, SPGR draws of the two spaces); each image is segmented by
:func:`phys_bids.models.bayes.bayes_segment` without a spatial prior (the phantoms are
in their label map's space, not the template's), and the script reports per condition
the CoV of the volumes over the images (x10^3), the Dice of the hard labels against the
anatomy, the mean signed volume error and the seconds per image:

    python bench/bench_bayes.py --subjects head_15 --n-images 5 --out docs/results/bayes-phantoms

writes ``bayes.json`` and ``bayes.md`` under --out. ``--snr`` adds Rician noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.models.bayes import bayes_segment
from phys_bids.models.evaluation import conditions, development_data, dice, noisy_image, phantom
from phys_bids.synth import load_head

TISSUES = ("GM", "WM", "CSF")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="head_14,head_15,head_16")
    ap.add_argument("--conditions", default="mprage-id,mprage-ood,spgr-id,spgr-ood")
    ap.add_argument("--n-images", type=int, default=5)
    ap.add_argument("--snr", type=float, default=0.0, help="0: noise-free")
    ap.add_argument("--seed", type=int, default=2024, help="phantom seed")
    ap.add_argument("--mrf-beta", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    conds = conditions(args.n_images, 0)
    results = {"settings": vars(args), "per_subject": {}}
    for subject in args.subjects.split(","):
        head = load_head(development_data() / "label-maps" / f"{subject}.nii.gz")
        gen, cmaps, frac, _, mask, anatomy, _ = phantom(head, args.seed)
        m, an = mask.numpy(), anatomy.numpy()
        truth = np.array([float((an == k).sum()) / 1000 for k in (1, 2, 3)])
        g = torch.Generator().manual_seed(1)
        per = results["per_subject"][subject] = {}
        for cname in args.conditions.split(","):
            sequence, ps = conds[cname]
            vols, dices, cnrs, t0 = [], [], [], time.time()
            for i in range(args.n_images):
                p = {k: float(v[i]) for k, v in ps.items()}
                pt = {k: v[i:i + 1] for k, v in ps.items()}
                if args.snr > 0:
                    img = noisy_image(gen, cmaps, frac, mask, sequence, pt, g, snr=args.snr)
                else:
                    img = gen.simulate_patch(sequence, pt, cmaps, frac)[0].abs() * mask
                res = bayes_segment(img.numpy(), m, sequence, p, mrf_beta=args.mrf_beta)
                vols.append([res.volumes_ml[t] for t in TISSUES])
                lab = torch.from_numpy(res.dseg(m).astype(np.int64))
                dices.append([dice(lab, anatomy, k) for k in (1, 2, 3)])
                cnrs.append(res.cnr["GM-WM"])
            v = np.array(vols)
            per[cname] = {
                "cov_x1e3": dict(zip(TISSUES, (1000 * v.std(0, ddof=1) / v.mean(0)).tolist(),
                                     strict=True)),
                "dice_anatomy": dict(zip(TISSUES, np.mean(dices, 0).tolist(), strict=True)),
                "error_pct": dict(zip(TISSUES, (100 * (v.mean(0) / truth - 1)).tolist(),
                                      strict=True)),
                "gm_wm_cnr": [round(c, 2) for c in cnrs],
                "seconds_per_image": (time.time() - t0) / args.n_images}
            print(subject, cname, {k: {t: round(x, 2) for t, x in d.items()}
                                   for k, d in per[cname].items() if isinstance(d, dict)},
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bayes.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"Physics-tied Bayesian segmentation on the benchmark phantoms ({args.n_images} "
             f"images per condition, SNR {args.snr or 'noise-free'}, no spatial prior, "
             f"MRF beta {args.mrf_beta}). `python bench/bench_bayes.py --subjects "
             f"{args.subjects} --n-images {args.n_images} --snr {args.snr}`", "",
             "| subject | condition | CoV x10^3 GM / WM / CSF | Dice GM / WM / CSF | "
             "error % GM / WM / CSF | s/image |", "| --- | --- | --- | --- | --- | --- |"]
    for subject, per in results["per_subject"].items():
        for cname, r in per.items():
            def cells(key, spec, r=r):
                return " / ".join(format(r[key][t], spec) for t in TISSUES)

            lines.append(f"| {subject} | {cname} | {cells('cov_x1e3', '.2f')} | "
                         f"{cells('dice_anatomy', '.3f')} | {cells('error_pct', '+.1f')} | "
                         f"{r['seconds_per_image']:.0f} |")
    (out / "bayes.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
