"""``--pydra-worker slurm``: one SLURM job per subject, through Pydra's SLURM worker.

:class:`SubjectJob` is a Pydra task that processes one subject end to end
(:func:`~phys_bids.workflows.run.run_subject`, its tasks run serially inside
the job, cached in the shared work directory) and writes that subject's outputs.
:func:`run_subjects_on_slurm` splits it over the selected subjects and submits the
split with ``Submitter(worker="slurm")``: every subject is one ``sbatch`` job, all
queued at once, polled until they end (``squeue``/``sacct``). The work directory and
OUTPUT_DIR must be on a file system the compute nodes share, and the jobs run the
same Python environment (or container) as the command that submitted them.

A subject that fails inside its job is reported like on a workstation (the others
go on); a job SLURM kills (time limit, memory) fails the run with the path of its
SLURM log.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from pydra.compose import python

__all__ = ["SubjectJob", "run_subjects_on_slurm", "sbatch_arguments"]


@python.define(outputs=["outcome"])
def SubjectJob(subject: str, runs: list, settings: dict, bids_root: str, out_dir: str,
               work_dir: str, container: dict | None = None) -> dict:
    """One subject, end to end, inside one job: ``{"subject", "summaries"}`` or
    ``{"subject", "error"}`` (one actionable line)."""
    from phys_bids.bids.layout import T1wRun
    from phys_bids.config import Settings
    from phys_bids.errors import SubjectError
    from phys_bids.workflows.run import run_subject, subject_context

    cfg = Settings(**settings)
    work = Path(work_dir)
    try:
        ctx = subject_context(cfg, bids_root=Path(bids_root), out_dir=Path(out_dir),
                              work_dir=work, container=container)
        t1w = [T1wRun(Path(r["path"]), r["subject"], r["session"], dict(r["entities"]))
               for r in runs]
        summaries = run_subject(subject, t1w, settings=cfg, bids_root=Path(bids_root),
                                work_dir=work, worker="serial", **ctx.as_kwargs())
    except SubjectError as err:
        return {"subject": subject, "error": str(err)}
    except Exception as err:  # noqa: BLE001 - reported per subject, the others go on
        return {"subject": subject, "error": f"sub-{subject}: unexpected "
                f"{type(err).__name__}: {err} (see the SLURM log in the work directory)"}
    return {"subject": subject, "summaries": summaries}


def sbatch_arguments(slurm_args: str, threads: int) -> str:
    """The user's ``--slurm-args`` plus ``--cpus-per-task`` (= ``--omp-nthreads``) unless
    given.

    >>> sbatch_arguments("--partition=short --mem=8G", 4)
    '--partition=short --mem=8G --cpus-per-task=4'
    >>> sbatch_arguments("-c 2", 4)
    '-c 2'
    """
    args = slurm_args.strip()
    if not re.search(r"(^|\s)(-c\s*\d|--cpus-per-task)", args):
        args = f"{args} --cpus-per-task={threads}".strip()
    return args


def run_subjects_on_slurm(selection: dict, *, settings, bids_root: Path, out_dir: Path,
                          work_dir: Path, container: dict | None) -> dict[str, dict]:
    """Submit one job per subject and wait for all; returns ``{subject: outcome}``."""
    from pydra.engine.submitter import Submitter

    subjects = list(selection)
    runs = [[{"path": str(r.path), "subject": r.subject, "session": r.session,
              "entities": {k: str(v) for k, v in r.entities.items()}} for r in selection[s]]
            for s in subjects]
    # a fresh cache per invocation: the job itself must run again (it writes the
    # outputs); the subject's tasks inside it are cached in work_dir/pydra as usual
    cache = work_dir / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
    cache.mkdir(parents=True, exist_ok=True)
    job = SubjectJob(settings=asdict(settings), bids_root=str(bids_root), out_dir=str(out_dir),
                     work_dir=str(work_dir), container=container).split(
        ("subject", "runs"), subject=subjects, runs=runs)
    with Submitter(worker="slurm", cache_root=cache,
                   sbatch_args=sbatch_arguments(settings.slurm_args, settings.omp_nthreads)
                   ) as sub:
        result = sub(job)
    if result.errored:
        raise RuntimeError(f"a SLURM job failed; its log is under {cache}")
    outcomes = result.outputs.outcome
    return {o["subject"]: o for o in outcomes}
