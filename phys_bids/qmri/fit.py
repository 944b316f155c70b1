"""Voxelwise model-based qMRI fits, vectorised in torch (float64 internally).

Outputs use BIDS qMRI units: R1 and R2* in 1/s, T1 in s, PD as the fitted
equilibrium signal (arbitrary units, ``PDmap``), MTsat in p.u.

Every fit takes an optional boolean ``mask``; voxels outside it are set to 0.
The signal models are exactly those of :mod:`phys_bids.physics.sequences`, so fits
invert the simulator (tested to 1e-4 relative on noise-free data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..physics import sequences as seq

__all__ = ["despot1", "r2star_fit", "mp2rage_t1", "mpm_fit"]

_DEG = math.pi / 180.0


def _f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _masked(out: dict[str, Tensor], mask: Tensor | None, dtype) -> dict[str, Tensor]:
    res = {}
    for k, v in out.items():
        v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
        if mask is not None:
            v = torch.where(mask, v, torch.zeros_like(v))
        res[k] = v.to(dtype)
    return res


def despot1(signals: Tensor, fa, tr, *, b1: Tensor | float = 1.0, mask: Tensor | None = None
            ) -> dict[str, Tensor]:
    r"""Variable flip angle SPGR -> R1, PD (DESPOT1, Deoni et al., MRM 2003).

    Linearisation of :func:`~phys_bids.physics.sequences.spgr` at fixed TR:

    .. math:: \frac{S}{\sin\alpha} = E_1\frac{S}{\tan\alpha} + PD\,(1 - E_1)

    solved per voxel by least squares over the flip angles (exact for 2 angles).

    Parameters
    ----------
    signals : tensor (N_fa, ...)
        One image per flip angle (same TR, TE; T2* weighting is absorbed into PD).
    fa : sequence of float (N_fa,)
        Nominal flip angles, degrees.
    tr : float
        Repetition time, s.
    b1 : tensor or float
        Transmit scaling map (actual angle = ``b1 * fa``).
    mask : tensor of bool, optional

    Returns
    -------
    dict with ``R1map`` (1/s) and ``PDmap`` (a.u.).
    """
    s = _f64(signals)
    n = s.shape[0]
    if n < 2:
        raise ValueError("DESPOT1 needs at least 2 flip angles")
    a = _f64(fa).reshape(n, *([1] * (s.ndim - 1))) * _f64(b1) * _DEG
    y = s / torch.sin(a)
    x = s / torch.tan(a)
    xm, ym = x.mean(0), y.mean(0)
    slope = ((x - xm) * (y - ym)).sum(0) / ((x - xm) ** 2).sum(0)
    icpt = ym - slope * xm
    e1 = slope
    r1 = -torch.log(e1) / float(tr)
    pd = icpt / (1.0 - e1)
    return _masked({"R1map": r1, "PDmap": pd}, mask, signals.dtype)


def r2star_fit(signals: Tensor, te, *, method: str = "weighted", mask: Tensor | None = None
               ) -> dict[str, Tensor]:
    r"""Multi-echo GRE -> R2*, S0 from :math:`S = S_0 e^{-TE\,R_2^*}`.

    ``method="loglinear"``: ordinary least squares on :math:`\log S`;
    ``"weighted"``: weights :math:`S^2` (the inverse variance of :math:`\log S` at high
    SNR), which reduces the bias of late, noisy echoes.

    Parameters
    ----------
    signals : tensor (N_te, ...)
    te : sequence of float (N_te,), s
    """
    s = _f64(signals).clamp_min(1e-12)
    n = s.shape[0]
    if n < 2:
        raise ValueError("an R2* fit needs at least 2 echoes")
    t = _f64(te).reshape(n, *([1] * (s.ndim - 1)))
    y = torch.log(s)
    if method == "loglinear":
        w = torch.ones_like(s)
    elif method == "weighted":
        w = s**2
    else:
        raise ValueError(f"method must be 'loglinear' or 'weighted', not {method!r}")
    sw = w.sum(0)
    tm = (w * t).sum(0) / sw
    ym = (w * y).sum(0) / sw
    slope = (w * (t - tm) * (y - ym)).sum(0) / (w * (t - tm) ** 2).sum(0)
    r2s = -slope
    s0 = torch.exp(ym - slope * tm)
    return _masked({"R2starmap": r2s, "S0map": s0}, mask, signals.dtype)


def mp2rage_t1(uni: Tensor, *, ti1, ti2, tr, echo_spacing, n_excitations, fa1, fa2,
               k_centre=0.5, inversion_efficiency=0.96, b1: float = 1.0,
               t1_range=(0.05, 5.0), points: int = 2000, mask: Tensor | None = None
               ) -> dict[str, Tensor]:
    """MP2RAGE UNI -> T1 and R1 by the sequence model's lookup table (Marques 2010).

    The UNI value of T1 values on a fine grid is computed with
    :func:`~phys_bids.physics.sequences.mp2rage`; the monotonic part of the curve that
    contains the brain range is inverted by linear interpolation. UNI values outside
    the table give 0 (flagged by ``valid``).

    Returns
    -------
    dict with ``T1map`` (s), ``R1map`` (1/s) and ``valid`` (bool).
    """
    t1 = torch.linspace(t1_range[0], t1_range[1], points, dtype=torch.float64)
    i1, i2 = seq.mp2rage(1.0, 1.0 / t1, ti1=ti1, ti2=ti2, tr=tr, echo_spacing=echo_spacing,
                         n_excitations=n_excitations, fa1=fa1, fa2=fa2, k_centre=k_centre,
                         inversion_efficiency=inversion_efficiency, b1t=b1)
    lut = seq.mp2rage_uni(i1, i2)
    # keep the longest strictly decreasing run (UNI falls with T1 over the useful range)
    d = torch.diff(lut) < 0
    best, run_start = (0, 0), 0
    for i, dec in enumerate(d.tolist() + [False]):
        if not dec:
            if i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = i + 1
    lo, hi = best
    u_tab = lut[lo:hi + 1].flip(0)  # increasing
    t_tab = t1[lo:hi + 1].flip(0)
    u = _f64(uni)
    valid = (u >= u_tab[0]) & (u <= u_tab[-1])
    idx = torch.searchsorted(u_tab, u.clamp(u_tab[0], u_tab[-1]).contiguous()).clamp(1,
                                                                                   len(u_tab) - 1)
    u0, u1 = u_tab[idx - 1], u_tab[idx]
    w = (u - u0) / (u1 - u0)
    t1_map = t_tab[idx - 1] + w * (t_tab[idx] - t_tab[idx - 1])
    t1_map = torch.where(valid, t1_map, torch.zeros_like(t1_map))
    r1_map = torch.where(valid, 1.0 / t1_map.clamp_min(1e-9), torch.zeros_like(t1_map))
    out = _masked({"T1map": t1_map, "R1map": r1_map}, mask, uni.dtype)
    out["valid"] = valid if mask is None else (valid & mask)
    return out


def mpm_fit(pdw: Tensor, t1w: Tensor, mtw: Tensor | None, *, te_pd, te_t1, te_mt=None,
            fa_pd: float, fa_t1: float, fa_mt: float | None = None, tr_pd: float, tr_t1: float,
            tr_mt: float | None = None, b1: Tensor | float = 1.0, method: str = "exact",
            mask: Tensor | None = None) -> dict[str, Tensor]:
    r"""Multi-parameter mapping: PDw/T1w/MTw multi-echo FLASH -> R1, PD, R2*, MTsat.

    1. ESTATICS (Weiskopf et al. 2014): one R2* shared by the contrasts, one intercept
       per contrast, by log-linear least squares over all echoes.
    2. R1 and PD from the TE=0 intercepts of PDw and T1w. ``method="small-angle"``
       uses the hMRI approximations (Helms et al. 2008):
       :math:`R_1 = \tfrac12\frac{S_P\alpha_P/TR_P - S_T\alpha_T/TR_T}{S_T/\alpha_T -
       S_P/\alpha_P}`, :math:`A = \frac{S_P S_T(TR_P\alpha_T/\alpha_P -
       TR_T\alpha_P/\alpha_T)}{S_T TR_P\alpha_T - S_P TR_T\alpha_P}`;
       ``"exact"`` (default) refines them with Newton steps on the exact SPGR ratio.
    3. MTsat from the MTw intercept, exactly inverting the SPGR-with-MT equation of
       :func:`~phys_bids.physics.sequences.spgr`
       (``"small-angle"``: :math:`\delta = (A\alpha/S - 1) R_1 TR - \alpha^2/2`).

    Parameters
    ----------
    pdw, t1w, mtw : tensor (N_echoes, ...)
        Echo series of each contrast (``mtw`` may be None).
    te_pd, te_t1, te_mt : sequence of float, s
    fa_pd, fa_t1, fa_mt : float, degrees
    tr_pd, tr_t1, tr_mt : float, s
    b1 : transmit scaling map or float
    method : "exact" or "small-angle"

    Returns
    -------
    dict with ``R1map`` (1/s), ``PDmap`` (a.u.), ``R2starmap`` (1/s), ``MTsat`` (p.u.).
    """
    contrasts = [(pdw, te_pd), (t1w, te_t1)] + ([(mtw, te_mt)] if mtw is not None else [])
    # ESTATICS: unknowns = one log-intercept per contrast + shared slope
    ys, ts, ids = [], [], []
    for c, (img, te) in enumerate(contrasts):
        s = _f64(img).clamp_min(1e-12)
        ys.append(torch.log(s))
        ts.append(_f64(te).reshape(-1, *([1] * (s.ndim - 1))).expand_as(s))
        ids += [c] * s.shape[0]
    y = torch.cat(ys)
    t = torch.cat(ts)
    ids_t = torch.tensor(ids)
    # centre TE within each contrast, slope from pooled centred data
    tc = torch.empty_like(t)
    yc = torch.empty_like(y)
    means = []
    for c in range(len(contrasts)):
        sel = ids_t == c
        tm, ym = t[sel].mean(0), y[sel].mean(0)
        tc[sel], yc[sel] = t[sel] - tm, y[sel] - ym
        means.append((tm, ym))
    slope = (tc * yc).sum(0) / (tc**2).sum(0)
    r2s = -slope
    s0 = [torch.exp(ym - slope * tm) for tm, ym in means]
    sp, st = s0[0], s0[1]
    b1 = _f64(b1)
    ap, at = fa_pd * _DEG * b1, fa_t1 * _DEG * b1
    r1 = 0.5 * (sp * ap / tr_pd - st * at / tr_t1) / (st / at - sp / ap)
    a = sp * st * (tr_pd * at / ap - tr_t1 * ap / at) / (st * tr_pd * at - sp * tr_t1 * ap)
    if method == "exact":
        ratio = sp / st
        for _ in range(30):  # Newton on f(R1) = g_P(R1)/g_T(R1) - ratio
            r = r1.detach().clone().requires_grad_(True)
            gp = seq.spgr(1.0, r, 0.0, tr_pd, 0.0, fa_pd, b1t=b1)
            gt = seq.spgr(1.0, r, 0.0, tr_t1, 0.0, fa_t1, b1t=b1)
            f = gp / gt - ratio
            (df,) = torch.autograd.grad(f.sum(), r)
            r1 = (r - f / df).detach()
        a = st / seq.spgr(1.0, r1, 0.0, tr_t1, 0.0, fa_t1, b1t=b1)
    elif method != "small-angle":
        raise ValueError(f"method must be 'exact' or 'small-angle', not {method!r}")
    out = {"R1map": r1, "PDmap": a, "R2starmap": r2s}
    if mtw is not None:
        sm = s0[2]
        am = fa_mt * _DEG * b1
        if method == "exact":
            e1 = torch.exp(-tr_mt * r1)
            keep = sm / (a * torch.sin(am) * (1 - e1) + sm * torch.cos(am) * e1)
            delta = 1.0 - keep
        else:
            delta = (a * am / sm - 1.0) * r1 * tr_mt - am**2 / 2.0
        out["MTsat"] = 100.0 * delta
    return _masked(out, mask, pdw.dtype)
