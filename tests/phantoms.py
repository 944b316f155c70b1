"""Small synthetic heads with FreeSurfer-style labels (no real data needed)."""

import nibabel as nib
import numpy as np

from phys_bids.synth.phantom import phantom_labels

__all__ = ["phantom_labels", "write_phantom"]


def write_phantom(path, size=48, seed=0):
    img = nib.Nifti1Image(phantom_labels(size, seed).astype(np.float32), np.eye(4))
    nib.save(img, str(path))
    return path
