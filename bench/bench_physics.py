#!/usr/bin/env python
"""Simulation throughput vs the memory-bandwidth bound, measured in the same run.

For each sequence: simulate a batch of 8 parameter sets over a 256^3 (16.8 M voxel)
float32 volume, and time a copy that moves the same number of bytes (the maps read
plus the images written) into freshly allocated memory, as the simulation does.
ratio = t_copy / t_simulate (1.0 = as fast as moving the bytes).

    python bench/bench_physics.py --threads 2 [--size 256] [--repeats 3] [--json out.json]

Results and the command: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from functools import partial

import torch
from common import best  # bench/, beside this script

from phys_bids.physics import SEQUENCES, SPACES, simulate

PARAMS = {
    "SPGR": lambda g: SPACES["spgr-id"].sample(8, generator=g, dtype=torch.float32),
    "MPRAGE": lambda g: SPACES["mprage-id"].sample(8, generator=g, dtype=torch.float32),
    "MPRAGE-RO": lambda g: {**{k: v for k, v in SPACES["qsynth-mprage"].sample(
        8, generator=g, dtype=torch.float32).items()}, "n_excitations": torch.full((8,), 176.0)},
    "FLAIR": lambda g: {"ti": torch.full((8,), 2.5), "tr": torch.linspace(8.0, 10.0, 8),
                        "te": torch.full((8,), 0.1)},
    "FSE": lambda g: {"tr": torch.linspace(3.0, 5.0, 8), "te": torch.linspace(0.08, 0.12, 8)},
}



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="eager,compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.size
    g = torch.Generator().manual_seed(0)
    maps = {"pd": torch.rand(n, n, n, generator=g) + 0.5,
            "r1": torch.rand(n, n, n, generator=g) + 0.25,
            "r2s": torch.rand(n, n, n, generator=g) * 40 + 2,
            "r2": torch.rand(n, n, n, generator=g) * 15 + 0.5}
    rows = []
    print(f"volume {n}^3 = {n**3 / 1e6:.1f} M voxels, batch 8, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'sequence':10s} {'backend':8s} {'sim s':>8s} {'copy s':>8s} {'GB moved':>9s} "
          f"{'ratio':>6s}")
    for name, model in SEQUENCES.items():
        params = PARAMS[name](g)
        used = {k: maps[k] for k in model.maps if k in maps}
        nbytes = sum(v.numel() * 4 for v in used.values()) + 8 * n**3 * 4
        src = torch.ones(nbytes // 4 // 2, dtype=torch.float32)  # copy: read N/2 + write N/2
        t_copy = best(src.clone, args.repeats)
        for backend in args.backends.split(","):
            simulate(name, used, params, backend=backend)  # warm-up / compile
            t_sim = best(partial(simulate, name, used, params, backend=backend), args.repeats)
            rows.append({"sequence": name, "backend": backend, "sim_s": t_sim, "copy_s": t_copy,
                         "bytes": nbytes, "ratio": t_copy / t_sim})
            print(f"{name:10s} {backend:8s} {t_sim:8.3f} {t_copy:8.3f} {nbytes / 1e9:9.2f} "
                  f"{t_copy / t_sim:6.2f}")
        del src
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": n, "threads": args.threads, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
