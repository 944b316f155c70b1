"""Static MR signal equations as pure, differentiable torch functions.

Conventions (shared by every function in this module)
-----------------------------------------------------
* Units are the ones BIDS sidecars use: times in **seconds**, relaxation rates in
  **1/s**, flip angles in **degrees**, proton density in arbitrary units (the
  equilibrium magnetisation), magnetisation-transfer saturation in **p.u.** (percent
  of the longitudinal magnetisation saturated by one MT pulse, as hMRI's MTsat).
* Inputs may be Python numbers or tensors; they broadcast against each other with
  the ordinary torch rules. To simulate ``B`` parameter sets over a volume of shape
  ``(X, Y, Z)``, pass tissue maps of shape ``(X, Y, Z)`` and parameters of shape
  ``(B, 1, 1, 1)`` (:func:`phys_bids.physics.simulate.simulate` does this for you).
* The output dtype and device follow the tensor inputs (float32 when all inputs are
  Python numbers). No noise is added here: see :mod:`phys_bids.physics.noise`.
* The returned signal is the *signed* (real) signal of an ideal receiver, so that
  textbook identities such as the inversion-recovery null can be checked; a
  magnitude image is ``signal.abs()``.
* ``b1t`` is the transmit-field scaling (actual flip angle = ``b1t * fa``) and
  ``gain`` the receive gain (a multiplicative factor, e.g. a coil sensitivity).

Every closed form here is verified in ``tests/physics`` against an independent
discrete-time (event by event) simulation of the same idealised sequence.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "spgr",
    "gre",
    "flash",
    "mprage_static",
    "mprage",
    "mp2rage",
    "mp2rage_uni",
    "inversion_recovery",
    "flair",
    "fse",
]

_DEG = math.pi / 180.0


def _tensors(*values) -> list[Tensor]:
    """Convert numbers to tensors matching the dtype/device of the tensor inputs."""
    ref = next((v for v in values if isinstance(v, Tensor)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else None
    for v in values:  # promote to the widest floating dtype among tensor inputs
        if isinstance(v, Tensor) and v.is_floating_point():
            dtype = torch.promote_types(dtype, v.dtype)
    return [
        v.to(dtype) if isinstance(v, Tensor) else torch.as_tensor(v, dtype=dtype, device=device)
        for v in values
    ]


def spgr(pd, r1, r2s, tr, te, fa, *, mtsat=0.0, b1t=1.0, gain=1.0) -> Tensor:
    r"""Spoiled gradient echo (SPGR / FLASH / GRE) steady-state signal.

    .. math::

        S = G\,PD\,\sin\alpha\,\frac{(1-\delta)(1-E_1)}{1-(1-\delta)\cos\alpha\,E_1}
            \,e^{-TE\,R_2^*},\qquad E_1 = e^{-TR\,R_1},\ \alpha = b_{1t}\,FA

    With no MT pulse (:math:`\delta = 0`) this is eq. 1 of Borges et al.,
    *physics-informed segmentation* (after Jog et al.) and the GRE equation (eq. 4)
    of Chalcroft et al., *qMRI synthetic data*. The MT term follows Helms et al.,
    MRM 2008 (an MT pulse before each excitation saturates a fraction
    :math:`\delta` of the longitudinal magnetisation; relaxation between the MT
    pulse and the excitation is neglected). Ideal spoiling is assumed.

    Parameters
    ----------
    pd : tensor
        Proton density (equilibrium magnetisation), arbitrary units.
    r1, r2s : tensor
        Longitudinal and effective transverse relaxation rates, 1/s.
    tr, te : tensor
        Repetition and echo time, s.
    fa : tensor
        Nominal flip angle, degrees.
    mtsat : tensor, optional
        MT saturation per TR, p.u. (0 = no MT pulse).
    b1t, gain : tensor, optional
        Transmit flip-angle scaling and receive gain (dimensionless).

    Returns
    -------
    tensor
        Signal, broadcast shape of the inputs.
    """
    pd, r1, r2s, tr, te, fa, mtsat, b1t, gain = _tensors(
        pd, r1, r2s, tr, te, fa, mtsat, b1t, gain
    )
    alpha = fa * b1t * _DEG
    e1 = torch.exp(-tr * r1)
    keep = 1.0 - mtsat / 100.0
    core = keep * (1.0 - e1) / (1.0 - keep * torch.cos(alpha) * e1)
    return gain * pd * torch.sin(alpha) * core * torch.exp(-te * r2s)


#: Aliases: the same steady-state spoiled gradient-echo equation.
gre = spgr
flash = spgr


def mprage_static(pd, r1, ti, *, td=0.6, tau=0.010, gain=1.0) -> Tensor:
    r"""Static MPRAGE equation (Borges et al., physics-informed segmentation, eq. 2).

    .. math::

        S = G\,PD\left(1 - \frac{2\,e^{-TI\,R_1}}{1 + e^{-(TI+TD+\tau)\,R_1}}\right)

    This is the longitudinal magnetisation at the inversion time of a perfectly
    inverting inversion-recovery experiment repeated every :math:`TI+TD+\tau`,
    with a read-out that does not perturb the magnetisation (the model the papers
    simulate; use :func:`mprage` for a real read-out train).

    Parameters
    ----------
    pd : tensor
        Proton density, arbitrary units.
    r1 : tensor
        Longitudinal relaxation rate, 1/s.
    ti : tensor
        Inversion time, s.
    td : tensor, optional
        Delay time, s (papers: 0.6 s).
    tau : tensor, optional
        Slice (read-out) imaging time, s (papers: 0.010 s).
    gain : tensor, optional
        Receive gain.

    Returns
    -------
    tensor
        Signed signal; negative where the magnetisation has not recovered.
    """
    pd, r1, ti, td, tau, gain = _tensors(pd, r1, ti, td, tau, gain)
    e_ti = torch.exp(-ti * r1)
    e_tr = torch.exp(-(ti + td + tau) * r1)
    return gain * pd * (1.0 - 2.0 * e_ti / (1.0 + e_tr))


def _readout_affine(e1: Tensor, cos_a: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Affine map ``Mz -> a*Mz + b`` of ``n`` spoiled excitations (M0 = 1).

    Each excitation then relaxation over one echo spacing maps
    ``Mz -> cos(a) E1 Mz + (1 - E1)``; ``n`` of them compose to
    ``a = (cos(a) E1)^n`` and ``b = Mss (1 - a)`` with the read-out steady state
    ``Mss = (1 - E1) / (1 - cos(a) E1)``.
    """
    q = cos_a * e1
    a = q**n
    mss = (1.0 - e1) / (1.0 - q)
    return a, mss * (1.0 - a)


def _relax_affine(r1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Affine map of free T1 recovery over ``t`` seconds (M0 = 1)."""
    e = torch.exp(-t * r1)
    return e, 1.0 - e


def _compose(*maps: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Compose affine maps applied left to right."""
    a, b = maps[0]
    for a2, b2 in maps[1:]:
        a, b = a2 * a, a2 * b + b2
    return a, b


def _check_nonnegative(name: str, value: Tensor, hint: str) -> None:
    if bool((value < -1e-12).any()):
        raise ValueError(f"{name} is negative ({float(value.min()):.4g} s): {hint}")


def mprage(
    pd,
    r1,
    r2s=0.0,
    *,
    ti,
    tr,
    echo_spacing,
    n_excitations,
    fa,
    te=0.0,
    k_centre=0.5,
    inversion_efficiency=1.0,
    b1t=1.0,
    gain=1.0,
) -> Tensor:
    r"""MPRAGE with a full magnetisation-prepared read-out train.

    Timeline of one shot (period ``tr``), after Deichmann et al., MRM 2000 and
    Marques et al., NeuroImage 2010:

    1. adiabatic inversion, :math:`M_z \to -\eta M_z` (``inversion_efficiency``);
    2. free recovery for :math:`T_A = TI - n_c\,T_X`, with
       :math:`n_c = k_{centre}\,n` the excitations before the k-space centre;
    3. ``n`` spoiled excitations of flip :math:`\alpha` every echo spacing
       :math:`T_X` (relaxation over one :math:`T_X` after each);
    4. free recovery for :math:`T_D = TR - TI - (n - n_c)\,T_X` until the next
       inversion.

    The steady state is solved exactly by composing the affine maps of the events;
    the returned signal is that of the k-space-centre excitation,

    .. math::

        S = G\,PD\,\sin\alpha\,\big[M_{ss} + (M_0^{RO} - M_{ss})(\cos\alpha\,E_X)^{n_c}\big]
            \,e^{-TE\,R_2^*},\quad M_{ss} = \frac{1 - E_X}{1 - \cos\alpha\,E_X},

    where :math:`M_0^{RO}` is the steady-state longitudinal magnetisation at the
    start of the read-out.

    Parameters
    ----------
    pd, r1, r2s : tensor
        Proton density (a.u.), R1 (1/s), R2* (1/s).
    ti : tensor
        Inversion time to the k-space centre (BIDS ``InversionTime``), s.
    tr : tensor
        Time between inversions (BIDS ``RepetitionTimePreparation``), s.
    echo_spacing : tensor
        Time between read-out excitations (BIDS ``RepetitionTimeExcitation``), s.
    n_excitations : tensor
        Excitations per inversion (BIDS ``NumberShots``; partitions per slab).
    fa : tensor
        Read-out flip angle, degrees.
    te : tensor, optional
        Echo time, s.
    k_centre : tensor, optional
        Fraction of the read-out train before the k-space centre (0.5 = linear
        ordering, 0 = centric).
    inversion_efficiency : tensor, optional
        1 = perfect inversion, 0 = none.
    b1t, gain : tensor, optional
        Transmit scaling and receive gain.

    Returns
    -------
    tensor
        Signed signal.

    Raises
    ------
    ValueError
        If the timing is impossible (``TI`` shorter than the read-out before the
        centre, or ``TR`` shorter than ``TI`` plus the rest of the read-out).
    """
    (pd, r1, r2s, ti, tr, tx, n, fa, te, kc, eff, b1t, gain) = _tensors(
        pd, r1, r2s, ti, tr, echo_spacing, n_excitations, fa, te, k_centre,
        inversion_efficiency, b1t, gain,
    )
    nc = kc * n
    t_a = ti - nc * tx
    t_d = tr - ti - (n - nc) * tx
    _check_nonnegative("TI - n_centre*echo_spacing", t_a, "TI is shorter than the read-out "
                       "before the k-space centre")
    _check_nonnegative("TR - TI - rest of read-out", t_d, "the read-out train does not fit "
                       "between TI and the next inversion")
    alpha = fa * b1t * _DEG
    cos_a = torch.cos(alpha)
    e_x = torch.exp(-tx * r1)
    ro = _readout_affine(e_x, cos_a, n)
    inv = (-eff, torch.zeros_like(eff))
    # one period starting at the beginning of the read-out: RO, TD, inversion, TA
    a, b = _compose(ro, _relax_affine(r1, t_d), inv, _relax_affine(r1, t_a))
    m_start = b / (1.0 - a)
    q = cos_a * e_x
    mss = (1.0 - e_x) / (1.0 - q)
    m_centre = mss + (m_start - mss) * q**nc
    return gain * pd * torch.sin(alpha) * m_centre * torch.exp(-te * r2s)


def mp2rage(
    pd,
    r1,
    r2s=0.0,
    *,
    ti1,
    ti2,
    tr,
    echo_spacing,
    n_excitations,
    fa1,
    fa2,
    te=0.0,
    k_centre=0.5,
    inversion_efficiency=0.96,
    b1t=1.0,
    gain=1.0,
) -> tuple[Tensor, Tensor]:
    r"""MP2RAGE: two read-out trains after one inversion (Marques et al., NeuroImage 2010).

    Timeline of one period ``tr`` (BIDS ``RepetitionTimePreparation``): inversion;
    recovery :math:`T_A = TI_1 - n_c T_X`; read-out 1 (``n`` excitations of
    ``fa1``); recovery :math:`T_B = TI_2 - TI_1 - n T_X`; read-out 2 (``fa2``);
    recovery :math:`T_C = TR - TI_2 - (n - n_c) T_X`. The steady state is solved
    exactly by composing the affine maps of the events; each image is the signal of
    its k-space-centre excitation (same conventions as :func:`mprage`).

    Parameters
    ----------
    pd, r1, r2s : tensor
        Proton density (a.u.), R1 (1/s), R2* (1/s).
    ti1, ti2 : tensor
        Inversion times to the centre of each read-out, s.
    tr : tensor
        Time between inversions, s.
    echo_spacing : tensor
        Time between excitations, s.
    n_excitations : tensor
        Excitations per read-out train.
    fa1, fa2 : tensor
        Flip angles of the two trains, degrees.
    te, k_centre, inversion_efficiency, b1t, gain : tensor, optional
        As in :func:`mprage` (default efficiency 0.96, Marques 2010).

    Returns
    -------
    (inv1, inv2) : tuple of tensors
        Signed signals of the two inversion images.
    """
    (pd, r1, r2s, ti1, ti2, tr, tx, n, fa1, fa2, te, kc, eff, b1t, gain) = _tensors(
        pd, r1, r2s, ti1, ti2, tr, echo_spacing, n_excitations, fa1, fa2, te, k_centre,
        inversion_efficiency, b1t, gain,
    )
    nc = kc * n
    t_a = ti1 - nc * tx
    t_b = ti2 - ti1 - n * tx
    t_c = tr - ti2 - (n - nc) * tx
    _check_nonnegative("TA", t_a, "TI1 is shorter than the read-out before the centre")
    _check_nonnegative("TB", t_b, "the two read-out trains overlap (TI2 - TI1 too short)")
    _check_nonnegative("TC", t_c, "the second read-out does not fit before the next inversion")
    a1, a2 = fa1 * b1t * _DEG, fa2 * b1t * _DEG
    e_x = torch.exp(-tx * r1)
    ro1 = _readout_affine(e_x, torch.cos(a1), n)
    ro2 = _readout_affine(e_x, torch.cos(a2), n)
    inv = (-eff, torch.zeros_like(eff))
    # period starting at the beginning of read-out 1
    a, b = _compose(ro1, _relax_affine(r1, t_b), ro2, _relax_affine(r1, t_c), inv,
                    _relax_affine(r1, t_a))
    m1 = b / (1.0 - a)
    a12, b12 = _compose(ro1, _relax_affine(r1, t_b))
    m2 = a12 * m1 + b12
    decay = gain * pd * torch.exp(-te * r2s)
    out = []
    for m0, alpha in ((m1, a1), (m2, a2)):
        q = torch.cos(alpha) * e_x
        mss = (1.0 - e_x) / (1.0 - q)
        out.append(decay * torch.sin(alpha) * (mss + (m0 - mss) * q**nc))
    return out[0], out[1]


def mp2rage_uni(inv1, inv2) -> Tensor:
    r"""MP2RAGE uniform image, :math:`UNI = S_1 S_2 / (S_1^2 + S_2^2)` (Marques 2010).

    Independent of PD, receive gain and R2*; bounded to ``[-0.5, 0.5]``.
    Real (signed) inputs are the phase-sensitive signals; for complex inputs the
    real part of :math:`S_1^* S_2` is used.
    """
    inv1, inv2 = _tensors(inv1, inv2)
    if inv1.is_complex() or inv2.is_complex():
        num = (inv1.conj() * inv2).real
        den = inv1.abs() ** 2 + inv2.abs() ** 2
    else:
        num = inv1 * inv2
        den = inv1**2 + inv2**2
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def inversion_recovery(pd, r1, ti, tr, *, r2=0.0, te=0.0, inversion_efficiency=1.0,
                       gain=1.0) -> Tensor:
    r"""Inversion recovery with a saturating 90 degree read-out (FLAIR-type).

    .. math::

        S = G\,PD\,e^{-TE\,R_2}\left(1 - (1+\eta)\,e^{-TI\,R_1} + \eta\,e^{-TR\,R_1}\right)

    For :math:`\eta = 1` this is the FLAIR equation (eq. 5) of Chalcroft et al.
    Model: inversion (efficiency :math:`\eta`), recovery for TI, a 90 degree
    excitation that leaves no longitudinal magnetisation, recovery until TR.
    For long TR the signal nulls at :math:`TI = \ln 2 / R_1`.

    Parameters
    ----------
    pd, r1 : tensor
        Proton density (a.u.), R1 (1/s).
    ti, tr : tensor
        Inversion and repetition time, s.
    r2, te : tensor, optional
        Transverse relaxation rate (1/s) and echo time (s).
    inversion_efficiency, gain : tensor, optional
        Inversion efficiency and receive gain.
    """
    pd, r1, ti, tr, r2, te, eff, gain = _tensors(pd, r1, ti, tr, r2, te, inversion_efficiency,
                                                 gain)
    core = 1.0 - (1.0 + eff) * torch.exp(-ti * r1) + eff * torch.exp(-tr * r1)
    return gain * pd * core * torch.exp(-te * r2)


#: FLAIR is inversion recovery with a long TI chosen to null CSF.
flair = inversion_recovery


def fse(pd, r1, r2, tr, te, *, gain=1.0) -> Tensor:
    r"""(Fast) spin echo, eq. 3 of Chalcroft et al.

    .. math:: S = G\,PD\,(1 - e^{-TR\,R_1})\,e^{-TE\,R_2}

    Model: a 90 degree excitation every TR that saturates the longitudinal
    magnetisation, ideal refocusing (the longitudinal effect of the refocusing
    pulses is neglected, TE << TR).

    Parameters
    ----------
    pd, r1, r2 : tensor
        Proton density (a.u.), R1 (1/s), R2 (1/s).
    tr, te : tensor
        Repetition and (effective) echo time, s.
    gain : tensor, optional
        Receive gain.
    """
    pd, r1, r2, tr, te, gain = _tensors(pd, r1, r2, tr, te, gain)
    return gain * pd * (1.0 - torch.exp(-tr * r1)) * torch.exp(-te * r2)
