"""Helpers the benchmark scripts share; the scripts import from here, never from each other.

Run any script from the repository root (``python bench/<script>.py``); this folder is
then on ``sys.path``, so ``from common import ...`` finds this module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from phys_bids.models.evaluation import dice

__all__ = ["best", "TISSUES", "run", "error_vs_truth", "clear", "SAME", "atropos_labels"]


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
    return min(times)


TISSUES = ("GM", "WM", "CSF")


def run(cmd: list[str]) -> float:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "phys_bids", *cmd], capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit(f"phys-bids failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.time() - t0


def error_vs_truth(rows: list[dict], truth: dict, column: str = "{t}_ml") -> dict:
    """Mean signed and mean absolute % error of the ``volumes.tsv`` rows' ``column``
    (``{t}`` is the tissue: ``{t}_ml`` the model, ``{t}_atropos_ml`` Atropos) against
    ``truth[participant_id][tissue]`` (mL), per tissue, over the ``n`` rows that have a
    volume (a scan whose classical segmentation failed reads ``n/a``; none: ``None``)."""
    if not rows:
        raise ValueError("no volume rows to compare with the truth")
    err = {}
    for t in TISSUES:
        col = column.format(t=t)
        rel = [100 * (float(r[col]) - truth[r["participant_id"]][t])
               / truth[r["participant_id"]][t] for r in rows if r[col] not in ("n/a", "")]
        err[t] = {"n": len(rel),
                  "mean_signed_pct": sum(rel) / len(rel) if rel else None,
                  "mean_abs_pct": sum(abs(x) for x in rel) / len(rel) if rel else None}
    return err


def clear(*scratch: Path) -> None:
    """Remove the bench's own scratch folders: outputs or a Pydra cache of an earlier
    run (other weights are refused by the participant level) would make it stop or
    time a resume instead of a run."""
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)


#: settings two benchmark runs must share to be compared (a file from before flip TTA
#: and the clamp were recorded ran without them)
SAME = {"n_images": None, "seed": None, "window": None,
        "flip_tta": "none", "physics_clamp": "none"}


def atropos_labels(image: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor,
                   restarts: list | None = None):
    """Atropos k-means (phys_bids.models.classical), its 3 clusters then re-assigned to
    GM/WM/CSF by best total overlap with the anatomy (an oracle that favours Atropos);
    ``restarts`` gets the centres of a k-means started again from the brain's
    percentiles (phys_bids.models.classical.atropos_labels)."""
    import itertools

    from phys_bids.models.classical import atropos_labels as classical_labels

    lab = torch.from_numpy(classical_labels(image.numpy(), mask.numpy(),
                                            restarts=restarts).astype(np.int64))
    best, out = -1.0, None
    for perm in itertools.permutations((1, 2, 3)):
        cand = torch.zeros_like(lab)
        for c, t in zip((1, 2, 3), perm, strict=True):
            cand[lab == c] = t
        score = sum(dice(cand, anatomy, k) for k in (1, 2, 3))
        if score > best:
            best, out = score, cand
    return out
