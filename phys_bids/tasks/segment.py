"""Pydra 1.0 tasks for tissue segmentation on the model grid and the way back to native."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from pydra.compose import python

from phys_bids.physics.tissues import TARGETS

from . import save_output

__all__ = ["Segment", "BayesSegment", "ToNative", "TISSUES"]

#: dseg values and names (0 is background), as in ``dseg.tsv``.
TISSUES = {k: name for k, name in enumerate(TARGETS) if k}


@python.define(outputs=["probseg", "dseg", "mask", "sd", "mc_volumes"])
def Segment(in_template: File, mask: File, transform: File, template: File, model: str,
            model_sha256: str, sequence: str, params: dict, threads: int = 1,
            device: str = "cpu", mc_samples: int = 0, seed: int = 0, label: str = ""
            ) -> tuple[File, File, File, File, list]:
    """Tissue probabilities (background, GM, WM, CSF) of a template-space brain.

    ``sequence`` and ``params`` are what the physics branch is told, as the caller
    decided (:func:`phys_bids.workflows.acquisition.prepare_run`); this task never
    changes them.

    With ``mc_samples`` > 0 the probabilities are the Monte-Carlo mean, ``sd`` their
    per-voxel standard deviation and ``mc_volumes`` the per-sample GM, WM, CSF volumes
    (mL); otherwise ``sd`` is all zeros and ``mc_volumes`` empty.
    ``model_sha256`` only keys the cache: new weights under the same name rerun.
    """
    import nibabel as nib
    import numpy as np

    from phys_bids.models.registry import load_model
    from phys_bids.models.segment import segment_brain
    from phys_bids.preproc.register import mask_on_template
    from phys_bids.progress import step

    name = label or Path(in_template).name
    with step(name, "segmentation"):
        loaded = load_model(model, device=device)
        if loaded.manifest["weights_sha256"] != model_sha256:
            raise RuntimeError(f"model {model} changed during the run; start again")
        tpl = nib.load(str(template))
        img = nib.load(str(in_template))
        mdata = mask_on_template(nib.load(str(mask)), tpl, transform)
        data = img.get_fdata(dtype=np.float32)
        res = segment_brain(loaded, data, mdata, sequence, params,
                            threads=threads, device=device, mc_samples=mc_samples, seed=seed)
        probs = np.moveaxis(res.probabilities, 0, -1)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        p_out = save_output(nib.Nifti1Image(probs.astype(np.float32), img.affine, hdr),
                            "probseg_template.nii.gz", label)
        hdr8 = img.header.copy()
        hdr8.set_data_dtype(np.uint8)
        d_out = save_output(nib.Nifti1Image(probs.argmax(-1).astype(np.uint8), img.affine, hdr8),
                            "dseg_template.nii.gz", label)
        m_out = save_output(nib.Nifti1Image(mdata.astype(np.uint8), img.affine, hdr8),
                            "mask_template.nii.gz", label)
        sd = np.zeros_like(probs) if res.sd is None else np.moveaxis(res.sd, 0, -1)
        s_out = save_output(nib.Nifti1Image(sd.astype(np.float32), img.affine, hdr),
                            "sd_template.nii.gz", label)
        vols = [] if res.volumes is None else [[round(float(v), 6) for v in row]
                                                for row in res.volumes]
    return p_out, d_out, m_out, s_out, vols


@python.define(outputs=["probseg", "dseg", "mask", "sd", "fit"])
def BayesSegment(in_template: File, mask: File, transform: File, template: File,
                 template_gm: File, template_wm: File, template_mask: File, sequence: str,
                 params: dict, field_strength: float = 3.0, threads: int = 1,
                 label: str = "") -> tuple[File, File, File, File, dict]:
    """Tissue fractions of a template-space brain by the physics-tied Bayesian
    segmentation (:func:`phys_bids.models.bayes.bayes_segment`): class means from the
    signal equation at ``sequence``/``params`` (the acquisition as read from the
    sidecar) and ``field_strength``, partial-volume classes, the template's GM/WM maps
    (CSF: the rest of the template's brain mask) as spatial prior, and a Markov random
    field. Same outputs as :func:`Segment` (``sd``: the per-voxel posterior SD of each
    tissue fraction) plus ``fit``: gain, class signals, contrast-to-noise per tissue
    pair and the volumes' posterior SD on the template grid."""
    import nibabel as nib
    import numpy as np

    from phys_bids.models.bayes import bayes_segment
    from phys_bids.preproc.register import mask_on_template
    from phys_bids.progress import step
    from phys_bids.threads import thread_limit

    name = label or Path(in_template).name
    with step(name, "segmentation (physics-tied Bayesian)"), thread_limit(threads):
        tpl = nib.load(str(template))
        img = nib.load(str(in_template))
        mdata = mask_on_template(nib.load(str(mask)), tpl, transform)
        gm = nib.load(str(template_gm)).get_fdata(dtype=np.float32)
        wm = nib.load(str(template_wm)).get_fdata(dtype=np.float32)
        brain = nib.load(str(template_mask)).get_fdata(dtype=np.float32) > 0
        csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
        res = bayes_segment(img.get_fdata(dtype=np.float32), mdata, sequence, params,
                            prior=np.stack([gm, wm, csf]), field_strength=field_strength,
                            voxel_ml=float(np.prod(zooms)) / 1000.0)
        probs = np.zeros((*mdata.shape, 4), np.float32)
        probs[..., 1:] = np.moveaxis(res.fractions, 0, -1)
        probs[~mdata, 0] = 1.0
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        p_out = save_output(nib.Nifti1Image(probs, img.affine, hdr), "probseg_template.nii.gz",
                            label)
        hdr8 = img.header.copy()
        hdr8.set_data_dtype(np.uint8)
        d_out = save_output(nib.Nifti1Image(probs.argmax(-1).astype(np.uint8), img.affine,
                                            hdr8), "dseg_template.nii.gz", label)
        m_out = save_output(nib.Nifti1Image(mdata.astype(np.uint8), img.affine, hdr8),
                            "mask_template.nii.gz", label)
        sd = np.zeros_like(probs)
        sd[..., 1:] = np.moveaxis(res.fraction_sd, 0, -1)
        s_out = save_output(nib.Nifti1Image(sd, img.affine, hdr), "sd_template.nii.gz", label)
        fit = {"gain": round(res.gain, 6),
               "signals": {k: round(v, 6) for k, v in res.signals.items()},
               "prior_signals": {k: round(v, 6) for k, v in res.prior_signals.items()},
               "noise_sd": round(res.noise_sd, 6),
               "cnr": {k: round(v, 3) for k, v in res.cnr.items()},
               "volumes_ml": {k: round(v, 4) for k, v in res.volumes_ml.items()},
               "volume_sd_ml": {k: round(v, 4) for k, v in res.volume_sd_ml.items()},
               "iterations": res.iterations, "converged": res.converged}
    return p_out, d_out, m_out, s_out, fit


@python.define(outputs=["probseg", "dseg", "volumes", "sd"])
def ToNative(probseg: File, native: File, mask: File, transform: File, sd: File,
             label: str = "") -> tuple[File, File, dict, File]:
    """Probabilities back onto the native grid (linear), labels from them, volumes in mL.

    The native header is kept exactly. Volumes are sums of probabilities (partial
    volume counts) times the voxel volume; ``ICV`` is GM + WM + CSF.
    """
    import nibabel as nib
    import numpy as np

    from phys_bids.physics.tissues import TARGETS
    from phys_bids.preproc.register import channels_to_native
    from phys_bids.progress import step

    with step(label or Path(native).name, "back to native space"):
        ref = nib.load(str(native))

        def native_channels(path):
            tp = nib.load(str(path))
            return channels_to_native(tp.get_fdata(dtype=np.float32), tp.affine, ref, transform)

        p = native_channels(probseg)
        brain = np.asanyarray(nib.load(str(mask)).dataobj) > 0
        sdn = native_channels(sd)
        sdn[~brain] = 0
        p[~brain] = 0
        p[~brain, 0] = 1
        p /= np.maximum(p.sum(-1, keepdims=True), 1e-6)
        zooms = np.sqrt((ref.affine[:3, :3] ** 2).sum(0))
        voxel_ml = float(np.prod(zooms)) / 1000.0
        volumes = {name: round(float(p[..., k].sum(dtype=np.float64)) * voxel_ml, 4)
                   for k, name in enumerate(TARGETS) if k}
        volumes["ICV"] = round(volumes["GM"] + volumes["WM"] + volumes["CSF"], 4)
        hdr = ref.header.copy()
        hdr.set_data_dtype(np.float32)
        hdr.set_data_shape((*ref.shape[:3], p.shape[-1]))
        p_out = save_output(nib.Nifti1Image(p.astype(np.float32), ref.affine, hdr),
                            "probseg_native.nii.gz", label)
        hdr8 = ref.header.copy()
        hdr8.set_data_dtype(np.uint8)
        hdr8.set_data_shape(ref.shape[:3])
        d_out = save_output(nib.Nifti1Image(p.argmax(-1).astype(np.uint8), ref.affine, hdr8),
                            "dseg_native.nii.gz", label)
        s_out = save_output(nib.Nifti1Image(sdn.astype(np.float32), ref.affine, hdr),
                            "sd_native.nii.gz", label)
    return p_out, d_out, volumes, s_out
