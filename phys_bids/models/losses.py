"""Losses: stochastic (aleatoric) cross-entropy, soft Dice, same-subject stratification."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["stochastic_cross_entropy", "soft_dice_loss", "stratification_loss"]


def stochastic_cross_entropy(logits: Tensor, log_sigma: Tensor | None, target: Tensor, *,
                             samples: int = 10, generator: torch.Generator | None = None
                             ) -> Tensor:
    r"""Cross-entropy with Gaussian logit noise (Kendall & Gal 2017; Borges 2021 eqs. 3-4).

    .. math::

        \hat x_{t} = f + \sigma\,\epsilon_t,\quad
        L = -\frac1{|V|}\sum_i \sum_c y_{ic}\log\frac1T\sum_t \mathrm{softmax}(\hat x_{it})_c

    ``target`` holds soft class fractions (B, C, ...). With ``log_sigma=None`` this is
    the ordinary soft cross-entropy.
    """
    if log_sigma is None:
        return -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    sigma = torch.exp(log_sigma.clamp(-10, 5))
    eps = torch.randn((samples, *logits.shape), generator=generator, dtype=logits.dtype,
                      device=logits.device)
    logp = torch.log_softmax(logits[None] + sigma[None] * eps, dim=2)  # (T, B, C, ...)
    logp_mean = torch.logsumexp(logp, dim=0) - math.log(samples)
    return -(target * logp_mean).sum(1).mean()


def soft_dice_loss(probs: Tensor, target: Tensor, *, classes: tuple[int, ...] = (1, 2, 3),
                   eps: float = 1e-5) -> Tensor:
    """1 - mean soft Dice over ``classes`` (computed over the whole batch)."""
    dims = (0, *range(2, probs.ndim))
    p = probs[:, list(classes)]
    t = target[:, list(classes)]
    inter = (p * t).sum(dims)
    den = p.sum(dims) + t.sum(dims)
    return 1.0 - ((2 * inter + eps) / (den + eps)).mean()


def stratification_loss(features: Tensor) -> Tensor:
    """L2 between the final feature maps of same-subject realisations (Borges 2021, sec. 2.2).

    ``features`` (N, C, ...) holds N realisations of the same anatomy; the loss is the
    mean over the N(N-1)/2 pairs of the mean squared difference of their feature maps
    (exactly zero when all realisations agree; equal to twice the across-realisation
    variance).
    """
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(())
    total = features.new_zeros(())
    for i in range(n - 1):
        total = total + ((features[i + 1:] - features[i:i + 1]) ** 2).mean((1, 2, 3, 4)).sum()
    return total / (n * (n - 1) / 2)
