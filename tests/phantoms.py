"""Small synthetic heads with FreeSurfer-style labels (no real data needed)."""

import nibabel as nib
import numpy as np


def phantom_labels(size: int = 48, seed: int = 0) -> np.ndarray:
    """Concentric head: WM (2) core, cortex (3), deep GM (10), ventricle (4), CSF (24),
    skull (515), scalp (511); slightly irregular boundaries from a seeded perturbation."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    x, y, z = np.meshgrid(*[np.arange(size) - c] * 3, indexing="ij")
    wobble = 1 + 0.06 * np.sin(3 * np.arctan2(y, x) + rng.uniform(0, 6)) * np.cos(
        2 * np.arctan2(z, np.hypot(x, y)) + rng.uniform(0, 6))
    r = np.sqrt(x**2 + (1.1 * y) ** 2 + z**2) / (size / 2) * wobble
    lab = np.zeros((size,) * 3, np.int32)
    lab[r < 0.98] = 511
    lab[r < 0.90] = 515
    lab[r < 0.82] = 24
    lab[r < 0.76] = 3
    lab[r < 0.62] = 2
    lab[np.sqrt((x - 4) ** 2 + y**2 + z**2) < size * 0.08] = 10
    lab[np.sqrt((x + 5) ** 2 + y**2 + z**2) < size * 0.06] = 4
    return lab


def write_phantom(path, size=48, seed=0):
    img = nib.Nifti1Image(phantom_labels(size, seed).astype(np.float32), np.eye(4))
    nib.save(img, str(path))
    return path
