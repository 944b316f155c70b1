"""Running one subject: previous-run checks, submission of its Pydra workflow, and
the outputs; :func:`subject_context` sets up what every subject needs (template,
models, writer) once, for the workstation and the SLURM path alike.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..bids.derivatives import DerivativesWriter
from ..bids.layout import T1wRun, ambiguous_runs
from ..config import Settings
from ..errors import SubjectError
from .acquisition import prepare_run
from .outputs import write_outputs
from .participant import RUN_OUTPUTS, participant_workflow

__all__ = ["SubjectContext", "subject_context", "run_subject", "WORKERS"]

WORKERS = {"serial": "debug", "cf": "cf", "slurm": "slurm"}


@dataclass
class SubjectContext:
    """What every subject of a run shares: the template, the loaded models, the writer."""

    template: object
    model: object
    qmri: object | None
    writer: DerivativesWriter

    def as_kwargs(self) -> dict:
        return {"template": self.template, "model": self.model, "qmri": self.qmri,
                "writer": self.writer}


def subject_context(settings: Settings, *, bids_root: Path, out_dir: Path, work_dir: Path,
                    container: dict | None = None) -> SubjectContext:
    """Load the template and the models once (the workstation loop and each SLURM job)."""
    from ..models.registry import load_model
    from ..preproc.templates import get_template

    work_dir.mkdir(parents=True, exist_ok=True)
    template = get_template(work_dir / "templateflow"
                            if not os.environ.get("TEMPLATEFLOW_HOME") else None)
    model = load_model(settings.model, device=settings.device)
    qmri = (load_model(settings.qmri_model, device=settings.device)
            if settings.qmri_model else None)
    writer = DerivativesWriter(out_dir, bids_root, version=__version__, container=container)
    return SubjectContext(template, model, qmri, writer)


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
    bayes = settings.segmenter == "bayes"
    if bayes and (template.gm is None or template.wm is None):
        raise SubjectError(f"--segmenter bayes needs the template's GM and WM probability "
                           f"maps, which {template.name} lacks here")
    prepared = [prepare_run(r, bids_root, settings.protocol, physics=model.physics or bayes,
                            physics_clamp=settings.physics_clamp,
                            harmonise_contrast=settings.harmonise_contrast,
                            segmenter=settings.segmenter) for r in runs]
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
                              reference=settings.reference if qmri is not None else None,
                              segmenter=settings.segmenter,
                              template_priors=[template.gm, template.wm, template.mask]
                              if bayes else None)
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
    per_run = [{o: getattr(outs, o)[i] for o in RUN_OUTPUTS} for i in range(len(prepared))]
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
