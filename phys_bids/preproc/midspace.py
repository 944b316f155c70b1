"""Unbiased mid-space registration of two or more scans of one subject.

Every scan ``i`` is rigidly registered to the first, giving ``T_i`` (4x4, ITK/LPS
physical space, mapping points of scan 0 to scan i; ``T_0 = I``). For two scans the
registration runs in both directions and the two estimates are averaged in the log
domain, which makes the result symmetric in its inputs by construction. The mid space is
the log-Euclidean mean ``M = expm(mean_i logm(T_i))`` and the transform from mid
space to scan ``i`` is ``T_i M^-1``. For two scans this is the halfway transform
``T^(1/2)`` (matrix square root) for one and ``T^(-1/2)`` for the other, so swapping
the inputs gives the same space. Each scan is interpolated once, straight from its
original grid. The mid-space grid is the log-Euclidean mean of the scans' grids
carried into mid space (symmetric in the inputs); its extent covers the largest scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.linalg import expm, logm

from .register import ants_to_nib, nib_to_ants, register_to_template

__all__ = ["MidSpaceResult", "midspace", "ants_matrix", "matrix_to_ants"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ants_matrix(tx) -> np.ndarray:
    """4x4 homogeneous matrix (LPS) of any linear ANTs transform (rigid, Euler, affine),
    read off how it maps the origin and the three unit vectors."""
    import ants

    o = np.array(ants.apply_ants_transform_to_point(tx, (0.0, 0.0, 0.0)))
    h = np.eye(4)
    for k in range(3):
        e = [0.0, 0.0, 0.0]
        e[k] = 1.0
        h[:3, k] = np.array(ants.apply_ants_transform_to_point(tx, tuple(e))) - o
    h[:3, 3] = o
    return h


def matrix_to_ants(h: np.ndarray):
    import ants

    return ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                      matrix=h[:3, :3], translation=h[:3, 3],
                                      center=(0.0, 0.0, 0.0))


def _real(m: np.ndarray) -> np.ndarray:
    return np.real_if_close(m, tol=1e6).real


@dataclass
class MidSpaceResult:
    images: list[nib.Nifti1Image]       # each scan resampled once into mid space
    transforms: list[Path]              # ITK transforms mid -> scan i
    to_first: list[np.ndarray]          # estimated T_i (scan 0 -> scan i), LPS
    affine: np.ndarray                  # mid-space grid (RAS)


def midspace(images: list[nib.Nifti1Image], out_dir, *, threads: int | None = None,
             seed: int = 0, names: list[str] | None = None) -> MidSpaceResult:
    """Register scans of one subject into their unbiased mid space."""
    import ants

    if len(images) < 2:
        raise ValueError("mid-space registration needs at least two images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = names or [f"scan{i}" for i in range(len(images))]
    def reg(fixed: int, moving: int) -> np.ndarray:
        # the transform maps points of scan `fixed` to points of scan `moving`
        res = register_to_template(images[moving], images[fixed], out / f".reg-{moving}.mat",
                                   threads=threads, seed=seed)
        m = ants_matrix(ants.read_transform(str(res.transform)))
        os.remove(res.transform)
        return m

    mats = [np.eye(4)]
    if len(images) == 2:
        # symmetric estimate: both directions, averaged in the log domain, so that
        # swapping the inputs gives exactly the inverse transform
        fwd, bwd = reg(0, 1), reg(1, 0)
        mats.append(expm(0.5 * (_real(logm(fwd)) - _real(logm(bwd)))))
    else:
        mats += [reg(0, i) for i in range(1, len(images))]
    mean = expm(np.mean([_real(logm(m)) for m in mats], axis=0))
    mean_inv = np.linalg.inv(mean)
    to_scan = [m @ mean_inv for m in mats]  # mid -> scan i (LPS)
    # mid grid: each scan's grid carried into mid space, averaged in the log domain
    grids = []
    for img, t in zip(images, to_scan, strict=True):
        aff_lps = _LPS @ img.affine  # voxel -> LPS world of scan i
        grids.append(np.linalg.inv(t) @ aff_lps)  # voxel -> LPS world of mid space
    grid_lps = expm(np.mean([_real(logm(g)) for g in grids], axis=0))
    affine = _LPS @ grid_lps
    shape = tuple(int(s) for s in np.max([img.shape[:3] for img in images], axis=0))
    ref = nib_to_ants(nib.Nifti1Image(np.zeros(shape, np.float32), affine))
    outs, paths = [], []
    for img, t, name in zip(images, to_scan, names, strict=True):
        tx = matrix_to_ants(t)
        path = out / f"{name}_from-mid_to-native_mode-image_xfm.mat"
        ants.write_transform(tx, str(path))
        warped = ants.apply_ants_transform_to_image(tx, nib_to_ants(img), ref,
                                                    interpolation="linear")
        outs.append(ants_to_nib(warped))
        paths.append(path)
    return MidSpaceResult(outs, paths, mats, affine)
