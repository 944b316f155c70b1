"""A classical intensity-based tissue segmentation, the reference for site effects.

Atropos (antspyx) k-means with three classes inside the brain mask, the usual
classical baseline of the papers (physics-informed-segmentation compares with GIF,
acquisition-invariant-segmentation-uncertainty with SPM/GIF; Atropos is what installs
here). Clusters are named by their mean intensity, which for T1-weighted contrast
(MPRAGE and T1-weighted SPGR alike) is CSF < GM < WM. It knows nothing of the
acquisition, so its volumes move with the contrast: what the physics model is
compared with at the group level and in bridging.
"""

from __future__ import annotations

import tempfile

import numpy as np

__all__ = ["atropos_labels", "atropos_volumes", "ClassicalSegmentationError"]


class ClassicalSegmentationError(ValueError):
    """Atropos could not segment the image (e.g. an empty class at a contrast null)."""


def atropos_labels(image: np.ndarray, mask: np.ndarray, *, iterations: int = 5,
                   restarts: list | None = None) -> np.ndarray:
    """Labels 0 (outside the mask), 1 GM, 2 WM, 3 CSF from Atropos k-means (3 classes).

    Atropos starts k-means from centres spread evenly over the intensity range. Where
    nothing lies between the tissue peaks (an image without partial volume, a CSF peak
    far below GM and WM) the middle centre wins no voxel and Atropos stops with an
    empty class; it is then started again from the 10 / 50 / 90 % percentiles of the
    brain's intensities, and ``restarts`` (a list, when given) gets those centres.
    ClassicalSegmentationError where that fails too.

    >>> rng = np.random.default_rng(0)
    >>> img = np.concatenate([np.full(400, 0.3), np.full(400, 0.7), np.full(400, 1.0)])
    >>> img = (img + rng.normal(0, 0.02, img.size)).reshape(12, 10, 10)
    >>> lab = atropos_labels(img, np.ones(img.shape, bool))
    >>> [int((lab == k).sum()) for k in (1, 2, 3)]  # GM, WM, CSF
    [400, 400, 400]
    >>> int(lab[0, 0, 0]), int(lab[-1, -1, -1])  # darkest is CSF, brightest WM
    (3, 2)
    """
    import ants

    mask = np.asarray(mask, bool)
    if mask.sum() < 3:
        raise ValueError("the brain mask has fewer than 3 voxels")
    x = np.asarray(image, np.float64)
    # clipped to the 0.5-99.5 % percentiles of the brain: Atropos seeds k-means over the
    # intensity range, and a few bright voxels (vessels, noise) otherwise claim a class
    # of their own (measured on the demo: a 'WM' of 5 mL)
    lo, hi = np.percentile(x[mask], [0.5, 99.5])
    x = np.clip(x, lo, hi)
    # scaled to a brain mean of 100: Atropos refuses class covariances below 1e-6, which
    # small signal scales produce
    x = x * (100.0 / max(float(np.abs(x[mask]).mean()), 1e-12))
    img = ants.from_numpy(x.astype(np.float32))
    msk = ants.from_numpy(mask.astype(np.float32))

    def run(init: str) -> np.ndarray:
        # ants.atropos writes its posteriors to tempfile.mktemp() names and never
        # deletes them (3 files per call): give it a folder of its own, removed afterwards
        with tempfile.TemporaryDirectory(prefix="phys-bids-atropos-") as tmp:
            before, tempfile.tempdir = tempfile.tempdir, tmp
            try:
                # r=0 (--use-random-seed 0): a constant seed. Atropos otherwise seeds
                # from the clock, and two calls on one image differ in tens of voxels
                seg = ants.atropos(a=img, m="[0.1,1x1x1]", c=f"[{iterations},0]", i=init,
                                   x=msk, r=0, verbose=0)
                return seg["segmentation"].numpy().astype(np.int64)
            except Exception as err:  # antspyx raises a bare Exception on a non-zero exit
                raise ClassicalSegmentationError(f"Atropos failed ({err})") from None
            finally:
                tempfile.tempdir = before

    try:
        lab = run("kmeans[3]")
    except ClassicalSegmentationError:
        centres = np.percentile(x[mask], [10, 50, 90])
        if not np.all(np.diff(centres) > 0):  # fewer than three intensity levels
            raise
        lab = run("kmeans[3,{:.4f}x{:.4f}x{:.4f}]".format(*centres))
        if restarts is not None:
            restarts.append([float(c) for c in centres])
    means = [float(x[lab == k].mean()) if (lab == k).any() else np.inf for k in (1, 2, 3)]
    order = np.argsort(means)  # darkest .. brightest cluster
    out = np.zeros(lab.shape, np.uint8)
    for tissue, cluster in zip((3, 1, 2), order + 1, strict=True):  # CSF, GM, WM
        out[lab == cluster] = tissue
    out[~mask] = 0
    return out


def atropos_volumes(image: np.ndarray, mask: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """GM, WM and CSF volumes (mL) of :func:`atropos_labels`."""
    lab = atropos_labels(image, mask)
    return {t: float((lab == k).sum() * voxel_ml) for k, t in ((1, "GM"), (2, "WM"), (3, "CSF"))}
