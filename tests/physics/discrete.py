"""Independent event-by-event simulations of the idealised sequences (numpy, float64).

Nothing here is shared with phys_bids: each sequence is played pulse by pulse
(RF rotation of the longitudinal magnetisation, ideal spoiling of the transverse one,
exponential recovery between events) and repeated until the steady state is reached.
"""

import numpy as np

DEG = np.pi / 180


def relax(mz, r1, t):
    e = np.exp(-r1 * t)
    return 1.0 - (1.0 - mz) * e


def _until_steady(step, mz, max_periods=500000, tol=1e-14):
    for _ in range(max_periods):
        new, sig = step(mz)
        if np.max(np.abs(new - mz)) < tol:
            return sig
        mz = new
    raise RuntimeError("no steady state")


def spgr(pd, r1, r2s, tr, te, fa, mtsat, b1t):
    a = fa * b1t * DEG

    def period(mz):
        mz = mz * (1 - mtsat / 100)  # MT pulse
        sig = np.sin(a) * mz  # excitation
        mz = np.cos(a) * mz
        return relax(mz, r1, tr), sig

    return pd * _until_steady(period, np.ones_like(r1)) * np.exp(-te * r2s)


def mprage_static(pd, r1, ti, td, tau):
    def period(mz):
        mz = -mz
        mz = relax(mz, r1, ti)
        sig = mz.copy()
        return relax(mz, r1, td + tau), sig

    return pd * _until_steady(period, np.ones_like(r1))


def _train(mz, r1, a, tx, n, nc, record):
    for k in range(n):
        if k == nc:
            record.append(np.sin(a) * mz)
        mz = relax(np.cos(a) * mz, r1, tx)
    return mz


def mprage(pd, r1, r2s, ti, tr, tx, n, nc, fa, te, eff, b1t):
    a = fa * b1t * DEG

    def period(mz):
        rec = []
        mz = -eff * mz
        mz = relax(mz, r1, ti - nc * tx)
        mz = _train(mz, r1, a, tx, n, nc, rec)
        return relax(mz, r1, tr - ti - (n - nc) * tx), rec[0]

    return pd * _until_steady(period, np.ones_like(r1), max_periods=5000) * np.exp(-te * r2s)


def mp2rage(pd, r1, ti1, ti2, tr, tx, n, nc, fa1, fa2, eff):
    a1, a2 = fa1 * DEG, fa2 * DEG

    def period(mz):
        rec = []
        mz = -eff * mz
        mz = relax(mz, r1, ti1 - nc * tx)
        mz = _train(mz, r1, a1, tx, n, nc, rec)
        mz = relax(mz, r1, ti2 - ti1 - n * tx)
        mz = _train(mz, r1, a2, tx, n, nc, rec)
        mz = relax(mz, r1, tr - ti2 - (n - nc) * tx)
        return mz, np.stack(rec)

    s = _until_steady(period, np.ones_like(r1), max_periods=5000)
    return pd * s[0], pd * s[1]


def inversion_recovery(pd, r1, r2, ti, tr, te, eff):
    def period(mz):
        mz = relax(-eff * mz, r1, ti)
        sig = mz.copy()  # 90 degree read-out
        return relax(np.zeros_like(mz), r1, tr - ti), sig

    return pd * _until_steady(period, np.ones_like(r1)) * np.exp(-te * r2)


def fse(pd, r1, r2, tr, te):
    def period(mz):
        sig = mz.copy()
        return relax(np.zeros_like(mz), r1, tr), sig

    return pd * _until_steady(period, np.ones_like(r1)) * np.exp(-te * r2)
