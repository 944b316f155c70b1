"""The papers' "physics gold standard": tissue classes from the R1 map alone.

Gaussian class likelihoods on R1 with the literature means and standard deviations
of Borges et al. 2019 (sec. 3.1; the paper prints "ms", the values are R1 in 1/s):
GM 0.683 +- 0.080, WM 1.036 +- 0.080, CSF 0.240 +- 0.030, equal priors inside the
brain mask. Independent of the acquisition by construction: the reference that
consistency is measured against in the papers' tables.

>>> import torch
>>> probs = physics_gold_standard(torch.tensor([0.24, 0.68, 1.04]), torch.ones(3, dtype=torch.bool))
>>> probs.argmax(0).tolist()
[3, 1, 2]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PGS_R1", "physics_gold_standard"]

#: class index -> (mean R1, sd) in 1/s
PGS_R1 = {1: (0.683, 0.080), 2: (1.036, 0.080), 3: (0.240, 0.030)}


def physics_gold_standard(r1: Tensor, mask: Tensor) -> Tensor:
    """Posterior class probabilities (4, ...) of background/GM/WM/CSF from an R1 map."""
    loglik = []
    for k in (1, 2, 3):
        mu, sd = PGS_R1[k]
        loglik.append(-0.5 * ((r1 - mu) / sd) ** 2 - torch.log(torch.tensor(sd)))
    post = torch.softmax(torch.stack(loglik), 0) * mask
    return torch.cat([(~mask).to(post.dtype)[None], post])
