#!/usr/bin/env python
"""How much do a model's volumes move with the level of its input? (docs/segmentation.md)

The network input is the image divided by its mean inside the brain mask. A network
with instance norm re-normalises every window and hardly sees that level; a network
without normalisation reads it. This probe takes the application's own preprocessed
images (``desc-preproc_T1w`` and ``dseg`` in ``space-MNI152NLin2009aSym`` from a
``phys-bids participant`` run), multiplies the normalised input by each ``--scales``
factor and reports the tissue volumes (hard labels, mL of 1 mm voxels on the model
grid; one deterministic pass, no Monte-Carlo sampling, the application's window and
overlap). The brain mask is the union of the run's tissue labels in that space.

    python bench/bench_input_level.py --models seg-physics,seg-physics-film-nonorm \\
        --run /tmp/demo-work/out-seg-physics --subject sub-01 --session ses-siteA \\
        --scales 0.8,0.9,1.0,1.1,1.2 --out docs/results/input-level

writes ``input_level.json`` and ``input_level.md``. The acquisition the physics
branch is told comes from the preprocessed image's sidecar
(``PhysBIDS.Acquisition``, as written by the participant workflow).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from phys_bids.models.inference import sliding_window_logits
from phys_bids.models.registry import load_model
from phys_bids.models.segment import OVERLAP, WINDOW, network_input

log = logging.getLogger("bench.input_level")
TISSUES = ("GM", "WM", "CSF")
SPACE = "space-MNI152NLin2009aSym"


def volumes_at_scales(model, image: np.ndarray, mask: np.ndarray, sequence: str,
                      params: dict, scales, *, threads: int = 1) -> dict[str, list[float]]:
    """``{scale: [GM, WM, CSF] mL}`` with the normalised input multiplied by each scale."""
    _, x, m, phys = network_input(model, image, mask, sequence, params, threads=threads)
    out = {}
    for s in scales:
        with torch.no_grad():
            logits = sliding_window_logits(model.network, x * s, phys, window=WINDOW,
                                           overlap=OVERLAP)
        lab = logits[0].argmax(0) * m
        out[f"{s:g}"] = [float((lab == k).sum()) / 1000.0 for k in (1, 2, 3)]
    return out


def acquisition(sidecar: dict) -> tuple[str, dict]:
    """The sequence and parameters the participant workflow wrote to a sidecar
    (``PhysBIDS.Acquisition``)."""
    acq = sidecar["PhysBIDS"]["Acquisition"]
    return acq["Sequence"], {k: float(v) for k, v in acq["Parameters"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="output folder of a phys-bids participant run")
    ap.add_argument("--subject", required=True, help="e.g. sub-01")
    ap.add_argument("--session", default=None, help="e.g. ses-siteA")
    ap.add_argument("--models", default="seg-physics,seg-physics-film-nonorm")
    ap.add_argument("--scales", default="0.8,0.9,1.0,1.1,1.2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/input-level")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    anat = Path(args.run) / args.subject
    stem = args.subject
    if args.session:
        anat, stem = anat / args.session, f"{stem}_{args.session}"
    anat = anat / "anat"
    t1w = anat / f"{stem}_{SPACE}_desc-preproc_T1w.nii.gz"
    dseg = anat / f"{stem}_{SPACE}_dseg.nii.gz"
    for f in (t1w, dseg):
        if not f.is_file():
            ap.error(f"{f} not found: point --run/--subject/--session at a participant run")
    sequence, params = acquisition(json.loads(t1w.with_name(
        t1w.name.replace(".nii.gz", ".json")).read_text()))
    image = np.asarray(nib.load(t1w).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(dseg).dataobj) > 0
    scales = [float(s) for s in args.scales.split(",")]
    result = {"meta": {"image": str(t1w), "brain_ml": float(mask.sum()) / 1000.0,
                       "sequence": sequence, "parameters": params},
              "volumes_ml": {}}
    for name in args.models.split(","):
        model = load_model(name)
        result["volumes_ml"][name] = volumes_at_scales(model, image, mask, sequence, params,
                                                       scales, threads=args.threads)
        log.info("%s: %s", name, result["volumes_ml"][name])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_level.json").write_text(json.dumps(result, indent=1))
    lines = [f"Input level probe: `{t1w.name}` ({sequence} {params}), brain mask "
             f"{result['meta']['brain_ml']:.0f} mL; hard-label volumes in mL with the "
             "normalised input multiplied by the scale (`bench/bench_input_level.py`).", "",
             "| model | scale | GM | WM | CSF |", "|---|---|---|---|---|"]
    for name, rows in result["volumes_ml"].items():
        lines += [f"| {name} | {s} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} |"
                  for s, v in rows.items()]
    (out / "input_level.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
