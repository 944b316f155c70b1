"""Physics-tied Bayesian tissue segmentation with partial volume and a spatial prior.

A Gaussian mixture over the brain voxels whose class means are tied to the sequence's
signal equation at the scan's own acquisition parameters (the FAST/SPM family of
models, with the means predicted by MR physics instead of left free):

* **Pure classes** CSF, cortical GM, deep GM and WM. Their signals are
  ``g * S_k``: one unknown scanner gain ``g`` times ``S_k``, the signal equation
  (:func:`phys_bids.physics.simulate`) at the class's prior PD, R1, R2* and MT
  (:func:`phys_bids.physics.tissues.priors_at`, at the sidecar's field strength). The
  ``S_k`` are then updated by maximum a posteriori under a Gaussian prior whose width
  is the priors' between-subject SD carried through the signal equation (plus a
  model-error floor): the data move them where they identify them, the physics holds
  them where they do not.
* **Mixed classes** CSF/GM and GM/WM at fractions 1/4, 1/2, 3/4, whose mean is the
  linear mix of the pure signals (partial volume mixes signals, not parameters): the
  tissue fractions come from unmixing in signal space, which does not depend on the
  contrast wherever the contrast is not zero.
* **A spatial prior**: the template's GM/WM/CSF probability maps brought into the scan
  (class prior ``w_c * prod_t P_t ** f_ct``), plus a mean-field Markov random field
  that favours the tissue composition of each voxel's six neighbours. Where the
  acquisition makes two tissues (nearly) equal, the prior decides.

The scan must be bias-corrected (the pipeline runs N4 first) and skull-stripped.
:func:`bayes_segment` returns per-voxel tissue fractions (GM, WM, CSF), volumes with
a standard deviation from the posterior (voxel-wise labelling and the class-signal
uncertainty), and the fitted model's contrast-to-noise per tissue pair
(:attr:`BayesResult.cnr`): how much this acquisition separates the tissues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..physics.simulate import simulate
from ..physics.tissues import priors_at

__all__ = ["BayesResult", "bayes_segment", "tissue_signals", "TISSUES", "PURE"]

#: output tissues, in the order of :attr:`BayesResult.fractions`
TISSUES = ("GM", "WM", "CSF")
#: pure classes: (name, prior class in :data:`phys_bids.physics.tissues.PRIORS`, tissue)
PURE = (("csf", "csf", "CSF"), ("gm", "gm_cortex", "GM"), ("gm_deep", "gm_deep", "GM"),
        ("wm", "wm", "WM"))
#: partial-volume pairs (indices into :data:`PURE`): CSF/cortical GM and cortical GM/WM
MIXES = ((0, 1), (1, 3))
#: relative error of the signal equation and the priors, added to the propagated SD
MODEL_ERROR = 0.05


@dataclass
class BayesResult:
    """Tissue fractions (3, X, Y, Z: GM, WM, CSF; zero outside the mask), volumes in mL
    and their posterior SD, and the fitted model."""

    fractions: np.ndarray
    #: per-voxel posterior SD of each tissue fraction (3, X, Y, Z)
    fraction_sd: np.ndarray
    volumes_ml: dict
    volume_sd_ml: dict
    gain: float
    #: fitted unit-gain signals of the pure classes, and their prior means (physics)
    signals: dict
    prior_signals: dict
    #: fitted SD of the intensities about their class mean, one for every class (image
    #: units)
    noise_sd: float
    #: contrast-to-noise of each tissue pair, |difference of means| / pooled SD
    cnr: dict
    iterations: int
    converged: bool
    log: list = field(default_factory=list)

    def dseg(self, mask: np.ndarray) -> np.ndarray:
        """Hard labels (0 background, 1 GM, 2 WM, 3 CSF) of the largest fraction."""
        out = np.zeros(mask.shape, np.uint8)
        out[mask] = 1 + self.fractions[:, mask].argmax(0)
        return out


def _tissue_of_pure() -> np.ndarray:
    """(4, 3): which output tissue each pure class is."""
    out = np.zeros((len(PURE), 3))
    for k, (_, _, t) in enumerate(PURE):
        out[k, TISSUES.index(t)] = 1.0
    return out


def tissue_signals(sequence: str, params: dict, field_strength: float = 3.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-gain magnitude signal of each pure class (:data:`PURE`) at the prior means,
    and its prior SD: the priors' between-subject SD of PD, R1, R2* and MT carried
    through the signal equation (finite differences), plus :data:`MODEL_ERROR`.

    >>> s, sd = tissue_signals("MPRAGE", {"ti": 0.9})
    >>> bool(s[0] < s[1] < s[3])   # CSF < GM < WM on an MPRAGE at TI 0.9 s
    True
    """
    pri = priors_at(field_strength)
    keys = ("pd", "r1", "r2s", "mt")
    mean = {k: torch.tensor([pri[c][k].mean for _, c, _ in PURE], dtype=torch.float64)
            for k in keys}
    sd = {k: np.array([pri[c][k].sd for _, c, _ in PURE]) for k in keys}
    p = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in params.items()}

    def signal(maps):
        from ..physics.simulate import SEQUENCES

        need = SEQUENCES[sequence].maps
        return simulate(sequence, {k: v for k, v in maps.items() if k in need}, p)[0].numpy()

    s0 = signal(mean)
    var = (MODEL_ERROR * s0) ** 2
    for k in keys:
        h = np.maximum(1e-4, 1e-3 * mean[k].numpy())
        bumped = dict(mean)
        bumped[k] = mean[k] + torch.from_numpy(h)
        var = var + ((signal(bumped) - s0) / h * sd[k]) ** 2
    return s0, np.sqrt(var)


def _class_weights(counts: np.ndarray, n_cls: int) -> np.ndarray:
    """Class weights from the responsibilities' totals: each tissue's prior mass is the
    template's (weight 1 per tissue, split between its pure classes, e.g. cortical and
    deep GM, in the proportions the data give), and every mixed class has one shared
    weight relative to a tissue (how much of the brain is partial volume). Free weights
    per class would let one tissue absorb another wherever the acquisition makes them
    alike; there the spatial prior alone must decide."""
    n_pure = len(PURE)
    w = np.ones(n_cls)
    for t in TISSUES:
        ks = [k for k, (_, _, tt) in enumerate(PURE) if tt == t]
        c = counts[ks] + 1.0
        w[ks] = c / c.sum()
    per_mix = (counts[n_pure:].sum() + 1.0) / (n_cls - n_pure)
    per_tissue = (counts[:n_pure].sum() + 1.0) / len(TISSUES)
    w[n_pure:] = per_mix / per_tissue
    return w


def _neighbour_mean(q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``q`` (N, T; values at the mask's voxels) over each voxel's 6 neighbours
    inside the mask (zero where a voxel has none)."""
    grid = np.zeros((*mask.shape, q.shape[1]), q.dtype)
    grid[mask] = q
    m = mask.astype(q.dtype)
    total = np.zeros_like(grid)
    count = np.zeros(mask.shape, q.dtype)
    for ax in range(3):
        for step in (1, -1):
            sl_dst = [slice(None)] * 3
            sl_src = [slice(None)] * 3
            if step == 1:
                sl_dst[ax], sl_src[ax] = slice(1, None), slice(None, -1)
            else:
                sl_dst[ax], sl_src[ax] = slice(None, -1), slice(1, None)
            total[tuple(sl_dst)] += grid[tuple(sl_src)]
            count[tuple(sl_dst)] += m[tuple(sl_src)]
    out = total[mask] / np.maximum(count[mask], 1.0)[:, None]
    return out


def bayes_segment(image: np.ndarray, mask: np.ndarray, sequence: str, params: dict, *,
                  prior: np.ndarray | None = None, field_strength: float = 3.0,
                  voxel_ml: float = 0.001, mrf_beta: float = 1.0, iterations: int = 40,
                  tolerance: float = 1e-4, prior_floor: float = 0.02,
                  update_signals: bool = True, prior_weight: float = 1.0) -> BayesResult:
    """Segment a bias-corrected, skull-stripped brain into GM, WM and CSF fractions.

    Parameters
    ----------
    image, mask : 3D arrays (mask: brain voxels)
    sequence, params : the acquisition, as :func:`phys_bids.physics.simulate` takes it
        (SI units: s, degrees)
    prior : (3, X, Y, Z) GM, WM, CSF probabilities of a template in the scan's space,
        or None (flat)
    field_strength : T, for the tissue priors
    voxel_ml : volume of one voxel in mL
    mrf_beta : weight of the neighbours' tissue composition (0: no MRF)
    iterations, tolerance : EM stops when the largest change of a tissue volume is
        below ``tolerance`` of the brain volume
    prior_floor : the template prior is mixed with a flat one by this weight, so that
        no tissue is impossible anywhere
    prior_weight : exponent of the template prior (1: as given; below 1 tempers a
        population template whose maps are blurred or shifted against this brain)
    update_signals : after the physics-tied fit converges (class signals in the ratios
        the signal equation predicts, one gain), update each class signal by MAP under
        its prior; False keeps the physics ratios
    """
    mask = np.asarray(mask, bool)
    x = np.asarray(image, np.float64)[mask]
    if x.size < 100:
        raise ValueError(f"the brain mask holds {x.size} voxels; too few to segment")
    if not np.all(np.isfinite(x)):
        raise ValueError("the image has non-finite values inside the brain mask")
    n_pure, n_mix = len(PURE), len(MIXES)
    n_cls = n_pure + n_mix
    t_of = _tissue_of_pure()
    s0, tau = tissue_signals(sequence, params, field_strength)
    if prior is None:
        logp = np.full((x.size, 3), math.log(1.0 / 3.0))
    else:
        p = np.stack([np.asarray(prior[t], np.float64)[mask] for t in range(3)], 1)
        p = np.clip(p, 0.0, None)
        p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        p[~np.isfinite(p).all(1) | (p.sum(1) < 0.5)] = 1.0 / 3.0
        logp = prior_weight * np.log((1.0 - prior_floor) * p + prior_floor / 3.0)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    # class log-priors: a pure class its tissue's, a mixed class the mean of its two
    mix_t = np.array([[t_of[a].argmax(), t_of[b].argmax()] for a, b in MIXES])
    log_prior_c = np.concatenate([logp @ t_of.T, 0.5 * (logp[:, mix_t[:, 0]]
                                                        + logp[:, mix_t[:, 1]])], 1)
    log_prior_c = log_prior_c.astype(np.float32)
    x32 = x.astype(np.float32)
    # initial gain: the image mean against the mean signal the prior expects
    first = {t: next(k for k, (_, _, tt) in enumerate(PURE) if tt == t) for t in TISSUES}
    expected = (np.exp(logp) @ np.array([s0[first[t]] for t in TISSUES])).mean()
    g = float(np.mean(x) / max(expected, 1e-12))
    s = s0.copy()
    # one noise SD for every class (a free variance per class lets one class widen into
    # a catch-all); it starts wide, so the first E-steps are smooth
    sigma = 0.1 * g * float(s0.max())
    w = _class_weights(np.ones(n_cls), n_cls)
    q = np.exp(logp)
    vol = q.sum(0)
    log, converged, it = [], False, 0
    fitting_signals = False
    for it in range(1, iterations + 1):
        extra = mrf_beta * _mrf_term(q, mask, t_of, mix_t) if mrf_beta else None
        r, alpha = _e_step(x32, g * s, sigma, w, log_prior_c, extra)
        q = _composition(r, alpha, t_of, mix_t)
        w = _class_weights(r.sum(0, dtype=np.float64), n_cls)
        a_mat, b_vec = _sufficient(r, alpha, x)
        for _ in range(3):
            # the gain that best fits the data with the current relative signals, then
            # the absolute class means by MAP around the physics (prior g * s0, SD
            # g * tau): the physics holds each mean unless the data pull it clearly
            g = float(s @ b_vec / max(s @ a_mat @ s, 1e-300))
            post = a_mat / sigma ** 2 + np.diag(1.0 / (g * tau) ** 2)
            if fitting_signals:
                s = np.linalg.solve(post, b_vec / sigma ** 2 + s0 / (g * tau ** 2)) / g
        pure_r = r[:, :n_pure]
        resid = (x[:, None] - g * s[None]) ** 2
        floor = 0.005 * g * float(np.abs(s).max())
        sigma = max(math.sqrt(float((pure_r * resid).sum() / max(pure_r.sum(), 1.0))), floor)
        new_vol = q.sum(0)
        change = float(np.abs(new_vol - vol).max() / x.size)
        vol = new_vol
        log.append({"iteration": it, "gain": g, "noise_sd": sigma, "volume_change": change,
                    "signals_free": fitting_signals})
        if change < tolerance and it > 3:
            if fitting_signals or not update_signals:
                converged = True
                break
            # stage 2: from the converged physics-tied fit, let the data move each class
            # signal within its prior (starting there keeps every class on its tissue;
            # from the first iterations the partial-volume classes would take them over)
            fitting_signals = True
    # posterior SD of the volumes: voxel-wise labelling, plus the class signals' MAP
    # uncertainty carried through the final E-step
    comp_var = _composition_var(r, alpha, t_of, mix_t, q)
    lab_var = comp_var.sum(0)
    cov_s = np.linalg.inv(post) / g ** 2  # of the unit-gain signals s = means / g

    def volumes_with(sig):
        rr, aa = _e_step(x32, g * sig, sigma, w, log_prior_c, extra)
        return _composition(rr, aa, t_of, mix_t).sum(0, dtype=np.float64)

    base = volumes_with(s)
    jac = np.zeros((3, n_pure))
    for k in range(n_pure):
        h = max(1e-9, 0.5 * math.sqrt(max(cov_s[k, k], 0.0)))
        bumped = s.copy()
        bumped[k] += h
        jac[:, k] = (volumes_with(bumped) - base) / h
    par_var = np.einsum("tk,kl,tl->t", jac, cov_s, jac)
    sd_ml = np.sqrt(lab_var + par_var) * voxel_ml
    fractions = np.zeros((3, *mask.shape), np.float32)
    fraction_sd = np.zeros((3, *mask.shape), np.float32)
    for t in range(3):
        fractions[t][mask] = q[:, t]
        fraction_sd[t][mask] = np.sqrt(comp_var[:, t])
    cnr = {}
    for a_, b_ in (("GM", "WM"), ("GM", "CSF"), ("WM", "CSF")):
        i, j = first[a_], first[b_]
        cnr[f"{a_}-{b_}"] = float(abs(g * (s[i] - s[j])) / max(sigma, 1e-12))
    return BayesResult(
        fractions=fractions, fraction_sd=fraction_sd,
        volumes_ml={t: float(q[:, k].sum(dtype=np.float64) * voxel_ml)
                    for k, t in enumerate(TISSUES)},
        volume_sd_ml={t: float(sd_ml[k]) for k, t in enumerate(TISSUES)},
        gain=g, signals={n: float(v) for (n, _, _), v in zip(PURE, s, strict=True)},
        prior_signals={n: float(v) for (n, _, _), v in zip(PURE, s0, strict=True)},
        noise_sd=sigma,
        cnr=cnr, iterations=it, converged=converged, log=log)


def _e_step(x: np.ndarray, means: np.ndarray, sigma: float, w: np.ndarray,
            log_prior_c: np.ndarray, extra: np.ndarray | None):
    """Responsibilities (N, C) of the pure and mixed classes, and each mixed class's
    posterior mean fraction of its first tissue (N, M).

    A mixed class of tissues a and b has a fraction ``f`` of a, uniform on [0, 1], and
    the mean ``f mu_a + (1 - f) mu_b``: integrating ``f`` out, its likelihood is
    ``[Phi((mu_hi - x)/sigma) - Phi((mu_lo - x)/sigma)] / |mu_a - mu_b|``, and the mean
    given ``x`` is that of a normal truncated to [mu_lo, mu_hi]: continuous partial
    volume, no grid of fractions."""
    from scipy.special import ndtr

    n_pure = len(PURE)
    lp = np.empty((x.size, n_pure + len(MIXES)), np.float32)
    mu = means.astype(np.float32)
    lp[:, :n_pure] = ((x[:, None] - mu[None]) / np.float32(sigma)) ** 2 * np.float32(-0.5)
    lp[:, :n_pure] -= np.float32(math.log(sigma * math.sqrt(2 * math.pi)))
    alpha = np.empty((x.size, len(MIXES)), np.float32)
    for j, (a, b) in enumerate(MIXES):
        d = float(means[a] - means[b])
        if abs(d) < 1e-3 * sigma:  # no contrast: the mix is its midpoint
            m = 0.5 * (means[a] + means[b])
            lp[:, n_pure + j] = (-0.5 * ((x - m) / sigma) ** 2
                                 - math.log(sigma * math.sqrt(2 * math.pi)))
            alpha[:, j] = 0.5
            continue
        lo, hi = min(means[a], means[b]), max(means[a], means[b])
        zl, zh = (lo - x) / sigma, (hi - x) / sigma
        mass = np.maximum(ndtr(zh) - ndtr(zl), 1e-30)
        lp[:, n_pure + j] = np.log(mass) - math.log(abs(d))
        dens = (np.exp(-0.5 * zl * zl) - np.exp(-0.5 * zh * zh)) / math.sqrt(2 * math.pi)
        em = np.clip(x + sigma * dens / mass, lo, hi)
        alpha[:, j] = np.clip((em - means[b]) / d, 0.0, 1.0)
    lp += np.log(np.maximum(w, 1e-12)).astype(np.float32)[None]
    lp += log_prior_c
    if extra is not None:
        lp += extra
    lp -= lp.max(1, keepdims=True)
    r = np.exp(lp, out=lp)
    r /= r.sum(1, keepdims=True)
    return r, alpha


def _composition(r, alpha, t_of, mix_t) -> np.ndarray:
    """Expected tissue fractions (N, 3) of each voxel."""
    n_pure = len(PURE)
    q = r[:, :n_pure] @ t_of.astype(np.float32)
    for j in range(len(MIXES)):
        rj = r[:, n_pure + j]
        q[:, mix_t[j, 0]] += rj * alpha[:, j]
        q[:, mix_t[j, 1]] += rj * (1.0 - alpha[:, j])
    return q


def _composition_var(r, alpha, t_of, mix_t, q) -> np.ndarray:
    """Posterior variance (N, 3) of each voxel's tissue fractions over the classes (the
    spread of a mixed class's fraction given x is left out)."""
    n_pure = len(PURE)
    v = np.zeros_like(q, dtype=np.float64)
    for k in range(n_pure):
        v += r[:, k:k + 1] * (t_of[k][None] - q) ** 2
    for j in range(len(MIXES)):
        f = np.zeros_like(q)
        f[:, mix_t[j, 0]] = alpha[:, j]
        f[:, mix_t[j, 1]] = 1.0 - alpha[:, j]
        v += r[:, n_pure + j:n_pure + j + 1] * (f - q) ** 2
    return v


def _sufficient(r, alpha, x):
    """Normal equations ``A M = b`` of the pure classes' absolute means ``M`` given the
    responsibilities: pure voxels count for their class, mixed ones for both of their
    classes in proportion to their fractions."""
    n_pure = len(PURE)
    a_mat = np.zeros((n_pure, n_pure))
    b_vec = np.zeros(n_pure)
    rp = r[:, :n_pure].astype(np.float64)
    a_mat[np.diag_indices(n_pure)] = rp.sum(0)
    b_vec += rp.T @ x
    for j, (a, b) in enumerate(MIXES):
        rj = r[:, n_pure + j].astype(np.float64)
        f = alpha[:, j].astype(np.float64)
        a_mat[a, a] += np.sum(rj * f * f)
        a_mat[b, b] += np.sum(rj * (1 - f) * (1 - f))
        ab = np.sum(rj * f * (1 - f))
        a_mat[a, b] += ab
        a_mat[b, a] += ab
        b_vec[a] += np.sum(rj * f * x)
        b_vec[b] += np.sum(rj * (1 - f) * x)
    return a_mat, b_vec


def _mrf_term(q: np.ndarray, mask: np.ndarray, t_of: np.ndarray, mix_t: np.ndarray
              ) -> np.ndarray:
    """Mean-field MRF energy per class (N, C): the neighbours' mean composition in the
    class's tissue (a mixed class: the mean over its two tissues)."""
    nb = _neighbour_mean(q, mask)
    pure = nb @ t_of.T
    mixes = 0.5 * (nb[:, mix_t[:, 0]] + nb[:, mix_t[:, 1]])
    return np.concatenate([pure, mixes], 1).astype(np.float32)
