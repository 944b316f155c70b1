#!/usr/bin/env python
"""Bring the training label maps into the model's space: rigid registration to MNI.

The application segments skull-stripped, bias-corrected images rigidly aligned to
the MNI template (1 mm grid). The development label maps are in their own scanner
space; this workflow aligns each to the template the way the participant level aligns
a T1w, so that a training run sees anatomy in the pose and on the grid it will meet:

1. labels -> tissue classes -> a noise-free static MPRAGE image (TI 0.9 s, the tissue
   priors' R1 and PD) of the brain only - a skull-stripped T1w;
2. rigid registration to the template brain (:func:`phys_bids.preproc.register.
   register_to_template`, the participant level's settings and seed);
3. the original label values resampled onto the template grid (``genericLabel``
   interpolation), written as ``<name>.nii.gz`` with the transform, and the brain
   Dice with the template mask in ``manifest.json``.

    python training/labels_to_mni.py --data ../shared/data/label-maps

Each head is registered with one thread: the registration's result depends on its
thread count (it repeats bit for bit for a given count), and the shipped models'
manifests record the sha256 of maps made with one thread. Each head is aligned in a
fresh worker process (ITK keeps the thread count of its first use in a process);
``--threads N`` runs N of them at a time, so the maps are the same for any N.

--out defaults to $XDG_CACHE_HOME/phys-bids/label-maps-mni (~/.cache/...), where
training/train_segmentation.py looks for them (and runs this workflow when they are
missing): the shipped segmentation models train 2250 steps on the label maps in
their own space, then 450 on these (``aligned_from_step`` in their configs; the
manifest records both sets of data hashes; docs/segmentation.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from phys_bids.models.evaluation import BRAIN, aligned_label_maps, development_data
from phys_bids.physics.simulate import SEQUENCES
from phys_bids.physics.tissues import CLASSES, PRIORS, label_to_class
from phys_bids.preproc.register import register_to_template, to_template
from phys_bids.preproc.templates import get_template


def synthetic_t1w(labels: np.ndarray) -> np.ndarray:
    """A skull-stripped, noise-free static MPRAGE (TI 0.9 s) of a label map."""
    cls = label_to_class(labels)
    lut = {p: torch.tensor([PRIORS[c][p].mean for c in CLASSES], dtype=torch.float32)
           for p in ("pd", "r1")}
    idx = torch.from_numpy(cls.astype(np.int64))
    model = SEQUENCES["MPRAGE"]
    sig = model.function(lut["pd"][idx], lut["r1"][idx].clamp_min(1e-3), ti=torch.tensor(0.9))
    brain = np.isin(cls, BRAIN)
    return (sig.abs().numpy() * brain).astype(np.float32)


#: ITK threads of each registration, whatever --threads says (see the module docstring)
REGISTRATION_THREADS = 1


def align(path: Path, out_dir: Path, template, *, seed: int) -> dict:
    img = nib.load(str(path))
    labels = np.asanyarray(img.dataobj)
    moving = nib.Nifti1Image(synthetic_t1w(labels), img.affine)
    xfm = out_dir / f"{path.name.split('.nii')[0]}_from-native_to-template_xfm.mat"
    reg = register_to_template(moving, nib.load(str(template.t1w_brain)), xfm,
                               threads=REGISTRATION_THREADS, seed=seed)
    lab_img = nib.Nifti1Image(labels.astype(np.float32), img.affine)
    warped = to_template(lab_img, nib.load(str(template.t1w_brain)), xfm,
                         interpolation="genericLabel")
    data = np.rint(warped.get_fdata()).astype(np.int16)
    out = nib.Nifti1Image(data, warped.affine)
    out.header.set_data_dtype(np.int16)
    dest = out_dir / path.name
    nib.save(out, str(dest))
    brain = np.isin(label_to_class(data), BRAIN)
    tmask = np.asanyarray(nib.load(str(template.mask)).dataobj) > 0
    dice = float(2 * (brain & tmask).sum() / max(1, brain.sum() + tmask.sum()))
    del reg
    return {"source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "output": dest.name, "transform": xfm.name, "brain_dice_with_template": dice,
            "labels_kept": sorted(set(np.unique(labels).tolist())
                                  - set(np.unique(data).tolist())) == []}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(development_data() / "label-maps"))
    ap.add_argument("--out", default=str(aligned_label_maps()),
                    help="output folder (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2,
                    help="heads aligned at a time (worker processes; each registration "
                         "uses one thread, so the maps do not depend on this)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="template cache (default: OUT/.templates)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    heads = sorted(data.glob("*.nii.gz"))
    if not heads:
        print(f"no label maps (*.nii.gz) in {data}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    template = get_template(Path(args.work) if args.work else out / ".templates")
    manifest = {"template": template.name, "template_source": template.source,
                "command": "python training/labels_to_mni.py " + " ".join(argv or sys.argv[1:]),
                "registration_threads": REGISTRATION_THREADS, "heads": {}}
    t0 = time.time()
    workers = max(1, min(args.threads, len(heads)))
    # always in spawned worker processes, even one: ITK fixes its thread count when a
    # process first uses it, so a parent that has registered with more threads (the
    # test suite, a pipeline) would not honour the one thread; a fresh process does.
    # Results are taken in the (sorted) order of the heads, as the manifest lists them.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(align, path, out, template, seed=args.seed) for path in heads]
        for i, (path, fut) in enumerate(zip(heads, futures, strict=True), start=1):
            entry = manifest["heads"][path.name] = fut.result()
            print(f"{i}/{len(heads)} {path.name}: brain Dice with the template "
                  f"{entry['brain_dice_with_template']:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    manifest["seconds"] = round(time.time() - t0, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
