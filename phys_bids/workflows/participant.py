"""The participant level: per-scan Pydra workflow, its submission, and the outputs.

For every T1w run of a subject::

    skull strip -> N4 -> rigid registration to the template -> segmentation on the
    model grid (physics branch told the acquisition) -> back to native space

:func:`participant_workflow` builds the Pydra workflow of one subject (the runs
are a split of :class:`T1wRun`); settings reach it as keyword arguments. The Pydra
cache lives in the work directory, so a completed run is not recomputed and an
interrupted one resumes. Outputs are written only after a subject's workflow has
finished (:func:`write_outputs`), each file atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from fileformats.generic import File
from pydra.compose import workflow

from .. import __version__
from ..bids.checks import InputImageError, check_anatomical
from ..bids.derivatives import DerivativesWriter
from ..bids.layout import T1wRun, ambiguous_runs
from ..bids.outputs import derivative_path, model_desc, xfm_path
from ..bids.protocol import Protocol
from ..bids.sidecars import SidecarError, load_sidecar
from ..models.calibration import margins_for, widen
from ..physics.sidecar import ParameterError, acquisition_from_sidecar
from ..physics.spaces import in_training_space
from ..synth.tissues import nearest_training_acquisition, wm_gm_contrast
from ..tasks.preproc import N4BiasCorrect, RegisterToTemplate, SkullStrip
from ..tasks.qmri import EstimateQMRI
from ..tasks.segment import TISSUES, Segment, ToNative

__all__ = ["Settings", "PreparedRun", "SubjectError", "prepare_run", "T1wRunWorkflow",
           "Participant", "participant_workflow", "run_subject", "write_outputs"]

log = logging.getLogger("phys_bids.participant")

WORKERS = {"serial": "debug", "cf": "cf", "slurm": "slurm"}


class SubjectError(RuntimeError):
    """A subject cannot be processed (one actionable line); other subjects go on."""


@dataclass
class Settings:
    """Everything that changes the results, plus how to run (workers, threads)."""

    model: str = "seg-physics"
    skull_strip: str = "deepbet"
    seed: int = 0
    omp_nthreads: int = 1
    nprocs: int = 1
    device: str = "cpu"
    worker: str = "serial"
    slurm_args: str = ""
    overwrite: bool = False
    protocol_file: str | None = None
    mc_samples: int = 0
    #: qMRI estimator (None: no maps and no harmonised image)
    qmri_model: str | None = None
    #: preset name or JSON file of the harmonised image's protocol
    reference_protocol: str = "mprage-3t"
    #: what the physics branch is told of an acquisition outside its training space:
    #: "none" the acquisition itself, "contrast" the training acquisition of nearest
    #: reference-tissue contrast (:func:`~phys_bids.synth.tissues.nearest_training_acquisition`)
    physics_clamp: str = "none"
    #: re-render each image at the reference protocol by the signal equation before
    #: segmenting it (:mod:`phys_bids.harmonise`), telling the physics branch that protocol
    harmonise_contrast: bool = False

    @cached_property
    def _protocol_text(self) -> str:
        return Path(self.protocol_file).read_text() if self.protocol_file else ""

    @cached_property
    def reference(self) -> dict:
        """The harmonised image's protocol: name, sequence, parameters (SI), fields."""
        from ..bids.protocol import load_reference_protocol

        return load_reference_protocol(self.reference_protocol)

    @cached_property
    def protocol(self) -> Protocol | None:
        """The protocol file, read once for all subjects."""
        return Protocol.load(self.protocol_file) if self.protocol_file else None

    def digest(self, model_sha256: str, template: str, qmri_sha256: str | None = None) -> str:
        """Hash of the settings that change outputs (not the worker or thread counts...
        except ``omp_nthreads``, which can change the last bits of float sums)."""
        qmri = ({"qmri": self.qmri_model, "qmri_sha": qmri_sha256,
                 "reference": self.reference} if self.qmri_model else {})
        # only when set, so that outputs made before the option keep their digest
        clamp = {} if self.physics_clamp == "none" else {"physics_clamp": self.physics_clamp}
        harm = {"harmonise_contrast": True} if self.harmonise_contrast else {}
        key = json.dumps({"model": self.model, "sha": model_sha256, "template": template,
                          **qmri, **clamp, **harm,
                          "skull_strip": self.skull_strip, "seed": self.seed,
                          "mc_samples": self.mc_samples,
                          "threads": self.omp_nthreads, "protocol": self._protocol_text,
                          "version": __version__}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


#: SPGR protocols whose predicted WM-GM contrast (:func:`phys_bids.synth.tissues.wm_gm_contrast`)
#: is below this are flagged: in the consistency benchmark (three test subjects, 121 draws
#: each) the shipped physics model's volumes stay within 2.2 % of their median from +0.15 up
#: and within 5.3 % from +0.10, and move by up to 12 % below it, 26 % below +0.05 and 53 %
#: where WM and GM are inverted (docs/segmentation.md, "SPGR contrast check"). MPRAGE
#: images in the models' TI range are far above it (+0.36 at TI 1.2 s).
LOW_CONTRAST_SPGR = 0.10


@dataclass
class PreparedRun:
    """A run whose image and acquisition passed the checks."""

    run: T1wRun
    sequence: str
    params: dict
    sources: dict
    in_training_space: bool
    outside: list[str]
    warnings: list[str] = field(default_factory=list)
    #: predicted WM-GM contrast of the protocol, and the field strength (T) of its tissue
    #: priors (the sidecar's MagneticFieldStrength, else 3 T); None when not computed
    wm_gm_contrast: float | None = None
    contrast_field_strength: float = 3.0
    #: what the physics branch is told instead of ``params`` (``--physics-clamp``); None:
    #: ``params`` themselves. The qMRI estimate and every record keep ``params``.
    told_params: dict | None = None
    #: the acquisition the image is re-rendered from at the reference protocol before
    #: segmentation (``--harmonise-contrast``; :func:`phys_bids.harmonise.harmonise`):
    #: ``{"sequence", "params", "field_strength"}``, empty when it is segmented as acquired
    harmonise_from: dict = field(default_factory=dict)
    #: why ``--harmonise-contrast`` left the image as acquired ("" when it did not)
    harmonise_refused: str = ""

    @property
    def segmentation_params(self) -> dict:
        if self.harmonise_from:
            from ..harmonise import REFERENCE

            return dict(REFERENCE[1])
        return self.params if self.told_params is None else self.told_params

    @property
    def segmentation_sequence(self) -> str:
        """The sequence the physics branch is told (the reference's when re-rendered)."""
        if self.harmonise_from:
            from ..harmonise import REFERENCE

            return REFERENCE[0]
        return self.sequence

    def told_text(self, params: dict | None = None) -> str:
        """The parameters outside the training space as the branch was told them (or as
        ``params`` gives them), e.g. ``"ti 1.188"``."""
        given = self.segmentation_params if params is None else params
        return ", ".join(f"{k} {given[k]:.4g}" for k in self.outside)

    @property
    def low_contrast(self) -> bool:
        return (self.sequence == "SPGR" and self.wm_gm_contrast is not None
                and self.wm_gm_contrast < LOW_CONTRAST_SPGR)

    def low_contrast_note(self) -> str:
        return (f"SPGR WM-GM contrast {self.wm_gm_contrast:+.2f} (tissue priors at "
                f"{self.contrast_field_strength:g} T) is below {LOW_CONTRAST_SPGR:+.2f}: the "
                "networks' GM and WM volumes move with the contrast there (GM read high, WM "
                "low); compare them across protocols with caution")


def prepare_run(run: T1wRun, bids_root: Path, protocol: Protocol | None, *,
                physics: bool, physics_clamp: str = "none",
                harmonise_contrast: bool = False) -> PreparedRun:
    """Check the image and read its acquisition (raises :class:`SubjectError`).

    ``physics_clamp="contrast"``: a physics model is told, for an acquisition outside its
    training space, the training acquisition of nearest reference-tissue contrast at the
    sidecar's field strength instead of one it would extrapolate to.
    ``harmonise_contrast``: the image is re-rendered at the reference protocol before
    segmentation where its tissue curve can be inverted (else segmented as acquired, with
    a warning); the clamp then does not apply."""
    try:
        check_anatomical(run.path)
    except InputImageError as err:
        raise SubjectError(str(err)) from None
    try:
        sidecar = load_sidecar(run.path, bids_root)
    except SidecarError as err:
        raise SubjectError(str(err)) from None
    overrides = protocol.fields_for(run.name) if protocol else {}
    try:
        acq = acquisition_from_sidecar(sidecar, suffix="T1w", overrides=overrides)
        params = acq.model_params()
    except ParameterError as err:
        if physics:
            raise SubjectError(f"{run.name}: {err}") from None
        return PreparedRun(run, "unknown", {}, {}, False, ["sequence"],
                           [f"acquisition not read ({err}); the baseline model does not "
                            "need it"],
                           harmonise_refused="the acquisition was not read" if harmonise_contrast
                           else "")
    inside, outside = in_training_space(acq.sequence, params)
    warnings = list(acq.warnings)
    if not inside:
        warnings.append(f"acquisition parameter(s) {', '.join(outside)} outside the model's "
                        "training space: volumes are less reliable (flagged in the outputs)")
    sources = {k: acq.sources.get(k, "") for k in params}
    field_t = float(acq.params.get("field_strength", 3.0))
    contrast = None
    if acq.sequence in ("MPRAGE", "SPGR"):
        contrast = float(wm_gm_contrast(acq.sequence, params, field_t)[0])
    told = None
    harmonise_from: dict = {}
    refused = ""
    if harmonise_contrast:
        from ..harmonise import HarmonisationError, Harmoniser

        spec = {"sequence": acq.sequence, "params": dict(params), "field_strength": field_t}
        try:
            Harmoniser.from_spec(spec)  # the tasks build the same transform from it
            harmonise_from = spec
        except (HarmonisationError, KeyError, ValueError) as err:
            refused = str(err)
    if (physics and not inside and physics_clamp == "contrast" and outside != ["sequence"]
            and not harmonise_from):
        near = nearest_training_acquisition(acq.sequence, params, field_t)
        told = {k: float(v[0]) for k, v in near.items()}
    prepared = PreparedRun(run, acq.sequence, params, sources, inside, outside, warnings,
                           contrast, field_t, told, harmonise_from, refused)
    if told is not None:
        warnings.append(f"physics branch told {prepared.told_text()} (the training "
                        "acquisition of nearest tissue contrast, --physics-clamp contrast) "
                        f"instead of {prepared.told_text(params)}")
    if prepared.low_contrast:
        warnings.append(prepared.low_contrast_note() + " (flagged in the outputs)")
    return prepared


_RUN_OUTPUTS = ["mask", "brain_volume_ml", "strip_warnings", "n4", "bias_field", "in_template",
                "transform", "probseg_template", "dseg_template", "mask_template",
                "probseg", "dseg", "volumes", "sd", "mc_volumes", "qmri_maps", "harmonized"]


@workflow.define(outputs=_RUN_OUTPUTS)
def T1wRunWorkflow(in_file: File, template: File, sequence: str, params: dict,
                   seg_params: dict, model: str, model_sha256: str,
                   skull_strip: str = "deepbet", threads: int = 1, seed: int = 0,
                   device: str = "cpu", mc_samples: int = 0, label: str = "",
                   qmri_model: str = "", qmri_sha256: str = "", reference: dict | None = None,
                   harmonise_from: dict | None = None):
    """One T1w run: preprocessing, segmentation on the model grid, back to native; with a
    ``qmri_model``, qMRI maps and the image harmonised to ``reference`` too. ``params``:
    the acquisition (qMRI); ``seg_params``: what the segmentation's physics branch is
    told (``params``, or a training acquisition with ``--physics-clamp``);
    ``harmonise_from``: the acquisition the image is re-rendered from at the reference
    protocol before the skull strip's mask and before segmentation
    (``--harmonise-contrast``; empty: as acquired)."""
    strip = workflow.add(SkullStrip(in_file=in_file, method=skull_strip, threads=threads,
                                    label=label, harmonise_from=harmonise_from or {}))
    n4 = workflow.add(N4BiasCorrect(in_file=strip.brain, mask=strip.mask, threads=threads,
                                    label=label))
    reg = workflow.add(RegisterToTemplate(in_file=n4.out_file, template=template,
                                          threads=threads, seed=seed, label=label))
    seg = workflow.add(Segment(in_template=reg.out_file, mask=strip.mask,
                               transform=reg.transform, template=template, model=model,
                               model_sha256=model_sha256, sequence=sequence,
                               params=seg_params, harmonise_from=harmonise_from or {},
                               threads=threads, device=device, mc_samples=mc_samples,
                               seed=seed, label=label))
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
            nat.dseg, nat.volumes, nat.sd, seg.mc_volumes, maps, harmonized)


@workflow.define(outputs=_RUN_OUTPUTS)
def Participant(in_files: list[File], labels: list[str], sequences: list[str],
                params: list[dict], seg_params: list[dict], template: File, model: str,
                model_sha256: str,
                skull_strip: str = "deepbet", threads: int = 1, seed: int = 0,
                device: str = "cpu", mc_samples: int = 0, qmri_model: str = "",
                qmri_sha256: str = "", reference: dict | None = None,
                harmonise_from: list[dict] | None = None):
    """All T1w runs of one subject (a split of :class:`T1wRunWorkflow`)."""
    runs = workflow.add(
        T1wRunWorkflow(template=template, model=model, model_sha256=model_sha256,
                       skull_strip=skull_strip, threads=threads, seed=seed, device=device,
                       mc_samples=mc_samples, qmri_model=qmri_model,
                       qmri_sha256=qmri_sha256, reference=reference)
        .split(("in_file", "label", "sequence", "params", "seg_params", "harmonise_from"),
               in_file=in_files, label=labels, sequence=sequences, params=params,
               seg_params=seg_params,
               harmonise_from=harmonise_from or [{} for _ in in_files])
        .combine("in_file"), name="run")
    return tuple(getattr(runs, o) for o in _RUN_OUTPUTS)


def participant_workflow(prepared: list[PreparedRun], *, template: Path, model: str,
                         model_sha256: str, skull_strip: str = "deepbet", threads: int = 1,
                         seed: int = 0, device: str = "cpu", mc_samples: int = 0,
                         qmri_model: str = "", qmri_sha256: str = "",
                         reference: dict | None = None) -> Participant:
    """The Pydra workflow of one subject's runs, configured by keyword arguments."""
    return Participant(in_files=[p.run.path for p in prepared],
                       labels=[p.run.label for p in prepared],
                       sequences=[p.sequence for p in prepared],
                       params=[p.params for p in prepared],
                       seg_params=[p.segmentation_params for p in prepared],
                       harmonise_from=[p.harmonise_from for p in prepared],
                       template=template, model=model,
                       model_sha256=model_sha256, skull_strip=skull_strip, threads=threads,
                       seed=seed, device=device, mc_samples=mc_samples, qmri_model=qmri_model,
                       qmri_sha256=qmri_sha256, reference=reference)


def _submitter(settings: Settings, cache_root: Path, worker: str | None = None):
    from pydra.engine.submitter import Submitter

    worker = WORKERS[worker or settings.worker]
    kwargs = {}
    if worker == "cf":
        kwargs["n_procs"] = max(1, settings.nprocs // max(1, settings.omp_nthreads))
    elif worker == "slurm" and settings.slurm_args:
        kwargs["sbatch_args"] = settings.slurm_args
    return Submitter(worker=worker, cache_root=cache_root, **kwargs)


def run_subject(subject: str, runs: list[T1wRun], *, settings: Settings, bids_root: Path,
                work_dir: Path, writer: DerivativesWriter, template, model, qmri=None,
                worker: str | None = None) -> list[dict]:
    """Process one subject end to end; returns one summary per run.

    ``qmri`` is the loaded qMRI model when ``settings.qmri_model`` is set.
    ``worker`` overrides ``settings.worker`` for this subject's tasks (a SLURM job runs
    its subject's tasks serially: :mod:`phys_bids.workflows.cluster`).

    Raises :class:`SubjectError` with one actionable line; nothing of the subject is
    written in that case.
    """
    if not runs:
        raise SubjectError(f"sub-{subject} has no T1w image (anat/*_T1w.nii[.gz]) matching the "
                           "selection; check the dataset or --bids-filter-file")
    dup = ambiguous_runs(runs)
    if dup:
        raise SubjectError(f"sub-{subject}: ambiguous runs {', '.join(dup)} share every entity;"
                           " keep one of each or filter with --bids-filter-file")
    prepared = [prepare_run(r, bids_root, settings.protocol, physics=model.physics,
                            physics_clamp=settings.physics_clamp,
                            harmonise_contrast=settings.harmonise_contrast) for r in runs]
    sha = model.manifest["weights_sha256"]
    qsha = qmri.manifest["weights_sha256"] if qmri is not None else None
    digest = settings.digest(sha, template.name, qsha)
    _check_previous(writer.root, subject, digest, settings.overwrite)
    wf = participant_workflow(prepared, template=template.t1w_brain, model=settings.model,
                              model_sha256=sha, skull_strip=settings.skull_strip,
                              threads=settings.omp_nthreads, seed=settings.seed,
                              device=settings.device, mc_samples=settings.mc_samples,
                              qmri_model=settings.qmri_model if qmri is not None else "",
                              qmri_sha256=qsha or "",
                              reference=settings.reference if qmri is not None else None)
    try:
        with _submitter(settings, work_dir / "pydra", worker) as sub:
            result = sub(wf)
    except Exception as err:  # a task failed: report it as this subject's failure
        msg = str(err).strip().splitlines()
        last = (msg[-1] if msg else repr(err)).strip("'\"")
        raise SubjectError(f"sub-{subject}: processing failed: {last} "
                           "(run with -v and see the log in OUTPUT_DIR/logs)") from err
    if result.errored:
        raise SubjectError(f"sub-{subject}: processing failed (see the log in "
                           "OUTPUT_DIR/logs)")
    outs = result.outputs
    per_run = [{o: getattr(outs, o)[i] for o in _RUN_OUTPUTS} for i in range(len(prepared))]
    if settings.overwrite:
        shutil.rmtree(writer.root / f"sub-{subject}", ignore_errors=True)
    return write_outputs(subject, prepared, per_run, settings=settings, writer=writer,
                         template=template, model=model, digest=digest, qmri=qmri)


def _check_previous(root: Path, subject: str, digest: str, overwrite: bool) -> None:
    if overwrite:
        return
    for js in sorted((root / f"sub-{subject}").rglob("*_dseg.json")):
        try:
            old = json.loads(js.read_text()).get("PhysBIDS", {}).get("ConfigurationDigest")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != digest:
            raise SubjectError(f"sub-{subject}: OUTPUT_DIR holds outputs of another "
                               "configuration or version; pass --overwrite to replace them or "
                               "choose another OUTPUT_DIR")


def _provenance(p: PreparedRun, settings: Settings, template, model, digest: str) -> dict:
    return {
        "Version": __version__,
        "Seed": settings.seed,
        "Threads": settings.omp_nthreads,
        "Model": {"Name": model.name, "WeightsSha256": model.manifest["weights_sha256"],
                  "TrainingSteps": model.manifest.get("steps"),
                  "PhysicsAware": model.physics},
        "Template": {"Name": template.name, "Source": template.source},
        "SkullStripMethod": settings.skull_strip,
        "MonteCarloSamples": settings.mc_samples,
        "Acquisition": {"Sequence": p.sequence, "Parameters": p.params,
                        "ParameterSources": p.sources},
        "InTrainingSpace": p.in_training_space,
        "OutsideTrainingSpace": p.outside,
        "PhysicsClamp": settings.physics_clamp,
        "PhysicsToldParameters": p.segmentation_params if model.physics else None,
        **({"ContrastHarmonisation": {
            "Applied": bool(p.harmonise_from),
            "Reference": {"Sequence": p.segmentation_sequence if p.harmonise_from else None,
                          "Parameters": p.segmentation_params if p.harmonise_from else None},
            "Description": "image re-rendered at the reference protocol by the signal "
                           "equation along the prior tissue curve before the skull strip's "
                           "mask and before segmentation (--harmonise-contrast; "
                           "docs/segmentation.md)"}}
           if settings.harmonise_contrast else {}),
        "PredictedContrast": None if p.wm_gm_contrast is None else {
            "WMGM": round(p.wm_gm_contrast, 4), "FieldStrength": p.contrast_field_strength,
            "Low": p.low_contrast,
            "Description": "(WM - GM) / GM of the image this protocol makes of the prior "
                           f"tissue means; SPGR below {LOW_CONTRAST_SPGR:+.2f} is flagged"},
        "ConfigurationDigest": digest,
    }


#: Monte-Carlo columns of ``*_morph.tsv``.
MC_COLUMNS = ("mc_mean_ml", "mc_median_ml", "mc_q1_ml", "mc_q3_ml", "mc_iqr_ml", "mc_p2_5_ml",
              "mc_p97_5_ml")
#: calibrated bounds (the sample quantiles widened by the model's conformal margins)
CAL_COLUMNS = ("cal_q1_ml", "cal_q3_ml", "cal_p2_5_ml", "cal_p97_5_ml")
MC_DESCRIPTIONS = {
    "mc_mean_ml": "mean volume over the Monte-Carlo samples (model grid, 1 mm voxels)",
    "mc_median_ml": "median over the samples", "mc_q1_ml": "first quartile (25th percentile)",
    "mc_q3_ml": "third quartile (75th percentile)", "mc_iqr_ml": "q3 - q1",
    "mc_p2_5_ml": "2.5th percentile", "mc_p97_5_ml": "97.5th percentile",
    "cal_q1_ml": "calibrated lower bound of the 50 % interval: mc_q1 widened by the model's "
                 "conformal margin for acquisitions inside or outside its training space "
                 "(models/<name>/calibration.json; docs/uncertainty.md)",
    "cal_q3_ml": "calibrated upper bound of the 50 % interval",
    "cal_p2_5_ml": "calibrated lower bound of the 95 % interval",
    "cal_p97_5_ml": "calibrated upper bound of the 95 % interval",
}


def _mc_stats(samples: list) -> dict | None:
    """Per-tissue summaries of Monte-Carlo volumes ([[GM, WM, CSF], ...]); ICV = sum."""
    from ..models.segment import volume_summary

    if not samples:
        return None
    v = np.asarray(samples, dtype=np.float64)
    cols = {"GM": v[:, 0], "WM": v[:, 1], "CSF": v[:, 2], "ICV": v.sum(1)}
    return {t: volume_summary(x) for t, x in cols.items()}


def _channel_images(path, channels=TISSUES):
    """(name, 3D image) for each ``{index: name}`` channel of a 4D map (default: the tissue
    channels of a background+tissues map)."""
    import nibabel as nib

    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    for k, name in channels.items():
        hdr = img.header.copy()
        hdr.set_data_shape(data.shape[:3])
        yield name, nib.Nifti1Image(data[..., k], img.affine, hdr)


def _write_qmri(put, out: dict, estimated: dict, qmri, reference: dict, p: PreparedRun
                ) -> None:
    """The estimated maps (``estimated``: map name -> native image; one file per map,
    ``desc-<model>``) and the harmonised image."""
    from ..models.qmri_net import BIDS_SUFFIX, UNITS

    desc = model_desc(qmri.name)
    model = {"Name": qmri.name, "WeightsSha256": qmri.manifest["weights_sha256"],
             "TrainingSteps": qmri.manifest.get("steps")}
    for name, img in estimated.items():
        note = ("Estimated by a network from this one T1-weighted image and its acquisition "
                f"parameters ({p.sequence}); a model estimate, not a model-based fit of "
                "dedicated qMRI acquisitions.")
        if name == "MT":
            note += (" MPRAGE and SPGR without an MT pulse carry no MT contrast: this map "
                     "comes from anatomy and the training priors, not from a measurement.")
        if name == "PD":
            note += " A magnitude image fixes PD only up to scale: the scale is the priors'."
        put({"suffix": BIDS_SUFFIX[name], "desc": desc}, img=img,
            extra={"Units": UNITS[name], "SkullStripped": True, "ModelEstimate": True,
                   "EstimationMethod": "phys-bids qMRI network (physics branch told the "
                   "acquisition); sliding window on the template grid, resampled to native",
                   "EstimationModel": model, "Description": note})
    put({"suffix": "T1w", "desc": "harmonized"}, out["harmonized"],
        extra={"SkullStripped": True,
               "Description": f"this scan re-synthesised at the reference protocol "
               f"'{reference['name']}' from its estimated qMRI maps (signal equation of "
               f"{reference['sequence']}); brain only, mean 1000 inside the brain",
               "ReferenceProtocol": {"Name": reference["name"],
                                     "Sequence": reference["sequence"],
                                     "Parameters": reference["params"],
                                     "Fields": reference["fields"]},
               "EstimationModel": model})


def _write_fits(writer, p: PreparedRun, out: dict, done: dict, estimated: dict
                ) -> list[dict]:
    """Model-based fits of the qMRI acquisitions in this run's session
    (:mod:`phys_bids.qmri.dataset`), written once per session, each compared with this
    run's network estimate of the same map (``estimated``: map name -> native image;
    empty without the qMRI model). A set that cannot be fitted is reported and
    skipped."""
    import nibabel as nib

    from ..models.qmri_net import BIDS_SUFFIX
    from ..qmri.dataset import UNITS, FitError, compare_maps, find_sets, fit_set

    key = (p.run.subject, p.run.session)
    if key not in done:
        results = []
        for s in find_sets(writer.bids_dir, p.run.subject, p.run.session):
            entry = {"kind": s.kind, "name": s.name, "method": s.method}
            try:
                maps, affine, prov = fit_set(s)
            except FitError as err:
                log.warning("sub-%s: qMRI fit skipped: %s", p.run.subject, err)
                entry["error"] = str(err)
                results.append(entry)
                continue
            src = f"{s.name}_{s.kind}.nii.gz"
            sources = [f"bids:raw:{Path(p.run.relpath).parent.as_posix()}/{f.name}"
                       for f in s.images]
            entry["maps"] = {}
            for name, data in maps.items():
                rel = derivative_path(src, suffix=name, desc=s.method)
                writer.save_image(rel, nib.Nifti1Image(data, affine))
                writer.write_json(rel.replace(".nii.gz", ".json"), {
                    "Sources": sources, "Units": UNITS[name], "SkullStripped": False,
                    "ModelEstimate": False,
                    "EstimationMethod": f"phys-bids model-based fit ({s.method}) of the "
                    f"session's {s.kind} images", "EstimationParameters": prov})
                entry["maps"][name] = {"path": rel, "data": data, "affine": affine}
            log.info("sub-%s: fitted %s from %d %s image(s): %s", p.run.subject,
                     "/".join(entry["maps"]), len(s.images), s.kind, s.name)
            results.append(entry)
        done[key] = results
    fits = []
    estimates = {BIDS_SUFFIX[n]: img for n, img in estimated.items()}
    dseg = (nib.load(str(out["dseg"]))
            if estimates and any("maps" in e for e in done[key]) else None)
    for entry in done[key]:
        row = {k: entry[k] for k in ("kind", "name", "method")}
        if "error" in entry:
            row["error"] = entry["error"]
        else:
            row["maps"] = {}
            for name, m in entry["maps"].items():
                cmp = (compare_maps(m["data"], m["affine"], estimates[name], dseg)
                       if name in estimates else None)
                row["maps"][name] = {"path": m["path"], "comparison": cmp}
        fits.append(row)
    return fits


def _registration_dice(mask_template, template) -> float:
    import nibabel as nib

    a = np.asanyarray(nib.load(str(mask_template)).dataobj) > 0
    b = np.asanyarray(nib.load(str(template.mask)).dataobj) > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def write_outputs(subject: str, prepared: list[PreparedRun], per_run: list[dict], *,
                  settings: Settings, writer: DerivativesWriter, template, model, digest: str,
                  qmri=None) -> list[dict]:
    """Write every derivative, the figures and the report of one subject."""

    from .. import report
    from ..models.qmri_net import MAPS

    writer.init_dataset()
    summaries = []
    fitted_sessions: dict = {}
    tpl = template.name
    for p, out in zip(prepared, per_run, strict=True):
        src = p.run.name
        prov = _provenance(p, settings, template, model, digest)
        sources = [f"bids:raw:{p.run.relpath}"]

        def put(rel_kwargs, path=None, img=None, extra=None, _src=src, _sources=sources,
                _prov=prov):
            rel = derivative_path(_src, **rel_kwargs)
            if img is not None:
                writer.save_image(rel, img)
            else:
                writer.copy_file(rel, path)
            side = {"Sources": _sources, **(extra or {}), "PhysBIDS": _prov}
            writer.write_json(rel.replace(".nii.gz", ".json"), side)
            return rel

        put({"suffix": "mask", "desc": "brain"}, out["mask"], extra={"Type": "Brain"})
        put({"suffix": "T1w", "desc": "preproc"}, out["n4"], extra={"SkullStripped": True})
        put({"suffix": "T1w", "desc": "preproc", "space": tpl}, out["in_template"],
            extra={"SkullStripped": True})
        xfm = xfm_path(src, to=tpl)
        writer.copy_file(xfm, out["transform"])
        for name, img in _channel_images(out["probseg"]):
            put({"suffix": "probseg", "label": name}, img=img)
        if settings.mc_samples > 0:
            for name, img in _channel_images(out["sd"]):
                put({"suffix": "probseg", "label": name, "desc": "sd"}, img=img,
                    extra={"Description": f"standard deviation of the {name} probability over "
                           f"{settings.mc_samples} Monte-Carlo samples (dropout + aleatoric "
                           "logit noise); not a probability"})
        put({"suffix": "dseg"}, out["dseg"])
        put({"suffix": "dseg", "space": tpl}, out["dseg_template"])
        # the 4D map file is read once, for the outputs and the comparison with fits
        estimated = (dict(_channel_images(out["qmri_maps"], dict(enumerate(MAPS))))
                     if qmri is not None and out.get("qmri_maps") else {})
        if estimated:
            _write_qmri(put, out, estimated, qmri, settings.reference, p)
        fits = _write_fits(writer, p, out, fitted_sessions, estimated)
        vols = out["volumes"]
        stats = _mc_stats(out["mc_volumes"])
        rows = ["\t".join(["tissue", "volume_ml", *MC_COLUMNS, *CAL_COLUMNS, "mc_samples",
                           "seed", "in_training_space", "outside_training_space"])]
        flag = "true" if p.in_training_space else "false"
        outside = ",".join(p.outside) or "n/a"
        calibrated = {}
        for t in ("GM", "WM", "CSF", "ICV"):
            mc = ([f"{stats[t][c.removeprefix('mc_').removesuffix('_ml')]:.4f}"
                   for c in MC_COLUMNS] if stats else ["n/a"] * len(MC_COLUMNS))
            cal = ["n/a"] * len(CAL_COLUMNS)
            margins = margins_for(model.calibration, t, p.in_training_space)
            if stats and margins:
                wide = widen(stats[t], margins)
                cal = [f"{max(0.0, wide[c[4:-3]]):.4f}" for c in CAL_COLUMNS]
                calibrated[t] = (max(0.0, wide["p2_5"]), wide["p97_5"])
            rows.append("\t".join([t, f"{vols[t]:.4f}", *mc, *cal, str(settings.mc_samples),
                                   str(settings.seed), flag, outside]))
        morph = derivative_path(src, suffix="morph", extension=".tsv")
        writer.write_text(morph, "\n".join(rows) + "\n")
        writer.write_json(morph.replace(".tsv", ".json"), {
            "tissue": {"Description": "GM, WM, CSF, or ICV (= GM + WM + CSF)"},
            "volume_ml": {"Description": "sum of the native-space tissue probabilities times "
                          "the voxel volume", "Units": "mL"},
            "in_training_space": {"Description": "whether the acquisition parameters were "
                                  "inside the model's training space"},
            "outside_training_space": {"Description": "the parameters outside it"},
            **{c: {"Description": MC_DESCRIPTIONS[c], "Units": "mL"}
               for c in (*MC_COLUMNS, *CAL_COLUMNS)},
            "mc_samples": {"Description": "Monte-Carlo samples (0: bounds not computed)"},
            "seed": {"Description": "the seed of the Monte-Carlo draws"},
            "Sources": sources, "PhysBIDS": prov})
        reg_dice = _registration_dice(out["mask_template"], template)
        qc = []
        if not 800 <= out["brain_volume_ml"] <= 2200:
            qc.append(f"brain mask volume {out['brain_volume_ml']:.0f} mL is outside "
                      "800-2200 mL: check the skull strip")
        if reg_dice < 0.85:
            qc.append(f"brain overlap with the template after registration is {reg_dice:.2f} "
                      "(< 0.85): check the registration figure")
        if not p.in_training_space:
            qc.append("acquisition outside the training space: " + ", ".join(p.outside)
                      + ("" if p.told_params is None else
                         f" (physics branch told {p.told_text()}: --physics-clamp contrast)"))
        if p.low_contrast:
            qc.append(p.low_contrast_note())
        if p.harmonise_refused:
            qc.append("contrast harmonisation not applied, segmented as acquired: "
                      + p.harmonise_refused)
        figures = report.run_figures(writer, src, subject, {**out, "raw": p.run.path},
                                     template)
        vfig = report.volumes_figure(writer, src, vols, stats, calibrated)
        if vfig:
            figures = {"volumes with bounds": vfig, **figures}
        summaries.append({"run": p.run.relpath, "label": p.run.label, "sequence": p.sequence,
                          "params": p.params, "sources": p.sources,
                          "in_training_space": p.in_training_space, "outside": p.outside,
                          "wm_gm_contrast": p.wm_gm_contrast, "low_contrast": p.low_contrast,
                          "warnings": [*p.warnings, *out["strip_warnings"]], "qc": qc,
                          "volumes": vols, "mc": stats,
                          "brain_volume_ml": out["brain_volume_ml"],
                          "registration_dice": reg_dice, "figures": figures,
                          "qmri_fits": fits})
    report.subject_report(writer, subject, summaries, provenance={
        "version": __version__, "model": model.name,
        "weights_sha256": model.manifest["weights_sha256"], "template": template.name,
        "template_source": template.source, "seed": settings.seed,
        "settings": asdict(settings)})
    return summaries
