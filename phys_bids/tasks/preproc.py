"""Pydra 1.0 tasks and workflow for T1w preprocessing.

Each task loads its inputs, calls the plain function of :mod:`phys_bids.preproc`,
and writes its outputs into the task's own working directory (Pydra's cache), so
that reruns are cached and interrupted runs resume. ``label`` names the scan in
progress events (:mod:`phys_bids.progress`); it does not change the results.
"""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from pydra.compose import python, workflow

from . import save_output

__all__ = ["SkullStrip", "N4BiasCorrect", "RegisterToTemplate", "MidSpace", "PreprocT1w"]


@python.define(outputs=["brain", "mask", "volume_ml", "warnings"])
def SkullStrip(in_file: File, method: str = "deepbet", threads: int = 1, label: str = "",
               harmonise_from: dict | None = None) -> tuple[File, File, float, list]:
    """Brain extraction (deepbet or none), input geometry kept.

    With ``harmonise_from`` (``{"sequence", "params", "field_strength"}`` of the
    acquisition) the mask is cut from the head re-rendered at the reference protocol
    (:func:`phys_bids.preproc.skull_strip`'s ``harmoniser``)."""
    import nibabel as nib

    from phys_bids.preproc import skull_strip
    from phys_bids.progress import step

    harmoniser = None
    if harmonise_from:
        from phys_bids.preproc.harmonise import Harmoniser

        harmoniser = Harmoniser.from_spec(harmonise_from)
    with step(label or Path(in_file).name, "skull strip"):
        res = skull_strip(nib.load(str(in_file)), method=method, threads=threads,
                          harmoniser=harmoniser)
    return (save_output(res.brain, "brain.nii.gz", label),
            save_output(res.mask, "mask.nii.gz", label), res.volume_ml, list(res.warnings))


@python.define(outputs=["out_file", "bias_field"])
def N4BiasCorrect(in_file: File, mask: File, threads: int = 1, label: str = ""
                  ) -> tuple[File, File]:
    """N4 inside the brain mask."""
    import nibabel as nib

    from phys_bids.preproc import n4_correct
    from phys_bids.progress import step

    with step(label or Path(in_file).name, "N4"):
        res = n4_correct(nib.load(str(in_file)), nib.load(str(mask)), threads=threads)
    return (save_output(res.corrected, "n4.nii.gz", label),
            save_output(res.field, "bias_field.nii.gz", label))


@python.define(outputs=["out_file", "transform"])
def RegisterToTemplate(in_file: File, template: File, mode: str = "Rigid", threads: int = 1,
                       seed: int = 0, label: str = "") -> tuple[File, File]:
    """Rigid/affine registration of a brain to a template brain (ITK transform)."""
    import nibabel as nib

    from phys_bids.preproc.register import register_to_template
    from phys_bids.progress import step

    with step(label or Path(in_file).name, "registration"):
        res = register_to_template(nib.load(str(in_file)), nib.load(str(template)),
                                   Path.cwd() / (f"{label}_xfm.mat" if label else "xfm.mat"),
                                   mode=mode, threads=threads, seed=seed)
    return save_output(res.in_template, "in_template.nii.gz", label), res.transform


@python.define(outputs=["out_file"])
def HarmoniseContrast(in_template: File, mask: File, transform: File, template: File,
                      harmonise_from: dict, label: str = "") -> File:
    """Re-render a template-space brain at the reference protocol by the signal equation
    (:meth:`phys_bids.preproc.harmonise.Harmoniser.apply`), from the acquisition
    ``harmonise_from`` (``{"sequence", "params", "field_strength"}``) that
    :func:`phys_bids.workflows.acquisition.prepare_run` decided to re-render."""
    import nibabel as nib
    import numpy as np
    import torch

    from phys_bids.preproc.harmonise import Harmoniser
    from phys_bids.preproc.register import mask_on_template
    from phys_bids.progress import step

    with step(label or Path(in_template).name, "contrast harmonisation"):
        tpl = nib.load(str(template))
        img = nib.load(str(in_template))
        mdata = mask_on_template(nib.load(str(mask)), tpl, transform)
        data = img.get_fdata(dtype=np.float32)
        t, _ = Harmoniser.from_spec(harmonise_from).apply(torch.from_numpy(data),
                                                          torch.from_numpy(mdata))
        out = nib.Nifti1Image(t.numpy().astype(np.float32), img.affine, img.header)
    return save_output(out, "harmonised_template.nii.gz", label)


@python.define(outputs=["out_files", "transforms"])
def MidSpace(in_files: list[File], threads: int = 1, seed: int = 0
             ) -> tuple[list[File], list[File]]:
    """Unbiased mid space of several scans of one subject."""
    import nibabel as nib

    from phys_bids.preproc.midspace import midspace

    res = midspace([nib.load(str(f)) for f in in_files], Path.cwd(), threads=threads, seed=seed)
    outs = [save_output(img, f"scan{i}_mid.nii.gz") for i, img in enumerate(res.images)]
    return outs, res.transforms


@workflow.define(outputs=["brain", "mask", "n4", "in_template", "transform"])
def PreprocT1w(in_file: File, template: File, skull_strip: str = "deepbet", threads: int = 1,
               seed: int = 0, label: str = ""):
    """Skull strip -> N4 -> rigid registration to the template."""
    strip = workflow.add(SkullStrip(in_file=in_file, method=skull_strip, threads=threads,
                                    label=label))
    n4 = workflow.add(N4BiasCorrect(in_file=strip.brain, mask=strip.mask, threads=threads,
                                    label=label))
    reg = workflow.add(RegisterToTemplate(in_file=n4.out_file, template=template, threads=threads,
                                          seed=seed, label=label))
    return strip.brain, strip.mask, n4.out_file, reg.out_file, reg.transform
