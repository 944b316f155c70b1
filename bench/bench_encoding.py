#!/usr/bin/env python
"""How far outside its training does the physics branch's input go? (docs/segmentation.md)

For each physics encoding (``parameters``: the papers' standardised TI / TR, TE, FA
features with a one-hot sequence code; ``contrast``: the levels of reference GM, WM,
CSF under the acquisition), draws acquisitions from each benchmark space and reports
the Euclidean distance of their encodings to the nearest encoding of a training
acquisition (both training spaces pooled, as the generator draws them), in the
encoding's own standardised units: median, 90th percentile and maximum. No network
is involved: it measures what the physics branch is asked to extrapolate.

    python bench/bench_encoding.py --out docs/results/encoding

writes ``encoding.json`` and ``encoding.md`` (seconds on one core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from phys_bids.physics import SPACES, PhysicsEncoder
from phys_bids.physics.tissues import reference_tissues

CONDITIONS = (("MPRAGE", "mprage-id"), ("MPRAGE", "mprage-ood"), ("SPGR", "spgr-id"),
              ("SPGR", "spgr-ood"))


def encoders(field_strength: float = 3.0) -> dict[str, PhysicsEncoder]:
    return {"parameters": PhysicsEncoder(),
            "contrast": PhysicsEncoder(mode="contrast",
                                       tissues=reference_tissues(field_strength))}


def distances(enc: PhysicsEncoder, n_train: int, n_test: int, seed: int) -> dict:
    """Per condition: median, 90th percentile and max nearest-training distance."""
    g = torch.Generator().manual_seed(seed)
    train = torch.cat([enc.encode(s, SPACES[enc.spaces[s]].sample(n_train, generator=g),
                                  dtype=torch.float64) for s in enc.sequences])
    out = {}
    for seq, space in CONDITIONS:
        x = enc.encode(seq, SPACES[space].sample(n_test, generator=g), dtype=torch.float64)
        d = torch.cdist(x, train).min(1).values
        out[space] = {"median": float(d.median()), "p90": float(torch.quantile(d, 0.9)),
                      "max": float(d.max())}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for encoding.json / encoding.md")
    ap.add_argument("--n-train", type=int, default=4000, help="training draws per sequence")
    ap.add_argument("--n-test", type=int, default=2000, help="draws per benchmark space")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = {name: distances(enc, args.n_train, args.n_test, args.seed)
           for name, enc in encoders().items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoding.json").write_text(json.dumps(
        {"n_train": args.n_train, "n_test": args.n_test, "seed": args.seed,
         "distances": res}, indent=1) + "\n")
    lines = ["| encoding | " + " | ".join(s for _, s in CONDITIONS) + " |",
             "| --- |" + " --- |" * len(CONDITIONS)]
    for name, r in res.items():
        cells = [f"{r[s]['median']:.2f} / {r[s]['p90']:.2f} / {r[s]['max']:.2f}"
                 for _, s in CONDITIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = ("Distance of an acquisition's encoding to the nearest training encoding "
            "(median / 90th percentile / max, standardised units; "
            f"{args.n_test} draws per space, {args.n_train} training draws per sequence, "
            f"seed {args.seed}).\n\n" + "\n".join(lines) + "\n")
    (out / "encoding.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
