"""Acquisition imperfections kept out of the signal equations: noise and fields.

Each function takes an explicit ``torch.Generator`` so that simulations are
repeatable bit for bit for a seed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["rician_noise", "noise_sigma", "bias_field", "smooth_random_field"]


def noise_sigma(signal: Tensor, snr, *, reference: Tensor | float | None = None,
                mask: Tensor | None = None) -> Tensor:
    """Noise standard deviation that gives a requested SNR.

    ``sigma = reference / snr``. The reference signal defaults to the mean magnitude
    of ``signal`` inside ``mask`` (or over voxels with non-zero signal), computed per
    leading batch item when ``signal`` has a batch dimension together with a
    per-item ``snr`` of shape ``(B,)``.

    Parameters
    ----------
    signal : tensor, shape (..., X, Y, Z) or (B, ...)
        Noise-free signal.
    snr : float or tensor of shape (B,)
        Target signal-to-noise ratio (reference signal / sigma).
    reference : float or tensor, optional
        Reference signal level (overrides the mean).
    mask : tensor of bool, optional
        Voxels defining the reference level (broadcast to ``signal``).
    """
    snr = torch.as_tensor(snr, dtype=signal.dtype, device=signal.device)
    if reference is None:
        mag = signal.abs()
        m = (mag > 0) if mask is None else mask.expand_as(mag)
        if snr.ndim == 1 and signal.ndim >= 2:
            dims = tuple(range(1, signal.ndim))
            reference = (mag * m).sum(dims) / m.sum(dims).clamp_min(1)
        else:
            reference = mag[m].mean()
    reference = torch.as_tensor(reference, dtype=signal.dtype, device=signal.device)
    sigma = reference / snr
    if sigma.ndim == 1 and signal.ndim >= 2:
        sigma = sigma.reshape(-1, *([1] * (signal.ndim - 1)))
    return sigma


def rician_noise(signal: Tensor, sigma, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Magnitude image with Rician noise (Gudbjartsson & Patz, MRM 1995).

    .. math:: S_{noisy} = \sqrt{(S + n_1)^2 + n_2^2},\quad n_{1,2}\sim\mathcal N(0,\sigma^2)

    (eq. 7 of Chalcroft et al.). ``sigma`` broadcasts against ``signal``; use
    :func:`noise_sigma` to obtain it from an SNR.
    """
    sigma = torch.as_tensor(sigma, dtype=signal.dtype, device=signal.device)
    n1 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    n2 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    return torch.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)


def smooth_random_field(shape: tuple[int, ...], *, control_points: int = 4, batch: int = 1,
                        generator: torch.Generator | None = None, dtype=torch.float32,
                        device=None) -> Tensor:
    """A smooth zero-mean random field: N(0,1) control points, (tri)linearly interpolated.

    Returns a tensor of shape ``(batch, *shape)`` with unit standard deviation at the
    control points. Used for bias fields, B1 maps and smooth within-tissue variation.
    """
    nd = len(shape)
    coarse = torch.randn((batch, 1, *([control_points] * nd)), generator=generator,
                         dtype=dtype, device=device)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
    field = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return field[:, 0]


def bias_field(shape: tuple[int, ...], *, strength: float | Tensor = 0.3,
               control_points: int = 4, batch: int = 1,
               generator: torch.Generator | None = None, dtype=torch.float32,
               device=None) -> Tensor:
    """Smooth multiplicative bias (receive) field ``exp(strength * g)``.

    ``g`` is :func:`smooth_random_field`; ``strength`` is the standard deviation of
    the log-field at the control points (0.3 gives roughly +-30 % inhomogeneity).
    Multiply the signal by the result; shape ``(batch, *shape)``.
    """
    g = smooth_random_field(shape, control_points=control_points, batch=batch,
                            generator=generator, dtype=dtype, device=device)
    strength = torch.as_tensor(strength, dtype=dtype, device=device)
    if strength.ndim == 1:
        strength = strength.reshape(-1, *([1] * len(shape)))
    return torch.exp(strength * g)
