"""Segment a preprocessed brain image with a shipped model.

The input is what the networks were trained on: a skull-stripped, bias-corrected
image on the model grid (1 mm, MNI-aligned), zero outside the brain, divided by its
mean inside the brain mask (:func:`phys_bids.intensity.normalise_image`). The
volume is cropped to the bounding box of the mask (plus a margin) before the
sliding-window pass, which is where the time goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..intensity import normalise_image
from ..threads import thread_limit
from .inference import sliding_window_logits
from .registry import LoadedModel

__all__ = ["SegmentationResult", "segment_brain", "bounding_box", "network_input",
           "volume_summary"]

#: Sliding-window settings of the application (docs/segmentation.md: window 96,
#: overlap 0.25 - measured in the consistency benchmark).
WINDOW = 96
OVERLAP = 0.25


@dataclass
class SegmentationResult:
    probabilities: np.ndarray  # (4, X, Y, Z): background, GM, WM, CSF, summing to 1
    params_encoded: list[float] | None
    sd: np.ndarray | None = None  # (4, X, Y, Z) per-voxel SD over Monte-Carlo samples
    volumes: np.ndarray | None = None  # (samples, 3) GM, WM, CSF in mL (model grid)


def bounding_box(mask: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``margin`` voxels."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("the brain mask is empty")
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


class _AleatoricDraw(torch.nn.Module):
    """A network whose logits carry one draw of its aleatoric noise (logits + sigma * eps,
    acquisition-invariant-segmentation-uncertainty eq. 3) per call."""

    def __init__(self, network, generator: torch.Generator):
        super().__init__()
        self.network = network
        self.config = network.config
        self.generator = generator

    def forward(self, x, physics):
        logits, log_sigma, _ = self.network(x, physics)
        if log_sigma is not None:
            eps = torch.randn(logits.shape, generator=self.generator, dtype=logits.dtype)
            logits = logits + log_sigma.exp() * eps.to(logits.device)
        return logits, None, None


def network_input(model: LoadedModel, image: np.ndarray, mask: np.ndarray, sequence: str,
                  params: dict, *, device: str = "cpu"):
    """What the networks take: the image cropped to the mask's box, zero outside the mask,
    divided by its brain mean, and the encoded acquisition (None for a baseline model).

    Returns ``(box, x (1, 1, ...), mask in the box, physics (1, D) or None)``.
    """
    mask = np.asarray(mask, bool)
    box = bounding_box(mask)
    x = torch.from_numpy(np.ascontiguousarray(image[box], dtype=np.float32))
    m = torch.from_numpy(np.ascontiguousarray(mask[box]))
    x = normalise_image(x * m, m)
    if model.network.log_input:
        # a log-contrast network takes the brain as the positive voxels: make it the mask
        # (an interpolated or bias-corrected image can hold a zero or negative inside)
        x = torch.where(m, x.clamp_min(1e-3), torch.zeros_like(x))
    x = x[None, None].to(device)
    phys = None
    if model.physics:
        phys = model.encoder.encode(sequence, {k: [float(v)] for k, v in params.items()})
        phys = phys.to(device)
    return box, x, m, phys


def _place(probs: np.ndarray, box, shape, background: float) -> np.ndarray:
    out = np.zeros((probs.shape[0], *shape), dtype=np.float32)
    out[0] = background
    out[(slice(None), *box)] = probs
    return out


@torch.no_grad()
def segment_brain(model: LoadedModel, image: np.ndarray, mask: np.ndarray, sequence: str,
                  params: dict, *, threads: int | None = None, device: str = "cpu",
                  window: int = WINDOW, overlap: float = OVERLAP,
                  flip_axes: tuple[int, ...] = (), mc_samples: int = 0,
                  seed: int = 0) -> SegmentationResult:
    """Tissue probabilities of a brain image on the model grid.

    Parameters
    ----------
    model : a loaded model (:func:`phys_bids.models.registry.load_model`)
    image, mask : 3D arrays on the model grid (mask: brain voxels)
    sequence, params : the acquisition the physics branch is told (SI units);
        ignored by a model without physics branch
    flip_axes : tuple of int
        Flip test-time augmentation (:func:`~phys_bids.models.inference.sliding_window_logits`):
        ``(0,)`` averages each window with its left-right mirror, at twice the time.
    mc_samples : int
        0: one deterministic pass. N > 0: N Monte-Carlo samples, each with dropout on
        and one draw of the aleatoric logit noise; the probabilities are their mean,
        and the result carries the per-sample tissue volumes (mL, on the model grid
        of 1 mm voxels) and the per-voxel standard deviation of the probabilities.
    seed : int
        Seeds the Monte-Carlo draws (dropout masks and logit noise).
    """
    with thread_limit(threads):
        return _segment_brain(model, image, mask, sequence, params, device=device,
                              window=window, overlap=overlap, flip_axes=flip_axes,
                              mc_samples=mc_samples, seed=seed)


def _segment_brain(model, image, mask, sequence, params, *, device, window, overlap,
                   flip_axes, mc_samples, seed) -> SegmentationResult:
    box, x, m, phys = network_input(model, image, mask, sequence, params, device=device)
    inside = m.numpy()
    encoded = None if phys is None else phys[0].cpu().tolist()

    def probabilities(network) -> np.ndarray:
        """One sliding-window pass; no tissue outside the brain."""
        logits = sliding_window_logits(network, x, phys, window=window, overlap=overlap,
                                       flip_axes=flip_axes)
        p = torch.softmax(logits[0].double(), 0).cpu().numpy()
        p[1:, ~inside] = 0.0
        p[0, ~inside] = 1.0
        return p

    if mc_samples <= 0:
        return SegmentationResult(_place(probabilities(model.network), box, mask.shape, 1.0),
                                  encoded)
    from .unet import enable_mc_dropout

    draw = _AleatoricDraw(model.network, torch.Generator().manual_seed(seed))
    total = sq = 0.0
    volumes = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enable_mc_dropout(model.network)
        try:
            for _ in range(mc_samples):
                p = probabilities(draw)
                volumes.append(p[1:].reshape(p.shape[0] - 1, -1).sum(1) / 1000.0)
                total = total + p
                sq = sq + p * p
        finally:
            model.network.eval()
    mean = total / mc_samples
    sd = np.sqrt(np.clip(sq / mc_samples - mean * mean, 0, None))
    return SegmentationResult(_place(mean, box, mask.shape, 1.0), encoded,
                              sd=_place(sd, box, mask.shape, 0.0), volumes=np.asarray(volumes))


def volume_summary(samples) -> dict:
    """Summary of per-sample volumes (mL): mean, median, quartiles, IQR, 95 % interval."""
    v = np.asarray(samples, dtype=np.float64)
    q = np.percentile(v, [2.5, 25, 50, 75, 97.5])
    return {"mean": float(v.mean()), "median": float(q[2]), "q1": float(q[1]),
            "q3": float(q[3]), "iqr": float(q[3] - q[1]), "p2_5": float(q[0]),
            "p97_5": float(q[4]), "n": int(v.size)}
