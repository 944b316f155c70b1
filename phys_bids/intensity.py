"""How a scan's intensities are scaled before a network sees them: decided here, once.

Training (:mod:`phys_bids.synth.generator`) and inference (:mod:`phys_bids.models.segment`)
both import :func:`normalise_image`, so the two cannot drift apart.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["normalise_image"]


def normalise_image(image: Tensor, mask: Tensor) -> Tensor:
    """Divide by the mean intensity inside the brain mask (the model's input scaling)."""
    m = mask.to(image.dtype)
    dims = tuple(range(image.ndim - mask.ndim, image.ndim))
    mean = (image * m).sum(dims, keepdim=True) / m.sum().clamp_min(1.0)
    return image / mean.clamp_min(1e-12)
