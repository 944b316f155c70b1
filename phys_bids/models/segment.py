"""Segment a preprocessed brain image with a shipped model.

The input is what the networks were trained on: a skull-stripped, bias-corrected
image on the model grid (1 mm, MNI-aligned), zero outside the brain, divided by its
mean inside the brain mask (:func:`phys_bids.synth.generator.normalise_image`). The
volume is cropped to the bounding box of the mask (plus a margin) before the
sliding-window pass, which is where the time goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..synth.generator import normalise_image
from .inference import sliding_window_logits
from .registry import LoadedModel

__all__ = ["SegmentationResult", "segment_brain", "bounding_box"]

#: Sliding-window settings of the application (docs/segmentation.md: window 96,
#: overlap 0.25 - measured in the consistency benchmark).
WINDOW = 96
OVERLAP = 0.25


@dataclass
class SegmentationResult:
    probabilities: np.ndarray  # (4, X, Y, Z): background, GM, WM, CSF, summing to 1
    params_encoded: list[float] | None


def bounding_box(mask: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``margin`` voxels."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("the brain mask is empty")
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@torch.no_grad()
def segment_brain(model: LoadedModel, image: np.ndarray, mask: np.ndarray, sequence: str,
                  params: dict, *, threads: int | None = None, device: str = "cpu",
                  window: int = WINDOW, overlap: float = OVERLAP, flip_tta: bool = False
                  ) -> SegmentationResult:
    """Tissue probabilities of a brain image on the model grid.

    Parameters
    ----------
    model : a loaded model (:func:`phys_bids.models.registry.load_model`)
    image, mask : 3D arrays on the model grid (mask: brain voxels)
    sequence, params : the acquisition the physics branch is told (SI units);
        ignored by a model without physics branch
    """
    if threads:
        torch.set_num_threads(threads)
    mask = mask.astype(bool)
    box = bounding_box(mask)
    x = torch.from_numpy(np.ascontiguousarray(image[box], dtype=np.float32))
    m = torch.from_numpy(np.ascontiguousarray(mask[box]))
    x = normalise_image(x * m, m)
    phys = None
    if model.physics:
        phys = model.encoder.encode(sequence, {k: [float(v)] for k, v in params.items()})
        phys = phys.to(device)
    logits = sliding_window_logits(model.network, x[None, None].to(device), phys, window=window,
                                   overlap=overlap, flip_tta=flip_tta)
    probs = torch.softmax(logits[0].double(), 0).cpu().numpy()
    out = np.zeros((probs.shape[0], *mask.shape), dtype=np.float32)
    out[0] = 1.0
    out[(slice(None), *box)] = probs
    # outside the brain mask there is no tissue
    out[1:, ~mask] = 0.0
    out[0, ~mask] = 1.0
    return SegmentationResult(out, None if phys is None else phys[0].cpu().tolist())
