"""A procedural head with FreeSurfer-style labels, for demos and tests without real data.

Concentric, gently irregular shells (scalp, skull, CSF, cortex, white matter) with
deep grey matter and ventricles; a seed changes the shape, so several "subjects"
differ in their tissue volumes.

>>> lab = phantom_labels(32, seed=0)
>>> lab.shape, sorted(set(lab.ravel().tolist()))
((32, 32, 32), [0, 2, 3, 4, 10, 24, 511, 515])
"""

from __future__ import annotations

import numpy as np

__all__ = ["phantom_labels"]


def phantom_labels(size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    x, y, z = np.meshgrid(*[np.arange(size) - c] * 3, indexing="ij")
    wobble = 1 + 0.06 * np.sin(3 * np.arctan2(y, x) + rng.uniform(0, 6)) * np.cos(
        2 * np.arctan2(z, np.hypot(x, y)) + rng.uniform(0, 6))
    wm_scale = rng.uniform(0.58, 0.66)
    r = np.sqrt(x**2 + (1.1 * y) ** 2 + z**2) / (size / 2) * wobble
    lab = np.zeros((size,) * 3, np.int32)
    lab[r < 0.98] = 511
    lab[r < 0.90] = 515
    lab[r < 0.82] = 24
    lab[r < 0.76] = 3
    lab[r < wm_scale] = 2
    lab[np.sqrt((x - 0.08 * size) ** 2 + y**2 + z**2) < size * 0.08] = 10
    lab[np.sqrt((x + 0.1 * size) ** 2 + y**2 + z**2) < size * rng.uniform(0.05, 0.08)] = 4
    return lab
