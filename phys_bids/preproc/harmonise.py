"""Contrast harmonisation by the signal equation: re-render an image at a reference protocol.

The networks' volumes move with the acquisition they segment (docs/segmentation.md,
consistency benchmark) even though they are told its parameters. This module takes the
acquisition out of the image instead, before a network sees it, in the spirit of the
PhyCHarm paper's "image of another protocol" but with the signal equation alone:

1. **Tissue curve.** Brain tissue is modelled as a one-parameter family: along R1, from
   CSF through cortical and deep GM to WM, PD, R2* and MT are interpolated linearly
   between the prior class means at the field strength (``phys_bids.physics.tissues``).
   Where deep GM folds it (its R2* is higher than cortical GM's and WM's, so at long TE
   it is darker than both), the curve runs from cortical GM straight to WM.
   The acquisition's signal equation maps the curve to intensities ``S_a(R1)``, the
   reference protocol's to ``S_ref(R1)``.
2. **Gain.** The image is ``g S_a`` for an unknown scanner gain ``g``. It is fitted as
   the one free scale of a Gaussian mixture whose component means are the signals of
   CSF, cortical GM and WM, ``g S_a(R1_k)``: the physics fixes their ratios, the data
   the scale (weights and widths are free, so no tissue fractions are assumed). Deep
   GM, between cortex and WM, is left out of the mixture: a fourth component there
   lets EM trade the scale for a re-labelling of the peaks (gain errors of 10 % on
   SPGR and long-TI MPRAGE phantoms against 1.5-2.3 % without it).
3. **Remap.** Each voxel's intensity ``x`` is read as the R1 of the curve that gives
   ``x / g`` and replaced by ``S_ref`` of that R1: one monotone intensity transform per
   acquisition. It is defined only where ``S_a`` is monotone from the CSF to the WM
   prior mean (magnitude images near a tissue null, e.g. MPRAGE at TI 0.2-0.5 s, fold
   the curve; beyond the two means, over the within-class spread, the curve is kept as
   far as it stays monotone and held at its ends after) and where the tissues keep a
   contrast that can be inverted; otherwise :class:`HarmonisationError` says why and
   the caller segments the image as acquired. A curve whose class means are in order
   but which runs back by at most :data:`FOLD_TOLERANCE` of the brightest signal
   between two of them (a kink at a class mean: SPGR near WM's Ernst angle, PD-weighted
   SPGR next to CSF) is flattened there instead, its flat stretch read at the class
   mean it touches, so that every class mean still goes to its reference signal.
4. **Landmarks.** A subject's tissues are not the prior means: a PD or R1 off the curve
   is read as another R1, by an amount that depends on the acquisition (the validation
   phantom head_13, WM PD 0.705 against the prior's 0.69: re-rendered from TI 0.6 s its
   WM is 0.8 % darker than the image acquired at the reference, from TI 1.2 s 0.6 %
   brighter, and its GM and CSF volumes move with TI). The re-rendered brain's CSF, GM
   and WM peaks (a Gaussian mixture with free means started at the reference class
   signals, :data:`LANDMARK_CLASSES`) are moved onto the reference class signals by a
   piecewise-linear map (the end segments' slopes beyond), so that every acquisition of
   one subject has the same class peaks. The price: the subject's own tissue contrast
   at the reference protocol becomes the prior's. Where the mixture's peaks are out of
   order or further from their targets than :data:`LANDMARK_MAX_SD` times the spread
   that subjects' tissues give them, the step is left out and the result says why.
   Opt-in (``apply(..., landmarks=True)``, ``bench_consistency.py --harmonise
   landmarks``): on the validation phantoms it steadied the volumes, on the test
   phantoms' MPRAGE TI series it was mixed (WM CoV lower on all three, GM and CSF
   higher on two or three) and their SPGR draws varied more with it
   (docs/segmentation.md), so the application does not use it.

The network is then told the reference acquisition. What the transform cannot
restore: within-class variation of PD or R2* off the curve, and partial-volume
voxels, whose mixed signal at one protocol is not the mixed signal at another after a
non-linear transform.

>>> import torch
>>> h = Harmoniser("MPRAGE", {"ti": 0.7})
>>> h.monotone
1
>>> s = h.curve_signal(torch.tensor([0.683, 1.036]).double())  # GM, WM at TI 0.7 s
>>> ref = Harmoniser("MPRAGE", {"ti": 0.9}).curve_signal(torch.tensor([0.683, 1.036]).double())
>>> torch.allclose(h.remap(3.0 * s, gain=3.0), ref, rtol=1e-4)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["CURVE_CLASSES", "FOLD_TOLERANCE", "GAIN_CLASSES", "LANDMARK_CLASSES",
           "LANDMARK_MAX_SD", "MIN_STEP", "REFERENCE", "HarmonisationError", "Harmoniser",
           "harmonise"]

#: the protocol every image is re-rendered at: static MPRAGE at the centre of the
#: physics model's MPRAGE training range (TI 0.6-1.2 s)
REFERENCE = ("MPRAGE", {"ti": 0.9, "td": 0.6, "tau": 0.010})
#: the prior classes the tissue curve passes through, in order of R1
CURVE_CLASSES = ("csf", "gm_cortex", "gm_deep", "wm")
#: the classes whose signals are the means of the gain mixture (no deep GM: see above)
GAIN_CLASSES = ("csf", "gm_cortex", "wm")
#: least relative signal step between neighbouring classes along the curve: below it the
#: inverse amplifies noise without bound (the low-flip-angle SPGR corner)
MIN_STEP = 0.02
#: largest run-back of the curve between the CSF and WM means, as a share of the
#: brightest signal, that is flattened rather than refused: kinks of the piecewise-linear
#: tissue curve at a class mean (SPGR near the Ernst angle of WM, PD-weighted SPGR near
#: CSF) run back by 0.01-1 %, below the noise of a clinical image; a tissue null (MPRAGE
#: TI 0.23-0.51 s) puts the class means out of order or runs back by 2-20 %
FOLD_TOLERANCE = 0.01
#: the classes whose peaks in the re-rendered brain are pinned to the reference signals
LANDMARK_CLASSES = GAIN_CLASSES
#: largest distance of a re-rendered peak from its reference signal that the landmark
#: step corrects, in units of that signal's spread across the subjects the priors
#: describe (each class parameter one subject-level SD, in quadrature: at the reference,
#: 1 SD moves WM by 5.6 % of its signal, GM by 6.5 %, CSF by 8.4 %); further, the
#: mixture has found another population (a lesion, a bias field, a mask with skull) and
#: the step is left out. A fixed share of the brightest signal (10 %, the first try)
#: split one test phantom's TI series: its GM peak sat 10-12 % off, about 2 SD
LANDMARK_MAX_SD = 4.0


class HarmonisationError(ValueError):
    """The acquisition's tissue curve cannot be inverted (folded or flat)."""


@dataclass
class Harmoniser:
    """The intensity transform from one acquisition to the reference protocol.

    ``params`` in SI units as the sidecars give them (s, degrees), one value each.
    """

    sequence: str
    params: dict
    field_strength: float = 3.0
    reference: tuple = REFERENCE
    n: int = 4096
    r1_range: tuple = field(default=(0.6, 1.3))  # x the CSF / WM prior means

    def __post_init__(self):
        from ..physics import simulate
        from ..physics.tissues import priors_at

        pri = priors_at(self.field_strength)
        self.classes = {c: {k: pri[c][k].mean for k in ("pd", "r1", "r2s", "mt")}
                        for c in CURVE_CLASSES}
        r1 = np.array([self.classes[c]["r1"] for c in CURVE_CLASSES])
        if np.any(np.diff(r1) <= 0):
            raise HarmonisationError(f"prior R1 means not increasing CSF -> WM: {r1}")
        try:
            self._build(CURVE_CLASSES, simulate)
            self._check_contrast(r1)
        except HarmonisationError:
            # deep GM's higher R2* folds the curve between the two GM classes at long TE,
            # or leaves deep and cortical GM nearly alike (GM on both sides, so nothing of
            # the segmentation depends on it): the curve from CSF through cortical GM
            # straight to WM instead
            self._build(GAIN_CLASSES, simulate)
            self._check_contrast(r1)

    def _check_contrast(self, r1: np.ndarray) -> None:
        """The class signals along the built curve; refused where neighbouring classes of
        it differ by less than :data:`MIN_STEP` of the brightest."""
        # the physics at the prior means (not the flattened curve the remap reads)
        self.class_signal = torch.from_numpy(np.interp(np.asarray(r1), self._r1_raw,
                                                       self._signal_raw))
        self.ref_class_signal = torch.from_numpy(np.interp(np.asarray(r1), self._r1_raw,
                                                           self._ref_raw))
        knots = self.class_signal[[CURVE_CLASSES.index(c) for c in self.curve_classes]]
        rel = np.abs(np.diff(knots.numpy())) / knots.abs().max().item()
        if rel.min() < MIN_STEP:
            k = int(rel.argmin())
            raise HarmonisationError(
                f"{self.sequence} {self._fmt()}: {self.curve_classes[k]} and "
                f"{self.curve_classes[k + 1]} differ by {100 * rel.min():.1f} % of the "
                f"brightest tissue (< {100 * MIN_STEP:.0f} %), too little contrast to invert")

    def _build(self, classes: tuple, simulate) -> None:
        """The curve through the prior means of ``classes`` (in order of R1), its signal
        at the acquisition and at the reference; refused where it folds."""
        self.curve_classes = classes
        self._knots = {k: np.array([self.classes[c][k] for c in classes])
                       for k in ("pd", "r1", "r2s", "mt")}
        r1 = self._knots["r1"]
        # the class means are grid points: the curve's values there are the class signals
        self.r1 = torch.from_numpy(np.union1d(
            np.linspace(self.r1_range[0] * r1[0], self.r1_range[1] * r1[-1], self.n), r1))
        maps = self._maps(self.r1)
        one = {k: torch.as_tensor([float(v)], dtype=torch.float64) for k, v in self.params.items()}
        self.signal = simulate(self.sequence, maps, one)[0]
        rseq, rpar = self.reference
        self.ref_signal = simulate(rseq, maps, {k: torch.tensor([v], dtype=torch.float64)
                                                for k, v in rpar.items()})[0]
        # monotone from the CSF to the WM prior mean, else refused; beyond them (the
        # within-class spread) the curve is kept as far as it stays monotone
        x, sig = self.r1.numpy(), self.signal.numpy()
        self._r1_raw, self._signal_raw = x, sig
        self._ref_raw = self.ref_signal.numpy().copy()
        at = np.searchsorted(x, r1)  # grid points of the class means
        knots = np.diff(sig[at])
        self.monotone = 1 if np.all(knots > 0) else -1 if np.all(knots < 0) else 0
        if self.monotone == 0:
            self.excursion = float("inf")
        else:
            # between neighbouring class means the curve is clipped to their signals and
            # made non-decreasing (in the curve's direction): a shallow run-back there (a
            # kink of the linear PD/R2* interpolation at a class mean) is flattened
            t = self.monotone * sig
            flat = t.copy()
            for i, j in zip(at[:-1], at[1:], strict=True):
                flat[i:j + 1] = np.maximum.accumulate(np.clip(t[i:j + 1], t[i], t[j]))
            # how far that moved the curve, as a share of the brightest signal
            self.excursion = float(np.abs(flat - t).max() / np.abs(sig).max())
        if self.excursion > FOLD_TOLERANCE:
            raise HarmonisationError(
                f"{self.sequence} {self._fmt()}: the magnitude signal is not monotone in R1 "
                "from CSF to WM (it folds: two tissues give one intensity, e.g. near a "
                "tissue's null), so intensities cannot be read as R1")
        # a flattened stretch is one intensity for several R1: it is read at the class
        # mean it touches (the kink's class), else at its middle
        lo, hi = int(at[0]), int(at[-1])
        core = flat[lo:hi + 1]
        start = np.flatnonzero(np.r_[True, core[1:] != core[:-1]])  # runs of one value
        end = np.r_[start[1:], core.size]
        pick = start + (end - start) // 2
        pick[np.searchsorted(start, at - lo, side="right") - 1] = at - lo
        keep = np.zeros(x.size, bool)
        keep[lo + pick] = True
        sig = self.monotone * flat
        steps = np.diff(sig)
        while lo > 0 and steps[lo - 1] * self.monotone > 0:
            lo -= 1
            keep[lo] = True
        while hi < len(steps) and steps[hi] * self.monotone > 0:
            hi += 1
            keep[hi] = True
        self.r1, self.signal, self.ref_signal = (self.r1[keep], torch.from_numpy(sig[keep]),
                                                 self.ref_signal[keep])

    @classmethod
    def from_spec(cls, spec: dict) -> Harmoniser:
        """The transform of a run's ``harmonise_from`` (``{"sequence", "params",
        "field_strength"}``, what ``participant --harmonise-contrast`` passes its tasks)."""
        return cls(spec["sequence"], spec["params"],
                   field_strength=spec.get("field_strength", 3.0))

    def _fmt(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.params.items())

    def _maps(self, r1: Tensor) -> dict[str, Tensor]:
        x = r1.numpy()
        k = self._knots
        return {"r1": r1, **{p: torch.from_numpy(np.interp(x, k["r1"], k[p]))
                             for p in ("pd", "r2s", "mt")}}

    def curve_signal(self, r1: Tensor) -> Tensor:
        """Magnitude signal of the acquisition along the tissue curve at ``r1`` (1/s)."""
        s = self.signal.numpy()
        return torch.from_numpy(np.interp(r1.numpy(), self.r1.numpy(), s))

    def fit_gain(self, values: Tensor, *, iterations: int = 200, max_voxels: int = 200_000
                 ) -> float:
        """Scanner gain of brain intensities ``values`` (1-D): the scale of a Gaussian
        mixture whose means are the signals of :data:`GAIN_CLASSES` times the gain (EM)."""
        x = _brain_sample(values, max_voxels)
        m = self.class_signal.abs()[[CURVE_CLASSES.index(c) for c in GAIN_CLASSES]]
        g = float(x.median() / m.median())
        mu = _mixture(x, g * m, scale_only=True, iterations=iterations)
        return float(mu.sum() / m.sum())

    def landmarks(self, values: Tensor, *, max_voxels: int = 200_000) -> dict:
        """The peaks of :data:`LANDMARK_CLASSES` in re-rendered brain intensities
        ``values`` (reference units, 1-D) and their targets, the reference protocol's
        class signals: ``{"classes", "peaks", "targets"}``, with ``"skipped"`` (why)
        where the peaks cannot be trusted (out of order, or further from their targets
        than :data:`LANDMARK_MAX_SD` times their spread across subjects)."""
        t = self.ref_class_signal.abs()[[CURVE_CLASSES.index(c) for c in LANDMARK_CLASSES]]
        peaks = _mixture(_brain_sample(values, max_voxels), t, scale_only=False)
        out = {"classes": list(LANDMARK_CLASSES), "peaks": [round(float(v), 6) for v in peaks],
               "targets": [round(float(v), 6) for v in t]}
        order = np.sign(np.diff(t.numpy()))
        z = ((peaks - t).abs() / self.reference_spread()).numpy()
        out["z"] = [round(float(v), 3) for v in z]
        if not np.all(np.sign(np.diff(peaks.numpy())) == order):
            out["skipped"] = "the re-rendered tissue peaks are out of order"
        elif z.max() > LANDMARK_MAX_SD:
            k = int(z.argmax())
            out["skipped"] = (f"the re-rendered {LANDMARK_CLASSES[k]} peak lies {z[k]:.1f} "
                              f"subject SDs from its reference signal (> {LANDMARK_MAX_SD:g})")
        return out

    def reference_spread(self) -> Tensor:
        """The spread of the reference protocol's :data:`LANDMARK_CLASSES` signals across
        subjects: each class parameter moved by its prior's subject-level SD, the signal
        changes added in quadrature (reference units)."""
        from ..physics import simulate
        from ..physics.tissues import priors_at

        pri = priors_at(self.field_strength)
        rseq, rpar = self.reference
        one = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in rpar.items()}
        params = ("pd", "r1", "r2s", "mt")
        rows = []  # per class: the means, then each parameter one SD up
        for c in LANDMARK_CLASSES:
            base = {k: self.classes[c][k] for k in params}
            rows.append(base)
            rows += [{**base, k: base[k] + pri[c][k].sd} for k in params]
        maps = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in params}
        sig = simulate(rseq, maps, one)[0].abs().reshape(len(LANDMARK_CLASSES), 1 + len(params))
        return (sig[:, 1:] - sig[:, :1]).pow(2).sum(1).sqrt()

    def remap(self, image: Tensor, *, gain: float) -> Tensor:
        """Intensities of ``image`` (acquired, gain ``gain``) at the reference protocol,
        in its units; outside the curve's range the ends are held."""
        s, ref = self.signal.numpy(), self.ref_signal.numpy()
        if self.monotone < 0:
            s, ref = s[::-1], ref[::-1]
        x = image.detach().cpu().double().numpy() / gain
        return torch.from_numpy(np.interp(x, s, ref)).to(image.dtype)

    def apply(self, image: Tensor, mask: Tensor, *, landmarks: bool = False
              ) -> tuple[Tensor, dict]:
        """``image`` re-rendered at the reference protocol (zero outside ``mask``), with
        the gain fitted on its brain, the reference protocol (what to tell the physics
        branch) and, with ``landmarks``, the class peaks moved onto the reference class
        signals (:meth:`landmarks`; ``info["landmarks"]`` says what was done)."""
        gain = self.fit_gain(image[mask])
        out = self.remap(image, gain=gain)
        info = {"gain": gain, "reference": {"sequence": self.reference[0],
                                            **self.reference[1]}}
        if landmarks:
            lm = self.landmarks(out[mask])
            if "skipped" not in lm:
                out = _piecewise_linear(out, torch.tensor(lm["peaks"], dtype=torch.float64),
                                        torch.tensor(lm["targets"], dtype=torch.float64))
            info["landmarks"] = lm
        return out * mask, info


def _brain_sample(values: Tensor, max_voxels: int) -> Tensor:
    """The finite values of ``values`` as float64, at most ``max_voxels`` of them by a
    fixed stride (the same voxels every run); refused where under 100."""
    x = values.double().flatten()
    x = x[torch.isfinite(x)]
    if x.numel() < 100:
        raise HarmonisationError(f"{x.numel()} brain voxels: too few to fit the gain")
    if x.numel() > max_voxels:
        x = x[:: int(np.ceil(x.numel() / max_voxels))]
    return x


def _mixture(x: Tensor, means: Tensor, *, scale_only: bool, iterations: int = 200) -> Tensor:
    """The means of a 1-D Gaussian mixture fitted to ``x`` by EM, started at ``means``:
    with ``scale_only`` they keep their ratios (one common scale is fitted), else each is
    free. Weights and widths are free."""
    m = means.double().clone()
    mu = m.clone()
    var = torch.full_like(m, float((0.1 * x.std()) ** 2 + 1e-12))
    w = torch.full_like(m, 1.0 / len(m))
    for _ in range(iterations):
        ll = (-0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * torch.log(var) + torch.log(w))
        r = torch.softmax(ll, 1)
        nk = r.sum(0) + 1e-9
        if scale_only:  # the means are g * m: the least-squares g of the weighted data
            g = ((r * x[:, None]) * m / var).sum() / ((r * m ** 2) / var).sum()
            new = g * m
        else:
            new = (r * x[:, None]).sum(0) / nk
        w = nk / nk.sum()
        var = ((r * (x[:, None] - new) ** 2).sum(0) / nk).clamp_min(
            (1e-3 * float(new.abs().max())) ** 2)
        done = float((new - mu).abs().max()) <= 1e-7 * float(mu.abs().max())
        mu = new
        if done:
            break
    return mu


def _piecewise_linear(image: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """``image`` through the increasing or decreasing map with ``xs -> ys`` (linear in
    between, the end segments' slopes beyond), clipped at zero (a magnitude).

    >>> _piecewise_linear(torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0]),
    ...                   torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 5.0]))
    tensor([1.0000, 1.5000, 2.0000, 3.5000, 6.5000])
    """
    x = image.detach().cpu().double()
    if xs[0] > xs[-1]:
        xs, ys = xs.flip(0), ys.flip(0)
    slope = (ys[1:] - ys[:-1]) / (xs[1:] - xs[:-1])
    i = (torch.searchsorted(xs, x.contiguous()) - 1).clamp(0, len(xs) - 2)
    out = ys[i] + slope[i] * (x - xs[i])
    return out.clamp_min(0).to(image.dtype)


def harmonise(image: Tensor, mask: Tensor, sequence: str, params: dict, *,
              field_strength: float = 3.0) -> tuple[Tensor, dict]:
    """Re-render a skull-stripped image at :data:`REFERENCE`.

    Returns the image (zero outside ``mask``) and what was done: the fitted gain, the
    reference protocol (what to tell the physics branch). Raises
    :class:`HarmonisationError` where the acquisition's curve cannot be inverted.
    """
    h = Harmoniser(sequence, {k: float(np.asarray(v).reshape(-1)[0]) for k, v in params.items()},
                   field_strength=field_strength)
    return h.apply(image, mask)
