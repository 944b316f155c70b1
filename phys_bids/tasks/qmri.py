"""Pydra 1.0 task: qMRI maps estimated from the image, and the physics-harmonised image."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from pydra.compose import python

from . import save_output

__all__ = ["EstimateQMRI"]


@python.define(outputs=["maps", "harmonized"])
def EstimateQMRI(in_template: File, mask_template: File, native: File, mask: File,
                 transform: File, model: str, model_sha256: str, sequence: str, params: dict,
                 reference: dict, threads: int = 1, device: str = "cpu", label: str = ""
                 ) -> tuple[File, File]:
    """PD, R1, R2*, MT estimated on the model grid, and the image re-synthesised at the
    ``reference`` protocol from them; both resampled (linear) onto the native grid, zero
    outside the brain mask.

    ``maps`` is 4D (PD, R1 in 1/s, R2* in 1/s, MTsat in p.u.); ``harmonized`` is the
    reference-protocol image with mean 1000 inside the brain. ``mask_template`` is the
    brain mask on the model grid (:class:`~phys_bids.tasks.segment.Segment`'s ``mask``),
    ``mask`` the native one.
    """
    import nibabel as nib
    import numpy as np

    from phys_bids.models.qmri_net import estimate_maps, synthesise
    from phys_bids.models.registry import load_model
    from phys_bids.preproc.register import channels_to_native
    from phys_bids.progress import step

    with step(label or Path(native).name, "qMRI maps"):
        loaded = load_model(model, device=device)
        if loaded.manifest["weights_sha256"] != model_sha256:
            raise RuntimeError(f"model {model} changed during the run; start again")
        img = nib.load(str(in_template))
        m_tpl = np.asanyarray(nib.load(str(mask_template)).dataobj) > 0
        maps = estimate_maps(loaded, img.get_fdata(dtype=np.float32), m_tpl, sequence, params,
                             threads=threads, device=device)
        ref = nib.load(str(native))
        brain = np.asanyarray(nib.load(str(mask)).dataobj) > 0
        native_maps = channels_to_native(np.moveaxis(maps, 0, -1), img.affine, ref, transform)
        native_maps[~brain] = 0.0
        harm = synthesise(np.moveaxis(native_maps, -1, 0), brain & (native_maps[..., 1] > 0),
                          reference["sequence"], reference["params"])
        hdr = ref.header.copy()
        hdr.set_data_dtype(np.float32)
        hdr.set_data_shape((*ref.shape[:3], 4))
        m_out = save_output(nib.Nifti1Image(native_maps, ref.affine, hdr), "qmri_native.nii.gz",
                            label)
        hdr3 = ref.header.copy()
        hdr3.set_data_dtype(np.float32)
        hdr3.set_data_shape(ref.shape[:3])
        h_out = save_output(nib.Nifti1Image(harm, ref.affine, hdr3), "harmonized_native.nii.gz",
                            label)
    return m_out, h_out
