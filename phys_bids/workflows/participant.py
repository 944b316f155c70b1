"""The participant level's Pydra graph: one subject's T1w runs, each::

    skull strip -> N4 -> rigid registration to the template -> segmentation on the
    model grid (physics branch told the acquisition) -> back to native space
    (+ qMRI maps and the harmonised image with a qMRI model)

:func:`participant_workflow` builds the workflow of one subject from its prepared
runs (:mod:`phys_bids.workflows.acquisition`); every setting reaches it as a keyword
argument. Submission is in :mod:`phys_bids.workflows.run`, the outputs in
:mod:`phys_bids.workflows.outputs`.
"""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from pydra.compose import workflow

from ..tasks.preproc import HarmoniseContrast, N4BiasCorrect, RegisterToTemplate, SkullStrip
from ..tasks.qmri import EstimateQMRI
from ..tasks.segment import BayesSegment, Segment, ToNative
from .acquisition import PreparedRun

__all__ = ["RUN_OUTPUTS", "T1wRunWorkflow", "Participant", "participant_workflow"]

RUN_OUTPUTS = ["mask", "brain_volume_ml", "strip_warnings", "n4", "bias_field", "in_template",
                "transform", "probseg_template", "dseg_template", "mask_template",
                "probseg", "dseg", "volumes", "sd", "mc_volumes", "qmri_maps", "harmonized",
               "seg_fit"]


@workflow.define(outputs=RUN_OUTPUTS)
def T1wRunWorkflow(in_file: File, template: File, sequence: str, params: dict,
                   seg_sequence: str, seg_params: dict, model: str, model_sha256: str,
                   skull_strip: str = "deepbet", threads: int = 1, seed: int = 0,
                   device: str = "cpu", mc_samples: int = 0, label: str = "",
                   qmri_model: str = "", qmri_sha256: str = "", reference: dict | None = None,
                   harmonise_from: dict | None = None, segmenter: str = "network",
                   field_strength: float = 3.0, template_priors: list | None = None):
    """One T1w run: preprocessing, segmentation on the model grid, back to native; with a
    ``qmri_model``, qMRI maps and the image harmonised to ``reference`` too. ``params``:
    the acquisition (qMRI); ``seg_sequence``/``seg_params``: what the segmentation's
    physics branch is told (the acquisition, a training acquisition with
    ``--physics-clamp``, or the reference protocol when re-rendered);
    ``harmonise_from``: the acquisition the image is re-rendered from at the reference
    protocol before the skull strip's mask and before segmentation
    (``--harmonise-contrast``; empty: as acquired). ``segmenter="bayes"``: the
    physics-tied Bayesian segmentation instead of the network, told the acquisition
    ``sequence``/``params`` at ``field_strength``, with ``template_priors`` (the
    template's GM map, WM map and brain mask) as spatial prior."""
    strip = workflow.add(SkullStrip(in_file=in_file, method=skull_strip, threads=threads,
                                    label=label, harmonise_from=harmonise_from or {}))
    n4 = workflow.add(N4BiasCorrect(in_file=strip.brain, mask=strip.mask, threads=threads,
                                    label=label))
    reg = workflow.add(RegisterToTemplate(in_file=n4.out_file, template=template,
                                          threads=threads, seed=seed, label=label))
    seg_input = reg.out_file
    if harmonise_from:  # the segmentation sees the re-rendered brain, told the reference
        harm = workflow.add(HarmoniseContrast(in_template=reg.out_file, mask=strip.mask,
                                              transform=reg.transform, template=template,
                                              harmonise_from=harmonise_from, label=label))
        seg_input = harm.out_file
    fit = None
    if segmenter == "bayes":
        gm, wm, brain = template_priors
        seg = workflow.add(BayesSegment(in_template=seg_input, mask=strip.mask,
                                        transform=reg.transform, template=template,
                                        template_gm=gm, template_wm=wm, template_mask=brain,
                                        sequence=seg_sequence if harmonise_from else sequence,
                                        params=seg_params if harmonise_from else params,
                                        field_strength=field_strength, threads=threads,
                                        label=label))
        fit, mc_volumes = seg.fit, []
    else:
        seg = workflow.add(Segment(in_template=seg_input, mask=strip.mask,
                                   transform=reg.transform, template=template, model=model,
                                   model_sha256=model_sha256, sequence=seg_sequence,
                                   params=seg_params, threads=threads, device=device,
                                   mc_samples=mc_samples, seed=seed, label=label))
        mc_volumes = seg.mc_volumes
    nat = workflow.add(ToNative(probseg=seg.probseg, native=in_file, mask=strip.mask,
                                transform=reg.transform, sd=seg.sd, label=label))
    maps = harmonized = None
    if qmri_model:
        q = workflow.add(EstimateQMRI(in_template=reg.out_file, mask_template=seg.mask,
                                      native=in_file, mask=strip.mask, transform=reg.transform,
                                      model=qmri_model, model_sha256=qmri_sha256,
                                      sequence=sequence, params=params, reference=reference,
                                      threads=threads, device=device, label=label))
        maps, harmonized = q.maps, q.harmonized
    return (strip.mask, strip.volume_ml, strip.warnings, n4.out_file, n4.bias_field,
            reg.out_file, reg.transform, seg.probseg, seg.dseg, seg.mask, nat.probseg,
            nat.dseg, nat.volumes, nat.sd, mc_volumes, maps, harmonized, fit)


@workflow.define(outputs=RUN_OUTPUTS)
def Participant(in_files: list[File], labels: list[str], sequences: list[str],
                params: list[dict], seg_sequences: list[str], seg_params: list[dict],
                template: File, model: str, model_sha256: str,
                skull_strip: str = "deepbet", threads: int = 1, seed: int = 0,
                device: str = "cpu", mc_samples: int = 0, qmri_model: str = "",
                qmri_sha256: str = "", reference: dict | None = None,
                harmonise_from: list[dict] | None = None, segmenter: str = "network",
                field_strengths: list[float] | None = None,
                template_priors: list | None = None):
    """All T1w runs of one subject (a split of :class:`T1wRunWorkflow`)."""
    runs = workflow.add(
        T1wRunWorkflow(template=template, model=model, model_sha256=model_sha256,
                       skull_strip=skull_strip, threads=threads, seed=seed, device=device,
                       mc_samples=mc_samples, qmri_model=qmri_model,
                       qmri_sha256=qmri_sha256, reference=reference, segmenter=segmenter,
                       template_priors=template_priors)
        .split(("in_file", "label", "sequence", "params", "seg_sequence", "seg_params",
                "harmonise_from", "field_strength"),
               in_file=in_files, label=labels, sequence=sequences, params=params,
               seg_sequence=seg_sequences, seg_params=seg_params,
               harmonise_from=harmonise_from or [{} for _ in in_files],
               field_strength=field_strengths or [3.0 for _ in in_files])
        .combine("in_file"), name="run")
    return tuple(getattr(runs, o) for o in RUN_OUTPUTS)


def participant_workflow(prepared: list[PreparedRun], *, template: Path, model: str,
                         model_sha256: str, skull_strip: str = "deepbet", threads: int = 1,
                         seed: int = 0, device: str = "cpu", mc_samples: int = 0,
                         qmri_model: str = "", qmri_sha256: str = "",
                         reference: dict | None = None, segmenter: str = "network",
                         template_priors: list | None = None) -> Participant:
    """The Pydra workflow of one subject's runs, configured by keyword arguments."""
    return Participant(in_files=[p.run.path for p in prepared],
                       labels=[p.run.label for p in prepared],
                       sequences=[p.sequence for p in prepared],
                       params=[p.params for p in prepared],
                       seg_sequences=[p.segmentation_sequence for p in prepared],
                       seg_params=[p.segmentation_params for p in prepared],
                       harmonise_from=[p.harmonise_from for p in prepared],
                       template=template, model=model,
                       model_sha256=model_sha256, skull_strip=skull_strip, threads=threads,
                       seed=seed, device=device, mc_samples=mc_samples, qmri_model=qmri_model,
                       qmri_sha256=qmri_sha256, reference=reference, segmenter=segmenter,
                       field_strengths=[p.contrast_field_strength for p in prepared],
                       template_priors=template_priors)
