"""Named acquisition-parameter spaces from the papers, seeded samplers, membership.

Parameter names are the keyword names of :mod:`phys_bids.physics.sequences`
(``ti``, ``tr``, ``te``, ``fa``, ``td``, ``tau``, ``echo_spacing``, ...), in SI units
(s, degrees). Every space records its source.

>>> space = SPACES["mprage-id"]
>>> p = space.sample(4, generator=torch.Generator().manual_seed(0))
>>> sorted(p)
['tau', 'td', 'ti']
>>> bool(((p["ti"] >= 0.6) & (p["ti"] <= 1.2)).all())
True
>>> in_training_space("MPRAGE", {"ti": 1.5})
(False, ['ti'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "ParamDist",
    "ParameterSpace",
    "SPACES",
    "TRAINING_SPACES",
    "in_training_space",
]


@dataclass(frozen=True)
class ParamDist:
    """One parameter's distribution.

    kind:
      ``fixed`` (value ``a``), ``uniform`` on ``[a, b]``, ``loguniform`` (``10**U(log10 a,
      log10 b)``), ``normal`` (mean ``a``, sd ``b``; absolute value taken, as in
      Chalcroft et al.), ``lognormal10`` (``10**N(log10 a, |log10 b|)``).
    """

    kind: str
    a: float
    b: float = 0.0
    unit: str = "s"

    def sample(self, n: int, generator: torch.Generator | None, dtype=torch.float64) -> Tensor:
        if self.kind == "fixed":
            return torch.full((n,), self.a, dtype=dtype)
        u = torch.rand(n, generator=generator, dtype=dtype)
        if self.kind == "uniform":
            return self.a + (self.b - self.a) * u
        if self.kind == "loguniform":
            la, lb = math.log10(self.a), math.log10(self.b)
            return 10.0 ** (la + (lb - la) * u)
        z = torch.randn(n, generator=generator, dtype=dtype)
        if self.kind == "normal":
            return (self.a + self.b * z).abs()
        if self.kind == "lognormal10":
            return 10.0 ** (math.log10(self.a) + abs(math.log10(self.b)) * z)
        raise ValueError(f"unknown distribution kind {self.kind!r}")

    @property
    def bounds(self) -> tuple[float, float]:
        """Support used for membership: exact for fixed/uniform/loguniform, +-3 sd otherwise."""
        if self.kind == "fixed":
            return (self.a, self.a)
        if self.kind in ("uniform", "loguniform"):
            return (self.a, self.b)
        if self.kind == "normal":
            return (max(0.0, self.a - 3 * self.b), self.a + 3 * self.b)
        s = abs(math.log10(self.b))
        return (10 ** (math.log10(self.a) - 3 * s), 10 ** (math.log10(self.a) + 3 * s))


@dataclass(frozen=True)
class ParameterSpace:
    """A named distribution over a sequence's acquisition parameters."""

    name: str
    sequence: str
    params: dict[str, ParamDist]
    reference: str
    description: str = ""
    varied: tuple[str, ...] = field(default=())

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype=torch.float64) -> dict[str, Tensor]:
        """Draw ``n`` parameter sets; returns ``{name: tensor of shape (n,)}``."""
        return {k: d.sample(n, generator, dtype) for k, d in self.params.items()}

    def outside(self, params: dict, *, rtol: float = 1e-6) -> list[str]:
        """Names of the varied parameters of one parameter set outside this space.

        Fixed parameters of the space (e.g. MPRAGE ``td``) are not checked: they are
        properties of the simulation model, not of the acquisition.
        """
        bad = []
        for k in self.varied:
            if k not in params:
                continue
            v = torch.as_tensor(params[k], dtype=torch.float64)
            lo, hi = self.params[k].bounds
            tol = rtol * max(abs(lo), abs(hi))
            if bool(((v < lo - tol) | (v > hi + tol)).any()):
                bad.append(k)
        return bad

    def within(self, other: ParameterSpace) -> bool:
        """Whether every parameter of this space has its support inside ``other``'s
        (same parameter names): a corner of a space, e.g. ``spgr-id-lowfa`` of
        ``spgr-id``."""
        if set(self.params) != set(other.params):
            return False
        for k, d in self.params.items():
            lo, hi = d.bounds
            olo, ohi = other.params[k].bounds
            if lo < olo or hi > ohi:
                return False
        return True

    def contains(self, params: dict) -> bool:
        """Whether every varied parameter lies inside this space."""
        return not self.outside(params)

    def midpoint_grid(self, n: int) -> dict[str, Tensor]:
        """Every combination of ``n`` midpoints per varied parameter (the cell centres of
        an even ``n``-division of its bounds), each as a flat float64 tensor of
        ``n ** len(varied)`` values; fixed parameters are left out.

        >>> [round(t, 6) for t in SPACES["mprage-id"].midpoint_grid(4)["ti"].tolist()]
        [0.675, 0.825, 0.975, 1.125]
        >>> SPACES["spgr-id"].midpoint_grid(3)["fa"].shape  # 3 TR x 3 TE x 3 FA
        torch.Size([27])
        """
        axes = {k: d.bounds for k, d in self.params.items() if k in self.varied}
        pts = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        grids = torch.meshgrid(*[lo + (hi - lo) * pts for lo, hi in axes.values()],
                               indexing="ij")
        return {k: g.reshape(-1) for k, g in zip(axes, grids, strict=True)}

    def clamp(self, params: dict) -> dict:
        """The nearest parameter set inside this space's box: each varied parameter
        clipped to its bounds, the others (and any this space does not vary) as given.

        What a physics branch is told when it should not extrapolate: the acquisition
        of the training space closest in each parameter.

        >>> ti = torch.tensor([0.1, 0.9, 2.0], dtype=torch.float64)
        >>> SPACES["mprage-id"].clamp({"ti": ti})["ti"].tolist()
        [0.6, 0.9, 1.2]
        >>> SPACES["spgr-id"].clamp({"tr": 0.2, "te": 0.005, "fa": 5.0})
        {'tr': 0.1, 'te': 0.005, 'fa': 15.0}
        """
        out = dict(params)
        for k in self.varied:
            if k not in params:
                continue
            lo, hi = self.params[k].bounds
            v = params[k]
            out[k] = (v.clamp(lo, hi) if isinstance(v, Tensor)
                      else min(max(float(v), lo), hi) if isinstance(v, (int, float))
                      else [min(max(float(x), lo), hi) for x in v])
        return out


def _u(a, b, unit="s"):
    return ParamDist("uniform", a, b, unit)


def _fixed(a, unit="s"):
    return ParamDist("fixed", a, unit=unit)


_BORGES = "Borges et al., physics-informed segmentation, sec. 3.3"
_BORGES2 = "Borges et al., acquisition-invariant segmentation with uncertainty, sec. 3.2 and 4"
_CHALCROFT = "Chalcroft et al., qMRI synthetic data for stroke, sec. 2.1 and 2.3"

SPACES: dict[str, ParameterSpace] = {
    s.name: s
    for s in [
        ParameterSpace(
            "mprage-id", "MPRAGE",
            {"ti": _u(0.6, 1.2), "td": _fixed(0.6), "tau": _fixed(0.010)},
            _BORGES, "static MPRAGE, in-distribution (training) TI range", ("ti",)),
        ParameterSpace(
            "mprage-ood", "MPRAGE",
            {"ti": _u(0.1, 2.0), "td": _fixed(0.6), "tau": _fixed(0.010)},
            _BORGES2, "static MPRAGE, out-of-distribution TI range", ("ti",)),
        ParameterSpace(
            "spgr-id", "SPGR",
            {"tr": _u(0.015, 0.100), "te": _u(0.004, 0.010), "fa": _u(15.0, 75.0, "deg")},
            _BORGES, "SPGR, in-distribution (training) range", ("tr", "te", "fa")),
        ParameterSpace(
            "spgr-id-lowfa", "SPGR",
            {"tr": _u(0.015, 0.100), "te": _u(0.004, 0.010), "fa": _u(15.0, 30.0, "deg")},
            "phys-bids: the low-flip-angle corner of spgr-id (docs/segmentation.md)",
            "SPGR, flip angle 15-30 deg of the training range: the draws where WM and GM "
            "are nearly the same intensity (for oversampling in training, SynthConfig."
            "oversample)", ("tr", "te", "fa")),
        ParameterSpace(
            "spgr-ood", "SPGR",
            {"tr": _u(0.010, 0.200), "te": _u(0.002, 0.020), "fa": _u(5.0, 90.0, "deg")},
            _BORGES2, "SPGR, out-of-distribution range", ("tr", "te", "fa")),
        ParameterSpace(
            "qsynth-flair", "FLAIR",
            {"te": ParamDist("lognormal10", 0.02, 0.1),
             "tr": ParamDist("loguniform", 0.001, 5.0),
             "ti": ParamDist("loguniform", 0.001, 3.0)},
            _CHALCROFT, "FLAIR as printed (TE 10^N(log10 0.02, |log10 0.1|) s)",
            ("te", "tr", "ti")),
        ParameterSpace(
            "qsynth-fse", "FSE",
            {"te": ParamDist("loguniform", 0.001, 3.0), "tr": ParamDist("loguniform", 0.001, 3.0)},
            _CHALCROFT, "fast spin echo", ("te", "tr")),
        ParameterSpace(
            "qsynth-mprage", "MPRAGE-RO",
            {"tr": ParamDist("normal", 2.3, 0.23), "ti": _u(0.6, 0.9),
             "echo_spacing": _u(0.004, 0.008), "te": _u(0.002, 0.004),
             "fa": _u(5.0, 12.0, "deg")},
            _CHALCROFT,
            "MPRAGE with read-out; the paper prints TR ~ N(23, 2.3) s, read here as N(2.3, "
            "0.23) s, the inversion repetition time (qATLAS draws TR in [1.9, 2.5] s)",
            ("tr", "ti", "echo_spacing", "te", "fa")),
        ParameterSpace(
            "qsynth-gre", "SPGR",
            {"te": ParamDist("loguniform", 0.002, 0.08), "tr": ParamDist("loguniform", 0.005, 5.0),
             "fa": _u(5.0, 50.0, "deg")},
            _CHALCROFT, "gradient echo", ("te", "tr", "fa")),
        ParameterSpace(
            "qatlas-mprage", "MPRAGE-RO",
            {"tr": _u(1.9, 2.5), "ti": _u(0.6, 1.2), "te": _u(0.002, 0.004),
             "fa": _u(5.0, 12.0, "deg"), "field_strength": _u(0.3, 7.0, "T")},
            _CHALCROFT, "qATLAS MPRAGE simulation ranges", ("tr", "ti", "te", "fa")),
    ]
}

#: The training (in-distribution) space of each sequence the networks know.
TRAINING_SPACES: dict[str, str] = {"MPRAGE": "mprage-id", "SPGR": "spgr-id"}


def in_training_space(sequence: str, params: dict,
                      training_spaces: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    """Is a parameter set inside the training space of ``sequence``?

    Returns ``(inside, names_outside)``. A sequence with no training space is
    reported as outside, with ``["sequence"]``.
    """
    spaces = TRAINING_SPACES if training_spaces is None else training_spaces
    if sequence not in spaces:
        return False, ["sequence"]
    bad = SPACES[spaces[sequence]].outside(params)
    return (not bad), bad
