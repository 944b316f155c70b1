"""The physics-branch input: acquisition parameters as a well-scaled vector.

Borges et al. feed the physics branch the varied parameters and their negative
exponentials (MPRAGE: ``TI, exp(-TI)``; SPGR: ``TR, TE, FA, exp(-TR), exp(-TE),
sin(FA)``), with times in seconds here. Raw, these features differ in scale by
orders of magnitude (``exp(-TR)`` spans 0.90-0.99 over the SPGR range), so each
feature is standardised with the mean and standard deviation it has over the
sequence's in-distribution space (computed by deterministic quadrature, not by
random sampling). A one-hot sequence code lets one network serve several
sequences; features of the other sequences are zero.

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

__all__ = ["FEATURES", "PhysicsEncoder"]

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
    """

    def __init__(self, sequences: tuple[str, ...] = ("MPRAGE", "SPGR"),
                 spaces: dict[str, str] | None = None):
        from .spaces import TRAINING_SPACES

        self.sequences = tuple(sequences)
        self.spaces = dict(TRAINING_SPACES if spaces is None else spaces)
        self.stats: dict[str, list[tuple[float, float]]] = {
            s: [_moments(self.spaces[s], p, t) for p, t in FEATURES[s]] for s in self.sequences
        }
        self.offsets = {}
        off = len(self.sequences)
        for s in self.sequences:
            self.offsets[s] = off
            off += len(FEATURES[s])
        self.dim = off

    def encode(self, sequence: str, params: dict, *, dtype=torch.float32, device=None) -> Tensor:
        """Encode a batch of parameter sets of one sequence; returns ``(B, dim)``."""
        if sequence not in self.offsets:
            raise ValueError(f"the physics encoder knows {self.sequences}, not {sequence!r}")
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
        return {
            "sequences": list(self.sequences),
            "spaces": self.spaces,
            "features": {s: [list(f) for f in FEATURES[s]] for s in self.sequences},
            "standardisation": {s: [list(m) for m in self.stats[s]] for s in self.sequences},
        }
