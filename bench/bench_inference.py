#!/usr/bin/env python
"""Time of one network window in the two memory layouts, and of a whole-brain
sliding-window pass, for a shipped model on CPU.

The sliding-window inference converts the network and its windows to channels-last
3D on CPU (phys_bids.models.inference); this measures what that buys against the
default layout in the same process (best of ``--repeats``; ratio = default /
channels-last), and checks that the logits agree.

    python bench/bench_inference.py --threads 2 --json docs/results/inference_bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from common import best  # bench/, beside this script

from phys_bids.models.inference import sliding_window_logits
from phys_bids.models.registry import load_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="seg-physics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    net = model.network.eval()
    g = torch.Generator().manual_seed(0)
    w = args.window
    x = torch.rand((1, 1, w, w, w), generator=g)
    phys = (model.encoder.encode("MPRAGE", {"ti": [0.9]}) if model.physics else None)
    cl = torch.channels_last_3d
    with torch.inference_mode():
        net.to(memory_format=torch.contiguous_format)
        ref = net(x, phys)[0]
        t_default = best(lambda: net(x, phys), args.repeats)
        net.to(memory_format=cl)
        xc = x.contiguous(memory_format=cl)
        out = net(xc, phys)[0]
        t_cl = best(lambda: net(xc, phys), args.repeats)
        brain = torch.rand((1, 1, 144, 176, 144), generator=g)  # a 1 mm brain's box
        t0 = time.perf_counter()
        sliding_window_logits(net, brain, phys, window=w, overlap=0.25)
        t_brain = time.perf_counter() - t0
    res = {"model": args.model, "threads": args.threads, "window": w,
           "window_s_default_layout": round(t_default, 3),
           "window_s_channels_last": round(t_cl, 3),
           "ratio_default_over_channels_last": round(t_default / t_cl, 3),
           "max_abs_logit_difference": float((out - ref).abs().max()),
           "brain_box": [144, 176, 144], "sliding_window_pass_s": round(t_brain, 2),
           "command": "python bench/bench_inference.py " + " ".join(
               argv if argv is not None else sys.argv[1:])}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
