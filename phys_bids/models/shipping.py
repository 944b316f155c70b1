"""A small, fixed prediction of a shipped model, stored with the tests to pin its weights."""

from __future__ import annotations

import torch

from ..threads import thread_limit

__all__ = ["reference_prediction"]


@torch.no_grad()
def reference_prediction(model, *, seed: int = 0, shape=(32, 32, 32), ti: float = 0.9
                         ) -> list[float]:
    """Mean class probabilities (a qMRI model: mean maps) of ``model`` on a seeded random
    image (MPRAGE, TI=``ti``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *shape), generator=g)
    p = model.encoder.encode("MPRAGE", {"ti": [ti]}) if model.physics else None
    with thread_limit(1):  # the reduction order must not depend on the machine
        out = model.network(x, p)[0]
    if model.manifest.get("kind") == "qmri":
        from .qmri_net import raw_to_maps

        out = raw_to_maps(out)
    else:
        out = torch.softmax(out, 1)
    return [round(v, 7) for v in out.double().mean((2, 3, 4))[0].tolist()]
