"""Checks of input images: every problem becomes one actionable line.

>>> import numpy as np, nibabel as nib, tempfile, os
>>> d = tempfile.mkdtemp(); f = os.path.join(d, "sub-01_T1w.nii.gz")
>>> nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), f)
>>> check_anatomical(f)
Traceback (most recent call last):
...
phys_bids.bids.checks.InputImageError: sub-01_T1w.nii.gz: the image is all zeros; ...
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["InputImageError", "check_anatomical"]


class InputImageError(ValueError):
    """An input image cannot be processed (one actionable line)."""


def check_anatomical(path, *, min_size: int = 16, max_voxel_mm: float = 4.0) -> nib.Nifti1Image:
    """Load a T1-weighted image and verify it is a usable 3D volume; return it.

    Raises :class:`InputImageError` for: unreadable or corrupted files, 2D or 4D+
    data, tiny matrices, voxels larger than ``max_voxel_mm``, a singular or
    non-finite affine, NaN/Inf voxels, an all-zero or constant image.
    """
    path = Path(path)
    name = path.name
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputImageError(f"{name}: cannot read the file ({err}); re-export or replace it"
                              ) from None
    except Exception as err:  # nibabel raises several kinds for damaged headers
        raise InputImageError(f"{name}: not a readable NIfTI image ({type(err).__name__}: "
                              f"{err}); re-export or replace it") from None
    shape = data.shape
    if len(shape) == 4 and shape[3] == 1:
        data = data[..., 0]
        img = nib.Nifti1Image(data, img.affine, img.header)
        shape = data.shape
    if len(shape) != 3:
        raise InputImageError(f"{name}: a T1-weighted image must be 3D, this one has shape "
                              f"{shape}; split or select the volume to process")
    if min(shape) < min_size:
        raise InputImageError(f"{name}: shape {shape} is too small for a brain image (2D or "
                              f"a single slab?); use a 3D acquisition")
    aff = img.affine
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise InputImageError(f"{name}: the affine (orientation) matrix is singular or not "
                              "finite; fix the header (e.g. re-convert with dcm2niix)")
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    if zooms.max() > max_voxel_mm:
        raise InputImageError(f"{name}: voxels of {np.round(zooms, 2).tolist()} mm are too "
                              f"coarse (limit {max_voxel_mm} mm)")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = int((~np.isfinite(data)).sum())
        raise InputImageError(f"{name}: {bad} voxels are NaN or Inf; fix or re-export the image")
    if not np.any(data):
        raise InputImageError(f"{name}: the image is all zeros; check the conversion")
    if float(np.max(data)) == float(np.min(data)):
        raise InputImageError(f"{name}: the image is constant; check the conversion")
    return img
