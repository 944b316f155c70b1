"""Rigid (or affine) registration to a template and resampling both ways (antspyx).

NIfTI images are converted to ANTs images in physical space: NIfTI world
coordinates are RAS, ITK's are LPS, so the first two axes of the affine change sign.
Transforms are saved in ITK format (``.mat``) and map points of the fixed (template)
space to the moving (native) space, ITK's convention; the BIDS name is
``from-T1w_to-<template>_mode-image_xfm``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import atomic_write
from ..threads import thread_limit

__all__ = ["nib_to_ants", "ants_to_nib", "RegistrationResult", "register_to_template",
           "to_template", "to_native", "REGISTRATION_DEFAULTS"]

_LPS = np.diag([-1.0, -1.0, 1.0])

#: Chosen for speed on a 1 mm brain with 2 threads: the finest level is 2 mm (shrink 2),
#: which keeps sub-millimetre accuracy (tests/preproc/test_register.py, bench/bench_preproc.py).
REGISTRATION_DEFAULTS = {
    # GC (global correlation): Mattes MI accumulates its joint histogram across threads
    # in a run-dependent order, so multi-threaded runs differ; GC repeats bit for bit
    "aff_metric": "GC", "aff_sampling": 32, "aff_random_sampling_rate": 0.1,
    "aff_iterations": (100, 50, 20), "aff_shrink_factors": (6, 4, 2),
    "aff_smoothing_sigmas": (3, 2, 1),
}


def nib_to_ants(img: nib.Nifti1Image, data: np.ndarray | None = None):
    import ants

    aff = img.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    direction = _LPS @ (aff[:3, :3] / zooms)
    origin = _LPS @ aff[:3, 3]
    arr = np.asanyarray(img.dataobj) if data is None else data
    return ants.from_numpy(np.asarray(arr, dtype=np.float32), origin=tuple(origin.tolist()),
                           spacing=tuple(zooms.tolist()), direction=direction)


def ants_to_nib(aimg, header: nib.Nifti1Header | None = None, dtype=np.float32
                ) -> nib.Nifti1Image:
    direction = np.asarray(aimg.direction)
    spacing = np.asarray(aimg.spacing)
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction * spacing
    aff[:3, 3] = _LPS @ np.asarray(aimg.origin)
    hdr = header.copy() if header is not None else None
    out = nib.Nifti1Image(aimg.numpy().astype(dtype), aff, hdr)
    out.header.set_data_dtype(dtype)
    if hdr is None:
        out.header.set_xyzt_units("mm")
    return out


@dataclass
class RegistrationResult:
    transform: Path
    in_template: nib.Nifti1Image


def register_to_template(moving: nib.Nifti1Image, template: nib.Nifti1Image, transform_out,
                         *, mode: str = "Rigid", threads: int | None = None,
                         seed: int = 0, **params) -> RegistrationResult:
    """Register a brain image to a template brain; save the ITK transform.

    Parameters
    ----------
    moving : native brain (skull-stripped, bias-corrected)
    template : template brain
    transform_out : path of the ``.mat`` transform to write
    mode : "Rigid" or "Affine"
    """
    import ants

    if mode not in ("Rigid", "Affine"):
        raise ValueError(f"mode must be Rigid or Affine, not {mode!r}")
    with thread_limit(threads):
        p = {**REGISTRATION_DEFAULTS, **params}
        fixed, mov = nib_to_ants(template), nib_to_ants(moving)
        # antspyx reads the seed of the metric's random sampling from its config (a
        # ``random_seed=`` keyword is silently ignored), and ANTs takes seed 0 to mean "the
        # clock": seed + 1 makes every --seed, 0 included, repeatable
        ants.config._random_seed = int(seed) + 1
        reg = ants.registration(fixed, mov, type_of_transform=mode, verbose=False, **p)
        out = Path(transform_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: shutil.copyfile(reg["fwdtransforms"][0], tmp))
        warped = ants.apply_transforms(fixed, mov, [str(out)], interpolator="linear")
        return RegistrationResult(out, ants_to_nib(warped))


def to_template(img: nib.Nifti1Image, template: nib.Nifti1Image, transform, *,
                interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample a native image onto the template grid."""
    import ants

    out = ants.apply_transforms(nib_to_ants(template), nib_to_ants(img), [str(transform)],
                                interpolator=interpolation)
    return ants_to_nib(out)


def mask_on_template(mask: nib.Nifti1Image, template: nib.Nifti1Image, transform
                     ) -> np.ndarray:
    """A native brain mask on the template grid (nearest neighbour), as booleans."""
    m = to_template(mask, template, transform, interpolation="nearestNeighbor")
    return np.asanyarray(m.dataobj) > 0


def to_native(img: nib.Nifti1Image, native: nib.Nifti1Image, transform, *,
              interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample a template-space image back onto the native grid, keeping its header
    exactly (``linear`` for probabilities, ``nearestNeighbor`` for labels)."""
    import ants

    out = ants.apply_transforms(nib_to_ants(native), nib_to_ants(img), [str(transform)],
                                interpolator=interpolation, whichtoinvert=[True])
    data = out.numpy()
    dtype = np.uint8 if interpolation in ("nearestNeighbor", "genericLabel") else np.float32
    hdr = native.header.copy()
    hdr.set_data_dtype(dtype)
    res = nib.Nifti1Image(data.astype(dtype), native.affine, hdr)
    return res


def channels_to_native(data: np.ndarray, affine, native: nib.Nifti1Image, transform
                       ) -> np.ndarray:
    """Every channel of a template-grid map ``data`` (X, Y, Z, C) resampled (linear) onto
    ``native``'s grid: (x, y, z, C) float32, negative values (interpolation undershoot)
    set to 0. An all-zero channel stays zero without being resampled."""
    ref = nib.Nifti1Image(np.zeros(native.shape[:3], np.float32), native.affine, native.header)
    out = np.zeros((*native.shape[:3], data.shape[-1]), np.float32)
    for k in range(data.shape[-1]):
        if np.any(data[..., k]):
            out[..., k] = np.asanyarray(to_native(nib.Nifti1Image(data[..., k], affine), ref,
                                                  transform).dataobj)
    return np.clip(out, 0, None)
