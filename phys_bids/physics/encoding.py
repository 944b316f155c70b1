"""The physics-branch input: acquisition parameters as a well-scaled vector.

Borges et al. feed the physics branch the varied parameters and their negative
exponentials (MPRAGE: ``TI, exp(-TI)``; SPGR: ``TR, TE, FA, exp(-TR), exp(-TE),
sin(FA)``), with times in seconds here. Raw, these features differ in scale by
orders of magnitude (``exp(-TR)`` spans 0.90-0.99 over the SPGR range), so each
feature is standardised with the mean and standard deviation it has over the
sequence's in-distribution space (computed by deterministic quadrature, not by
random sampling). A one-hot sequence code lets one network serve several
sequences; features of the other sequences are zero.

``mode="contrast"`` describes an acquisition by what it does to tissue instead: the
magnitude signals of reference GM, WM and CSF (given PD, R1, R2*, MT) under the
sequence's own equation, divided by their brain-weighted mean - the levels the
tissues should have in an image divided by its brain mean, the network's input.
These three numbers are bounded, shared by every sequence the engine simulates, and
an out-of-distribution protocol whose contrast resembles a trained one is described
as such (static MPRAGE at TI 2.0 s looks like SPGR at TR 15 ms, FA 15 deg), where a
standardised TI of +5 sd would be an extrapolation.

>>> enc = PhysicsEncoder()
>>> enc.dim
10
>>> x = enc.encode("MPRAGE", {"ti": torch.tensor([0.6, 0.9, 1.2])})
>>> x.shape
torch.Size([3, 10])
>>> [round(float(v), 3) + 0.0 for v in x[:, 2]]  # standardised TI over U(0.6, 1.2)
[-1.732, 0.0, 1.732]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .spaces import SPACES

__all__ = ["CONTRAST_TISSUES", "FEATURES", "PhysicsEncoder"]

_TRANSFORMS = {
    "value": lambda x: x,
    "expneg": lambda x: torch.exp(-x),
    "sin": lambda x: torch.sin(x * (math.pi / 180.0)),
}

#: (parameter, transform) features per sequence, as in the papers.
FEATURES: dict[str, list[tuple[str, str]]] = {
    "MPRAGE": [("ti", "value"), ("ti", "expneg")],
    "SPGR": [("tr", "value"), ("te", "value"), ("fa", "value"),
             ("tr", "expneg"), ("te", "expneg"), ("fa", "sin")],
}


#: Reference tissues of the contrast encoding and the brain fractions weighing their mean.
CONTRAST_TISSUES: dict[str, float] = {"gm": 0.45, "wm": 0.35, "csf": 0.20}


def _moments(space_name: str, param: str, transform: str, n: int = 4096) -> tuple[float, float]:
    """Mean and sd of a transformed uniform parameter by midpoint quadrature."""
    dist = SPACES[space_name].params[param]
    lo, hi = dist.bounds
    x = lo + (hi - lo) * (torch.arange(n, dtype=torch.float64) + 0.5) / n
    y = _TRANSFORMS[transform](x)
    return float(y.mean()), float(y.std(unbiased=False))


class PhysicsEncoder:
    """Encode acquisition parameters for the physics branch.

    Parameters
    ----------
    sequences : tuple of str
        Sequences the network knows, in one-hot order.
    spaces : dict, optional
        In-distribution space per sequence used for standardisation
        (default :data:`phys_bids.physics.spaces.TRAINING_SPACES`).
    mode : ``"parameters"`` (the papers' features, one-hot sequence code) or
        ``"contrast"`` (reference tissue levels, :data:`CONTRAST_TISSUES`).
    tissues : dict, for ``mode="contrast"``
        ``{"gm"|"wm"|"csf": {"pd", "r1", "r2s", "r2", "mt": value}}`` in SI units
        (the caller's priors, e.g. :func:`phys_bids.physics.tissues.reference_tissues`;
        frozen in a model's manifest).
    """

    def __init__(self, sequences: tuple[str, ...] = ("MPRAGE", "SPGR"),
                 spaces: dict[str, str] | None = None, *, mode: str = "parameters",
                 tissues: dict[str, dict[str, float]] | None = None):
        from .spaces import TRAINING_SPACES

        self.sequences = tuple(sequences)
        self.spaces = dict(TRAINING_SPACES if spaces is None else spaces)
        self.mode = mode
        if mode == "parameters":
            self.tissues = None
            self.stats: dict[str, list[tuple[float, float]]] = {
                s: [_moments(self.spaces[s], p, t) for p, t in FEATURES[s]]
                for s in self.sequences
            }
            self.offsets = {}
            off = len(self.sequences)
            for s in self.sequences:
                self.offsets[s] = off
                off += len(FEATURES[s])
            self.dim = off
        elif mode == "contrast":
            if tissues is None or set(tissues) != set(CONTRAST_TISSUES):
                raise ValueError(f"the contrast encoding needs the values of the tissues "
                                 f"{sorted(CONTRAST_TISSUES)}")
            self.tissues = {t: {k: float(v) for k, v in tissues[t].items()}
                            for t in CONTRAST_TISSUES}
            self.offsets = {s: 0 for s in self.sequences}
            self.dim = len(CONTRAST_TISSUES)
            self.stats = {"contrast": self._contrast_moments()}
        else:
            raise ValueError(f"unknown physics encoding {mode!r}: 'parameters' or 'contrast'")

    def levels(self, sequence: str, params: dict) -> Tensor:
        """Contrast mode: reference GM, WM, CSF magnitudes over their weighted mean,
        ``(B, 3)`` float64. Parameters the sequence does not take are ignored; fixed
        parameters of its training space (MPRAGE ``td``, ``tau``) fill in when absent."""
        from .simulate import SEQUENCES

        model = SEQUENCES[sequence]
        space = SPACES[self.spaces[sequence]]
        kw = {}
        for k in (*model.required, *model.optional):
            if k in params:
                kw[k] = torch.as_tensor(params[k], dtype=torch.float64).reshape(-1, 1)
            elif k in space.params and space.params[k].kind == "fixed":
                kw[k] = torch.tensor([[space.params[k].a]], dtype=torch.float64)
            elif k in model.required:
                raise KeyError(f"{sequence} encoding needs parameter {k!r}")
        names = list(CONTRAST_TISSUES)
        maps = [torch.tensor([[self.tissues[t][m] for t in names]], dtype=torch.float64)
                for m in model.maps]
        s = model.function(*maps, **kw).abs()
        w = torch.tensor(list(CONTRAST_TISSUES.values()), dtype=torch.float64)
        return s / (s * w).sum(-1, keepdim=True).clamp_min(1e-12)

    def _contrast_moments(self, n: int = 24) -> list[tuple[float, float]]:
        """Mean of each level over the training spaces (midpoint grids of their uniform
        parameters, the sequences weighted equally, as the generator draws them) and one
        shared scale, the root of the levels' mean variance."""
        per_seq = [self.levels(s, SPACES[self.spaces[s]].midpoint_grid(n))
                   for s in self.sequences]
        means = torch.stack([lv.mean(0) for lv in per_seq]).mean(0)
        sqs = torch.stack([(lv ** 2).mean(0) for lv in per_seq]).mean(0)
        # one scale for the three: they share a unit (the brain mean), and a level that
        # barely moves in training (GM) must not become the most sensitive input
        sd = float((sqs - means ** 2).mean().clamp_min(1e-12).sqrt())
        return [(float(m), sd) for m in means]

    def encode(self, sequence: str, params: dict, *, dtype=torch.float32, device=None) -> Tensor:
        """Encode a batch of parameter sets of one sequence; returns ``(B, dim)``."""
        if sequence not in self.offsets:
            raise ValueError(f"the physics encoder knows {self.sequences}, not {sequence!r}")
        if self.mode == "contrast":
            mu, sd = (torch.tensor(v, dtype=torch.float64) for v in zip(*self.stats["contrast"],
                                                                      strict=True))
            return ((self.levels(sequence, params) - mu) / sd).to(dtype=dtype, device=device)
        cols = []
        for (p, t), (mu, sd) in zip(FEATURES[sequence], self.stats[sequence], strict=True):
            if p not in params:
                raise KeyError(f"{sequence} encoding needs parameter {p!r}")
            v = torch.as_tensor(params[p], dtype=torch.float64).reshape(-1)
            cols.append((_TRANSFORMS[t](v) - mu) / sd)
        feats = torch.stack(torch.broadcast_tensors(*cols), dim=1)
        out = torch.zeros(feats.shape[0], self.dim, dtype=torch.float64)
        out[:, self.sequences.index(sequence)] = 1.0
        o = self.offsets[sequence]
        out[:, o:o + feats.shape[1]] = feats
        return out.to(dtype=dtype, device=device)

    def to_dict(self) -> dict:
        """Frozen description for a model manifest."""
        if self.mode == "contrast":
            return {
                "mode": "contrast",
                "sequences": list(self.sequences),
                "spaces": self.spaces,
                "tissues": self.tissues,
                "weights": dict(CONTRAST_TISSUES),
                "standardisation": {"contrast": [list(m) for m in self.stats["contrast"]]},
            }
        return {
            "sequences": list(self.sequences),
            "spaces": self.spaces,
            "features": {s: [list(f) for f in FEATURES[s]] for s in self.sequences},
            "standardisation": {s: [list(m) for m in self.stats[s]] for s in self.sequences},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PhysicsEncoder:
        """The encoder a manifest describes (:meth:`to_dict`)."""
        return cls(tuple(d["sequences"]), d["spaces"], mode=d.get("mode", "parameters"),
                   tissues=d.get("tissues"))
