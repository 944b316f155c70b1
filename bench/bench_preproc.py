#!/usr/bin/env python
"""Wall time and peak memory of each preprocessing step on a 1 mm whole head.

Each step runs in its own process (so its peak RSS is its own) on Colin27 with
2 threads. N4 and rigid registration are also run with antspyx's defaults, on the
same inputs, to show the accuracy the tuned settings keep:

* N4: a known smooth multiplicative field is applied to the (already corrected)
  brain; accuracy = correlation of the estimated and true log-fields in the brain.
* rigid: a known rigid motion (10, -7, 5 deg; 6, -5, 4 mm) is applied to the brain;
  accuracy = max error at brain-surface points.

    python bench/bench_preproc.py --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from phys_bids.models.evaluation import development_data

DATA = development_data()

STEP = r'''
import json, math, os, resource, sys, time
import numpy as np, nibabel as nib, torch
step, work, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads); os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
import ants
from phys_bids.preproc import skull_strip, n4_correct
from phys_bids.preproc.register import register_to_template, nib_to_ants, ants_to_nib
from phys_bids.preproc.midspace import ants_matrix
out = {"step": step}
head = nib.load(os.path.join(work, "head.nii.gz"))
if step == "skull_strip":
    t = time.perf_counter(); res = skull_strip(head, threads=threads)
    out["wall_s"] = time.perf_counter() - t; out["volume_ml"] = res.volume_ml
    nib.save(res.brain, os.path.join(work, "brain.nii.gz")); nib.save(res.mask, os.path.join(work, "mask.nii.gz"))
elif step.startswith("n4"):
    brain = nib.load(os.path.join(work, "brain.nii.gz")); mask = nib.load(os.path.join(work, "mask.nii.gz"))
    m = np.asarray(mask.dataobj).astype(bool); b = np.asarray(brain.dataobj)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in b.shape], indexing="ij")
    logf = (0.3 * x - 0.2 * y * z + 0.15 * z).astype(np.float32)
    img = nib.Nifti1Image(b * np.exp(logf), brain.affine)
    t = time.perf_counter()
    if step == "n4":
        res = n4_correct(img, mask, threads=threads); est = np.asarray(res.field.dataobj)
    else:
        a = nib_to_ants(img); am = nib_to_ants(mask, m.astype(np.float32))
        est = ants.n4_bias_field_correction(a, mask=am, return_bias_field=True).numpy()
    out["wall_s"] = time.perf_counter() - t
    out["field_log_correlation"] = float(np.corrcoef(np.log(est[m]), logf[m])[0, 1])
else:
    brain = nib.load(os.path.join(work, "brain.nii.gz")); a = nib_to_ants(brain)
    tx = ants.create_ants_transform(transform_type="Euler3DTransform", dimension=3,
        center=list(ants.get_center_of_mass(a)), parameters=[math.radians(10), math.radians(-7), math.radians(5), 6.0, -5.0, 4.0])
    moved = ants.apply_ants_transform_to_image(tx, a, a, interpolation="linear")
    t = time.perf_counter()
    if step == "rigid":
        res = register_to_template(brain, ants_to_nib(moved), os.path.join(work, "x.mat"), threads=threads)
        found = ants.read_transform(str(res.transform))
    else:
        reg = ants.registration(moved, a, type_of_transform="Rigid")
        found = ants.read_transform(reg["fwdtransforms"][0])
    out["wall_s"] = time.perf_counter() - t
    m = np.asarray(brain.dataobj) > 0
    from scipy import ndimage
    surf = np.argwhere(m & ~ndimage.binary_erosion(m))[::50]
    pts = (brain.affine @ np.c_[surf, np.ones(len(surf))].T)[:3].T * np.array([-1, -1, 1])
    e = [np.linalg.norm(np.array(ants.apply_ants_transform_to_point(found, tuple(p))) - np.array(ants.apply_ants_transform_to_point(tx, tuple(p)))) for p in pts]
    out["max_surface_error_mm"] = float(max(e)); out["median_surface_error_mm"] = float(np.median(e))
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head", default=str(DATA / "heads" / "colin27_T1w.nii.gz"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", default="skull_strip,n4,n4_antspy_defaults,rigid,"
                    "rigid_antspy_defaults", help="comma-separated subset (skull_strip first)")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="phys-bids-bench-")
    import shutil

    shutil.copy(args.head, os.path.join(work, "head.nii.gz"))
    rows = []
    for step in args.steps.split(","):
        proc = subprocess.run([sys.executable, "-c", STEP, step, work, str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{step} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "head": args.head,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
