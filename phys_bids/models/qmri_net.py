"""qMRI maps from one T1-weighted image: the network head, its losses and its metrics.

The estimator is the project's physics-aware U-Net (:class:`PhysicsUNet`, physics
branch at two depths) with four regression outputs instead of class logits, after
the qATLAS / qSynth estimator (qmri-synthetic-data section 2.1) and PhyCHarm's
quantitative-map generator:

* ``PD`` (fraction of water), ``R1`` (1/s) and ``R2*`` (1/s) are kept positive by an
  exponential around a reference value, ``ref * exp(o)``;
* ``MT`` (MTsat, p.u.) is bounded by a scaled sigmoid, ``MT_MAX * sigmoid(o)``.

Training (:func:`qmri_loss`) uses L1 + L2 on the maps and on their spatial gradients,
each map divided by its reference scale so that no map dominates, plus a
*physics-consistency* term: the input image is re-simulated from the predicted maps
with the known acquisition parameters (the project's signal equations) and compared,
both images normalised by their mean inside the brain mask, to the input.

What the maps can and cannot be: MPRAGE and SPGR without an MT pulse carry no MT
contrast, and a normalised magnitude image fixes PD only up to scale; those maps are
estimates from anatomy and the training priors, and the outputs say so.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..physics.simulate import SEQUENCES

__all__ = ["MAPS", "MAP_REF", "MT_MAX", "raw_to_maps", "qmri_loss", "qmri_metrics"]

#: the shipped estimator (``--qmri-model auto``)
DEFAULT_MODEL = "qmri-physics"
#: output channels, in order, with their BIDS suffixes
MAPS = ("PD", "R1", "R2star", "MT")
BIDS_SUFFIX = {"PD": "PDmap", "R1": "R1map", "R2star": "R2starmap", "MT": "MTsat"}
UNITS = {"PD": "fraction of water (1 = pure water)", "R1": "1/s", "R2star": "1/s",
         "MT": "p.u. (MTsat)"}
#: reference scales: exp() is centred on them, and losses are divided by them
MAP_REF = (0.8, 0.8, 20.0)
MT_MAX = 5.0
_SCALE = torch.tensor([*MAP_REF, MT_MAX / 2])


def raw_to_maps(raw: Tensor) -> Tensor:
    """Network output (B, 4, ...) -> maps (B, 4, ...) in SI/BIDS units."""
    ref = torch.tensor(MAP_REF, dtype=raw.dtype, device=raw.device)
    shape = (1, 3) + (1,) * (raw.ndim - 2)
    pos = ref.reshape(shape) * torch.exp(raw[:, :3].clamp(-8.0, 4.0))
    mt = MT_MAX * torch.sigmoid(raw[:, 3:4])
    return torch.cat([pos, mt], 1)


def _grads(x: Tensor) -> list[Tensor]:
    return [x.diff(dim=d) for d in (-3, -2, -1)]


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def resimulate(maps: Tensor, sequence: str, params: dict[str, Tensor]) -> Tensor:
    """Magnitude image (B, ...) of ``sequence`` from maps (B, 4, ...) and (B,) parameters."""
    model = SEQUENCES[sequence]
    n = maps.shape[0]
    lookup = {"pd": maps[:, 0], "r1": maps[:, 1], "r2s": maps[:, 2], "mt": maps[:, 3]}
    kw = {k: v.reshape(n, *([1] * (maps.ndim - 2))).to(maps) for k, v in params.items()}
    return model.function(*(lookup[m] for m in model.maps), **kw).abs()


def qmri_loss(raw: Tensor, target: Tensor, mask: Tensor, image: Tensor, sequence: str,
              params: dict[str, Tensor], *, gradient_weight: float = 1.0,
              consistency_weight: float = 0.1) -> tuple[Tensor, dict]:
    """Map loss + gradient loss + physics consistency.

    Parameters
    ----------
    raw : (N, 4, ...) network output; target : (4, ...) true maps (shared by the N
    realisations of a same-subject batch); mask : (...) brain mask; image : (N, 1, ...)
    the normalised input; sequence, params : the acquisition of each realisation.
    """
    maps = raw_to_maps(raw)
    scale = _SCALE.to(raw).reshape(1, 4, *([1] * (raw.ndim - 2)))
    err = (maps - target[None]) / scale
    m = mask[None, None]
    l1, l2 = _masked_mean(err.abs(), m), _masked_mean(err ** 2, m)
    gm = [m[..., 1:, :, :] & m[..., :-1, :, :], m[..., 1:, :] & m[..., :-1, :],
          m[..., 1:] & m[..., :-1]]
    gl = sum(_masked_mean((gp - gt).abs(), mk) for gp, gt, mk in
             zip(_grads(maps / scale), _grads(target[None] / scale), gm, strict=True)) / 3
    sim = resimulate(maps, sequence, params)  # (N, ...)
    mb = mask[None].to(sim.dtype)
    sim = sim / ((sim * mb).sum((1, 2, 3), keepdim=True) / mb.sum().clamp_min(1.0)).clamp_min(
        1e-6)
    img = image[:, 0]
    img = img / ((img * mb).sum((1, 2, 3), keepdim=True) / mb.sum().clamp_min(1.0)).clamp_min(
        1e-6)
    cons = _masked_mean((sim - img).abs(), mask[None])
    total = l1 + l2 + gradient_weight * gl + consistency_weight * cons
    return total, {"l1": l1.item(), "l2": l2.item(), "grad": gl.item(), "consistency": cons.item()}


def _ssim(x: Tensor, y: Tensor, mask: Tensor, data_range: float) -> float:
    """Global-window SSIM inside a mask (Wang et al. 2004 constants) - a summary, not SSIM
    with a sliding Gaussian window: adequate for comparing models on the same patches."""
    xm, ym = x[mask], y[mask]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = xm.mean(), ym.mean()
    vx, vy = xm.var(unbiased=False), ym.var(unbiased=False)
    cov = ((xm - mx) * (ym - my)).mean()
    return float((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))


def qmri_metrics(maps: Tensor, target: Tensor, mask: Tensor) -> dict:
    """Per map: NRMSE (RMSE / range of the true map in the mask), PSNR (dB), SSIM."""
    out = {}
    for i, name in enumerate(MAPS):
        rows = []
        for b in range(maps.shape[0]):
            p, t = maps[b, i][mask], target[i][mask]
            rng = float(t.max() - t.min()) or 1.0
            rmse = float(((p - t) ** 2).mean().sqrt())
            rows.append((rmse / rng, 20 * math.log10(rng / max(rmse, 1e-12)),
                         _ssim(maps[b, i], target[i], mask, rng)))
        r = torch.tensor(rows).mean(0).tolist()
        out[name] = {"nrmse": r[0], "psnr_db": r[1], "ssim": r[2]}
    return out


@torch.no_grad()
def estimate_maps(model, image, mask, sequence: str, params: dict, *,
                  threads: int | None = None, device: str = "cpu", window: int = 96,
                  overlap: float = 0.25):
    """PD, R1, R2*, MT maps (4, X, Y, Z) of a preprocessed brain on the model grid.

    The input is what the segmentation networks take (skull-stripped, bias-corrected,
    MNI-aligned, 1 mm); the maps are zero outside the brain mask.
    """
    import numpy as np

    from ..threads import thread_limit
    from .inference import sliding_window_logits
    from .segment import network_input

    mask = np.asarray(mask, bool)
    with thread_limit(threads):
        box, x, m, phys = network_input(model, image, mask, sequence, params, device=device)
        raw = sliding_window_logits(model.network, x, phys, window=window, overlap=overlap)
    maps = raw_to_maps(raw)[0].cpu().numpy()
    maps[:, ~m.numpy()] = 0.0
    out = np.zeros((4, *mask.shape), np.float32)
    out[(slice(None), *box)] = maps
    return out


def synthesise(maps, mask, sequence: str, params: dict):
    """The magnitude image of ``sequence`` at ``params`` from maps (4, ...), zero outside
    the mask, scaled so that its mean inside the mask is 1000 (arbitrary units, as a
    scanner's image: the receive gain is not modelled)."""
    import numpy as np

    t = torch.from_numpy(np.asarray(maps, np.float32))[None]
    p = {k: torch.tensor([float(v)]) for k, v in params.items()}
    sim = resimulate(t, sequence, p)[0].numpy()
    mask = np.asarray(mask, bool)
    sim[~mask] = 0.0
    mean = float(sim[mask].mean()) if mask.any() else 0.0
    return (sim * (1000.0 / mean if mean > 0 else 0.0)).astype(np.float32)
