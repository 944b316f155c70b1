"""Closed forms vs independent discrete-time simulation, identities, gradients."""

import math

import numpy as np
import pytest
import torch

from phys_bids.physics import sequences as S

from . import discrete as D

N_DRAWS = 200
TOL = 1e-5  # relative to the equilibrium magnetisation PD


def rng(seed):
    return np.random.default_rng(seed)


def tissue(r, n):
    return (r.uniform(0.5, 1.0, n), r.uniform(0.2, 2.0, n), r.uniform(1.0, 60.0, n))


def close(closed, ref, pd):
    closed = closed.detach().numpy() if isinstance(closed, torch.Tensor) else closed
    err = np.abs(closed - ref) / pd
    assert err.max() <= TOL, f"max relative error {err.max():.2e} at draw {err.argmax()}"


def T(x):
    return torch.as_tensor(x, dtype=torch.float64)


def test_spgr_matches_discrete():
    r = rng(1)
    pd, r1, r2s = tissue(r, N_DRAWS)
    tr, te = r.uniform(0.005, 0.2, N_DRAWS), r.uniform(0.001, 0.02, N_DRAWS)
    fa, mt = r.uniform(2, 90, N_DRAWS), r.uniform(0, 4, N_DRAWS)
    b1t = r.uniform(0.7, 1.3, N_DRAWS)
    ref = D.spgr(pd, r1, r2s, tr, te, fa, mt, b1t)
    out = S.spgr(T(pd), T(r1), T(r2s), T(tr), T(te), T(fa), mtsat=T(mt), b1t=T(b1t))
    close(out, ref, pd)


def test_mprage_static_matches_discrete():
    r = rng(2)
    pd, r1, _ = tissue(r, N_DRAWS)
    ti, td, tau = r.uniform(0.1, 2.0, N_DRAWS), r.uniform(0.1, 1.5, N_DRAWS), r.uniform(0, 0.05,
                                                                                      N_DRAWS)
    ref = D.mprage_static(pd, r1, ti, td, tau)
    close(S.mprage_static(T(pd), T(r1), T(ti), td=T(td), tau=T(tau)), ref, pd)


def _mprage_draws(r, n):
    pd, r1, r2s = tissue(r, n)
    nexc = r.integers(32, 200, n)
    nc = np.array([r.integers(0, k) for k in nexc])
    tx = r.uniform(0.004, 0.012, n)
    ti = nc * tx + r.uniform(0.05, 1.0, n)
    tr = ti + (nexc - nc) * tx + r.uniform(0.0, 1.5, n)
    return pd, r1, r2s, nexc, nc, tx, ti, tr


def test_mprage_readout_matches_discrete():
    r = rng(3)
    pd, r1, r2s, nexc, nc, tx, ti, tr = _mprage_draws(r, N_DRAWS)
    fa, te = r.uniform(3, 20, N_DRAWS), r.uniform(0.001, 0.006, N_DRAWS)
    eff, b1t = r.uniform(0.8, 1.0, N_DRAWS), r.uniform(0.8, 1.2, N_DRAWS)
    ref = np.array([D.mprage(pd[i:i+1], r1[i:i+1], r2s[i:i+1], ti[i], tr[i], tx[i], int(nexc[i]),
                             int(nc[i]), fa[i], te[i], eff[i], b1t[i])[0] for i in range(N_DRAWS)])
    out = S.mprage(T(pd), T(r1), T(r2s), ti=T(ti), tr=T(tr), echo_spacing=T(tx),
                   n_excitations=T(nexc), fa=T(fa), te=T(te), k_centre=T(nc / nexc),
                   inversion_efficiency=T(eff), b1t=T(b1t))
    close(out, ref, pd)


def test_mp2rage_matches_discrete():
    r = rng(4)
    pd, r1, _ = tissue(r, N_DRAWS)
    nexc = r.integers(32, 180, N_DRAWS)
    nc = np.array([r.integers(0, k) for k in nexc])
    tx = r.uniform(0.005, 0.009, N_DRAWS)
    ti1 = nc * tx + r.uniform(0.05, 0.8, N_DRAWS)
    ti2 = ti1 + nexc * tx + r.uniform(0.1, 2.0, N_DRAWS)
    tr = ti2 + (nexc - nc) * tx + r.uniform(0.0, 2.0, N_DRAWS)
    fa1, fa2, eff = r.uniform(3, 9, N_DRAWS), r.uniform(3, 9, N_DRAWS), r.uniform(0.8, 1, N_DRAWS)
    ref = np.array([np.concatenate(D.mp2rage(pd[i:i+1], r1[i:i+1], ti1[i], ti2[i], tr[i], tx[i],
                                             int(nexc[i]), int(nc[i]), fa1[i], fa2[i], eff[i]))
                    for i in range(N_DRAWS)])
    i1, i2 = S.mp2rage(T(pd), T(r1), ti1=T(ti1), ti2=T(ti2), tr=T(tr), echo_spacing=T(tx),
                       n_excitations=T(nexc), fa1=T(fa1), fa2=T(fa2), k_centre=T(nc / nexc),
                       inversion_efficiency=T(eff))
    close(i1, ref[:, 0], pd)
    close(i2, ref[:, 1], pd)


def test_inversion_recovery_and_fse_match_discrete():
    r = rng(5)
    pd, r1, r2 = tissue(r, N_DRAWS)
    ti = r.uniform(0.01, 3.0, N_DRAWS)
    tr = ti + r.uniform(0.05, 8.0, N_DRAWS)
    te, eff = r.uniform(0.005, 0.15, N_DRAWS), r.uniform(0.8, 1.0, N_DRAWS)
    close(S.inversion_recovery(T(pd), T(r1), T(ti), T(tr), r2=T(r2), te=T(te),
                               inversion_efficiency=T(eff)),
          D.inversion_recovery(pd, r1, r2, ti, tr, te, eff), pd)
    close(S.fse(T(pd), T(r1), T(r2), T(tr), T(te)), D.fse(pd, r1, r2, tr, te), pd)


def test_ernst_angle_maximises_spgr():
    r1, tr = torch.tensor(1.0, dtype=torch.float64), 0.02
    fa = torch.linspace(0.5, 60, 20000, dtype=torch.float64)
    s = S.spgr(1.0, r1, 0.0, tr, 0.0, fa)
    ernst = math.degrees(math.acos(math.exp(-tr * 1.0)))
    assert abs(float(fa[s.argmax()]) - ernst) < 0.01


def test_inversion_recovery_nulls_at_ln2_over_r1():
    r1 = torch.tensor([0.25, 0.7, 1.0, 2.0], dtype=torch.float64)
    ti = math.log(2) / r1
    s = S.inversion_recovery(1.0, r1, ti, tr=400.0)  # e^{-TR R1} negligible
    assert torch.allclose(s, torch.zeros_like(s), atol=1e-12)
    assert bool((S.inversion_recovery(1.0, r1, 0.9 * ti, tr=400.0) < 0).all())


def test_mp2rage_uni_bounded():
    r = rng(6)
    a, b = torch.from_numpy(r.normal(size=10000)), torch.from_numpy(r.normal(size=10000))
    u = S.mp2rage_uni(a, b)
    assert float(u.max()) <= 0.5 and float(u.min()) >= -0.5
    # and over the sequence model, for a wide T1 range
    i1, i2 = S.mp2rage(1.0, 1 / torch.linspace(0.1, 6, 500, dtype=torch.float64), ti1=0.8,
                       ti2=2.7, tr=5.5, echo_spacing=0.0062, n_excitations=159, fa1=5, fa2=7)
    u = S.mp2rage_uni(i1, i2)
    assert float(u.abs().max()) <= 0.5


@pytest.mark.parametrize("kind", ["static", "readout"])
def test_mprage_contrast_order_wm_gm_csf(kind):
    r1 = torch.tensor([1.036, 0.683, 0.240], dtype=torch.float64)  # WM, GM, CSF
    pd = torch.tensor([0.69, 0.80, 1.0], dtype=torch.float64)
    if kind == "static":
        s = S.mprage_static(pd, r1, 0.9).abs()
    else:
        s = S.mprage(pd, r1, ti=0.9, tr=2.3, echo_spacing=0.007, n_excitations=176, fa=9).abs()
    assert s[0] > s[1] > s[2]


def test_batched_over_parameter_sets_and_broadcast_over_voxels():
    maps = torch.rand(5, 6, 7) + 0.2
    tr = torch.tensor([0.02, 0.05, 0.08]).reshape(3, 1, 1, 1)
    out = S.spgr(maps, maps, 10.0, tr, 0.005, 20.0)
    assert out.shape == (3, 5, 6, 7) and out.dtype == torch.float32
    single = S.spgr(maps, maps, 10.0, 0.05, 0.005, 20.0)
    assert torch.allclose(out[1], single)


def test_impossible_timing_raises():
    with pytest.raises(ValueError, match="TI is shorter"):
        S.mprage(1.0, 1.0, ti=0.1, tr=2.3, echo_spacing=0.01, n_excitations=176, fa=9)
    with pytest.raises(ValueError, match="does not fit"):
        S.mprage(1.0, 1.0, ti=0.9, tr=1.0, echo_spacing=0.01, n_excitations=176, fa=9)


def _g(*shape):
    return (torch.rand(*shape, dtype=torch.float64) * 0.5 + 0.5).requires_grad_(True)


@pytest.mark.parametrize("name,fn,args", [
    ("spgr", lambda pd, r1, r2s, tr, te, fa, mt: S.spgr(pd, r1, r2s, tr, te, fa, mtsat=mt),
     lambda: (_g(3), _g(3), _g(3) * 20, _g(1) * 0.05, _g(1) * 0.01, _g(1) * 30, _g(1))),
    ("mprage_static", lambda pd, r1, ti, td: S.mprage_static(pd, r1, ti, td=td),
     lambda: (_g(3), _g(3), _g(1), _g(1))),
    ("mprage", lambda pd, r1, r2s, ti, fa: S.mprage(pd, r1, r2s, ti=ti + 0.6, tr=2.5,
                                                    echo_spacing=0.007, n_excitations=128, fa=fa
                                                    * 10, te=0.003),
     lambda: (_g(3), _g(3), _g(3) * 20, _g(1), _g(1))),
    ("mp2rage", lambda pd, r1, fa: torch.stack(S.mp2rage(pd, r1, ti1=0.8, ti2=2.7, tr=5.5,
                                                         echo_spacing=0.0062, n_excitations=159,
                                                         fa1=fa * 5, fa2=fa * 7)),
     lambda: (_g(3), _g(3), _g(1))),
    ("uni", lambda a, b: S.mp2rage_uni(a, b), lambda: (_g(4), _g(4) - 1.2)),
    ("inversion_recovery", lambda pd, r1, ti, tr, r2: S.inversion_recovery(pd, r1, ti, tr + 2,
                                                                           r2=r2 * 10, te=0.08),
     lambda: (_g(3), _g(3), _g(1), _g(1), _g(3))),
    ("fse", lambda pd, r1, r2, tr, te: S.fse(pd, r1, r2 * 10, tr * 3, te * 0.1),
     lambda: (_g(3), _g(3), _g(3), _g(1), _g(1))),
])
def test_gradcheck(name, fn, args):
    assert torch.autograd.gradcheck(fn, args(), eps=1e-6, atol=1e-6)
