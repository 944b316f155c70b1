"""Losses: stochastic (aleatoric) cross-entropy, soft Dice, same-subject stratification,
and the Siamese acquisition-invariance loss of mr-acquisition-invariant-representation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["stochastic_cross_entropy", "soft_dice_loss", "stratification_loss",
           "contrastive_loss"]


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


def contrastive_loss(features: Tensor, target: Tensor, *, voxels: int = 128,
                     margin: float = 1.0, purity: float = 0.9,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""Siamese loss on voxel features (Kouw et al., MRAI-net, section 2.1).

    ``features`` (N, C, ...) are the final feature maps of N realisations (different
    acquisitions) of one anatomy, ``target`` (K, ...) its class fractions. Up to
    ``voxels`` voxels whose largest brain-tissue fraction (classes 1-3) exceeds
    ``purity`` are drawn; their feature vectors in every realisation form the set.
    Pairs of the same tissue - within or across realisations, i.e. across
    acquisitions - are similar (:math:`y = 1`), pairs of different tissues dissimilar:

    .. math:: L = \operatorname{mean}_{pairs}\; y\,d^2 + (1-y)\max(0, m - d),\qquad
              d = \tfrac1C\lVert f(a) - f(b)\rVert_1

    (the L1 distance divided by the channel count, so that the margin does not depend
    on the width). Zero when every tissue maps to one point and different tissues lie
    at least ``m`` apart; 0 when no voxel is pure enough.
    """
    n, c = features.shape[:2]
    frac, cls = target[1:4].max(0)
    pure = torch.nonzero((frac > purity).reshape(-1)).squeeze(1)
    if pure.numel() < 2:
        return features.new_zeros(())
    pick = pure[torch.randperm(pure.numel(), generator=generator)[:voxels].to(pure.device)]
    f = features.reshape(n, c, -1)[:, :, pick]  # (N, C, V)
    f = f.permute(0, 2, 1).reshape(-1, c)  # (N*V, C)
    lab = (cls.reshape(-1)[pick] + 1).repeat(n)
    d = torch.cdist(f, f, p=1) / c
    same = lab[:, None] == lab[None, :]
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
    d, same = d[iu[0], iu[1]], same[iu[0], iu[1]]
    return torch.where(same, d ** 2, torch.relu(margin - d)).mean()
