"""The ``phys-bids`` command line (BIDS-Apps contract, fMRIPrep conventions).

Exit status: 0 when everything asked for was done; 1 when subjects failed (the
others complete, the failures are summarised at the end); 2 for a usage error or
input that cannot be processed at all. Errors are one line on stderr (the
traceback only with ``-v``); nothing is written for a subject that fails and the
input dataset is never written to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .errors import UsageError

log = logging.getLogger("phys_bids")

EXIT_OK, EXIT_SUBJECTS_FAILED, EXIT_USAGE = 0, 1, 2

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "NUMEXPR_NUM_THREADS")


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by the cgroup quota (``docker run --cpus``), v2 or v1; None: no limit.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "cpu.max").write_text("150000 100000")
    >>> _cgroup_cpu_quota(d)
    1
    >>> _ = (d / "cpu.max").write_text("max 100000"); _cgroup_cpu_quota(d) is None
    True
    >>> v1 = Path(tempfile.mkdtemp()); (v1 / "cpu").mkdir()
    >>> _ = (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    >>> _ = (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000"); _cgroup_cpu_quota(v1)
    3
    >>> _ = (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1"); _cgroup_cpu_quota(v1) is None
    True
    """
    try:  # cgroup v2
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct"):  # cgroup v1
        try:
            quota = int((root / sub / "cpu.cfs_quota_us").read_text())
            period = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 else max(1, quota // period)
    return None


def available_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup (container) quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n or quota, quota)
    return max(1, n or 1)


def _models() -> list[str]:
    from .models.registry import available_models

    return available_models()


def _qmri_model(value: str) -> str | None:
    """--qmri-model: a qMRI model's name, None for 'none' or 'auto' without one installed."""
    from .models.qmri_net import DEFAULT_MODEL
    from .models.registry import available_models

    found = available_models(kind="qmri")
    if value == "none":
        return None
    if value == "auto":
        if DEFAULT_MODEL in found:
            return DEFAULT_MODEL
        log.info("no qMRI model installed: no qMRI maps or harmonised images")
        return None
    if value not in found:
        raise UsageError(f"--qmri-model {value}: unknown; available: "
                       f"{', '.join(found) or 'none installed'}, or none")
    return value


def split_labels(values: list[str] | None) -> list[str] | None:
    """Labels as given after --participant-label / --session-label, separated by spaces
    or commas (``01,02`` is read as two labels, not refused).

    >>> split_labels(["01,02", "sub-03"])
    ['01', '02', 'sub-03']
    >>> split_labels(None) is None
    True
    """
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    cpus = available_cpus()
    ap = argparse.ArgumentParser(
        prog="phys-bids",
        description="Physics-aware brain tissue segmentation and volumes for BIDS datasets. "
                    "The participant level preprocesses every T1w image (skull strip, N4, "
                    "rigid registration to MNI), segments GM/WM/CSF with a network told the "
                    "acquisition parameters from the JSON sidecars, and writes BIDS-"
                    "Derivatives, an HTML report per subject and logs. The group level "
                    "gathers the volumes of all subjects into one table, measures site "
                    "effects (beside a classical segmentation's, with ComBat and proxy "
                    "A-distances) and can bridge a protocol change (--bridge).",
        epilog="Exit status: 0 done; 1 subjects failed (the others completed); 2 usage or "
               "input error. Documentation: the docs/ folder of the phys-bids source "
               "(usage.md, outputs.md, bad-input.md).")
    ap.add_argument("bids_dir", metavar="BIDS_DIR",
                    help="root of the input BIDS dataset (read only; never written to)")
    ap.add_argument("output_dir", metavar="OUTPUT_DIR",
                    help="folder of the derivatives (created; must be outside BIDS_DIR)")
    ap.add_argument("analysis_level", choices=["participant", "group"],
                    help="participant: process subjects; group: gather their volumes, site "
                         "effects and bridging")
    g = ap.add_argument_group("selection")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to process, with or without 'sub-', separated by spaces "
                        "or commas (default: all)")
    g.add_argument("--session-label", nargs="+", metavar="LABEL",
                   help="sessions to process, with or without 'ses-', separated by spaces "
                        "or commas (default: all)")
    g.add_argument("--bids-filter-file", metavar="FILE",
                   help='JSON selecting T1w images with pybids entities, e.g. {"t1w": '
                        '{"acquisition": "mprage", "run": 1}} (default: every T1w)')
    g = ap.add_argument_group("processing")
    g.add_argument("--model", default="seg-physics",
                   help="segmentation model shipped with phys-bids: seg-physics (told the "
                        "acquisition), seg-physics-film (told it by feature-wise modulation "
                        "after the norm; a candidate), seg-physics-film-nonorm (the same "
                        "without normalisation; experimental, not for real data) or "
                        "seg-baseline (not told the acquisition) (default: %(default)s)")
    g.add_argument("--segmenter", choices=["network", "bayes"], default="network",
                   help="network: the network chosen by --model; bayes: the physics-tied "
                        "Bayesian segmentation (a Gaussian mixture whose class means come "
                        "from the signal equation at the scan's acquisition parameters, with "
                        "partial-volume classes, the template's tissue probability maps and "
                        "a Markov random field; writes posterior bounds, post_* columns, "
                        "and no Monte-Carlo samples) (default: %(default)s)")
    g.add_argument("--physics-clamp", choices=["none", "contrast"], default="none",
                   help="what a physics model is told of an acquisition outside its training "
                        "space: none = the acquisition itself (flagged in the outputs), "
                        "contrast = the training acquisition whose image of the prior tissue "
                        "means is most alike (recorded in the provenance; the qMRI estimate "
                        "keeps the real one) (default: %(default)s)")
    g.add_argument("--harmonise-contrast", action="store_true",
                   help="re-render each T1w at the reference protocol (MPRAGE, TI 0.9 s) by "
                        "the signal equation along the prior tissue curve, cut the brain "
                        "mask from the re-rendered head and segment it, telling the physics "
                        "branch that protocol; an acquisition whose "
                        "tissue curve folds or is too flat (MPRAGE TI about 0.2-0.5 s, "
                        "SPGR where GM meets WM) is segmented as acquired, with a warning "
                        "(default: off)")
    g.add_argument("--qmri-model", default="auto", metavar="NAME",
                   help="network estimating PD, R1, R2* and MT maps from each T1w, from which "
                        "the harmonised image is synthesised: auto = qmri-physics when "
                        "installed, none = no maps (default: %(default)s)")
    g.add_argument("--reference-protocol", default="mprage-3t", metavar="NAME|FILE",
                   help="protocol of the harmonised image: a preset (mprage-3t: MPRAGE TI "
                        "0.9 s; spgr-3t: SPGR TR 20 ms, TE 5 ms, FA 25 deg) or a JSON file of "
                        "sidecar fields in BIDS units, e.g. {\"PulseSequenceType\": "
                        "\"MPRAGE\", \"InversionTime\": 0.9} (default: %(default)s)")
    g.add_argument("--skull-strip", choices=["deepbet", "hd-bet", "none"], default="deepbet",
                   help="brain extraction: deepbet (CNN), hd-bet (HD-BET fast mode; needs the "
                        "optional extra phys-bids[hdbet]) or none for images that are already "
                        "brain-extracted (default: %(default)s)")
    g.add_argument("--protocol-file", metavar="FILE",
                   help="JSON of per-run acquisition-parameter overrides for sidecars that "
                        "lack or get them wrong (format: docs/protocol-file.md)")
    g.add_argument("--mc-samples", type=int, default=4, metavar="N",
                   help="Monte-Carlo samples (dropout + aleatoric logit noise) for volume "
                        "bounds and uncertainty maps; each costs about one segmentation "
                        "pass; the calibrated bounds (cal_* columns) were fitted with 4; "
                        "0 = no bounds (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed gives bit-identical outputs on CPU with "
                        "the same --omp-nthreads (default: %(default)s)")
    g = ap.add_argument_group("group level")
    g.add_argument("--no-classical", action="store_true",
                   help="skip the classical segmentation (Atropos k-means) whose site effects "
                        "the group level reports beside the model's")
    g.add_argument("--bridge", nargs=2, metavar=("A", "B"),
                   help="bridge a protocol change: subjects scanned in group A and group B "
                        "(each a site, a session ses-X or an acquisition label acq-X); "
                        "searches the parameters to tell the physics model (MPRAGE TI, SPGR "
                        "flip angle) on half the pairs, tests on the rest and writes "
                        "group/bridge*.{json,png} and a protocol file (docs/usage.md, "
                        "Group level); costs --bridge-steps segmentation passes per scan")
    g.add_argument("--bridge-steps", type=int, default=13, metavar="N",
                   help="grid values of the searched parameter over the model's training "
                        "range (default: %(default)s, 50 ms steps of TI 0.6-1.2 s)")
    g = ap.add_argument_group("resources")
    g.add_argument("-w", "--work-dir", metavar="DIR",
                   help="Pydra cache and pybids index; keep it to resume an interrupted run "
                        "(default: $PHYS_BIDS_WORK_DIR when set - the container images set "
                        "it to /tmp/phys-bids-work - else OUTPUT_DIR/../phys-bids-work)")
    g.add_argument("--nprocs", type=int, default=cpus,
                   help="CPUs for concurrent tasks (default: the CPUs available, "
                        "%(default)s here)")
    g.add_argument("--omp-nthreads", type=int, default=None,
                   help="threads per task for torch, ITK and BLAS (default: --nprocs, "
                        "at most 8)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the networks run: auto uses a GPU when present "
                        "(default: %(default)s)")
    g.add_argument("--pydra-worker", choices=["serial", "cf", "slurm"], default="serial",
                   help="how Pydra runs the work: serial in this process, cf in a process "
                        "pool of --nprocs/--omp-nthreads workers, slurm as one SLURM job per "
                        "subject, all submitted at once (needs sbatch; work dir and "
                        "OUTPUT_DIR on a shared file system) (default: %(default)s)")
    g.add_argument("--slurm-args", default="", metavar="ARGS",
                   help="extra sbatch arguments for --pydra-worker slurm, written with = "
                        "because they start with a dash: --slurm-args='--partition=short "
                        "--mem=8G --time=1:00:00'; --cpus-per-task is --omp-nthreads unless "
                        "given here")
    g = ap.add_argument_group("other")
    g.add_argument("--skip-bids-validation", action="store_true",
                   help="do not run bids-validator-deno on BIDS_DIR")
    g.add_argument("--overwrite", action="store_true",
                   help="replace outputs of a different configuration already in OUTPUT_DIR")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging and full tracebacks")
    g.add_argument("--version", action="version", version=f"phys-bids {__version__}")
    return ap


def _pin_threads(n: int) -> None:
    for var in _THREAD_VARS:
        os.environ[var] = str(n)


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("pydra", "bids", "matplotlib", "fileformats", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _validator() -> str | None:
    import shutil

    exe = shutil.which("bids-validator-deno")
    if exe is None:
        cand = Path(sys.executable).parent / "bids-validator-deno"
        exe = str(cand) if cand.exists() else None
    return exe


def validate_bids(root: Path) -> str:
    """Run bids-validator-deno; raise UsageError on errors; return a one-line summary."""
    import collections
    import subprocess

    exe = _validator()
    if exe is None:
        return ("bids-validator-deno is not installed: input not validated (pip install "
                "bids-validator-deno, or pass --skip-bids-validation)")
    try:
        proc = subprocess.run([exe, "--format", "json", str(root)], capture_output=True,
                              text=True, timeout=600)
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, OSError) as err:
        return f"the BIDS validator did not run ({type(err).__name__}); input not validated"
    errors = [i for i in issues if i.get("severity") == "error"]
    warns = collections.Counter(i["code"] for i in issues if i.get("severity") == "warning")
    if errors:
        first = errors[0]
        raise UsageError(f"BIDS_DIR fails BIDS validation with {len(errors)} error(s), first: "
                       f"{first['code']} at {first.get('location', '?')}; fix them (run "
                       "bids-validator-deno) or pass --skip-bids-validation")
    top = ", ".join(f"{c} x{n}" for c, n in warns.most_common(3))
    return f"BIDS validation: 0 errors, {sum(warns.values())} warnings" + (
        f" ({top})" if top else "")


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return choice


def _file_logging(out_dir: Path, argv: list[str], config: dict) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = out_dir / "logs" / f"run-{stamp}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "command.txt").write_text(shlex.join(["phys-bids", *argv]) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    h = logging.FileHandler(folder / "phys-bids.log")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    h.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(h)
    return folder


def _settings(args):
    """The run settings from the parsed arguments (every result-changing choice, once)."""
    from .config import Settings

    return Settings(model=args.model, skull_strip=args.skull_strip, seed=args.seed,
                    omp_nthreads=args.omp_nthreads, nprocs=args.nprocs,
                    device=_device(args.device), worker=args.pydra_worker,
                    slurm_args=args.slurm_args, overwrite=args.overwrite,
                    mc_samples=args.mc_samples if args.segmenter == "network" else 0,
                    physics_clamp=args.physics_clamp,
                    harmonise_contrast=args.harmonise_contrast, segmenter=args.segmenter,
                    protocol_file=str(Path(args.protocol_file).resolve())
                    if args.protocol_file else None, qmri_model=_qmri_model(args.qmri_model),
                    reference_protocol=str(Path(args.reference_protocol).resolve())
                    if Path(args.reference_protocol).is_file() else args.reference_protocol)


def run(args, argv: list[str]) -> int:
    from .bids.layout import (
        DatasetError,
        check_dataset,
        check_output_dirs,
        index_dataset,
        load_filter_file,
        select_t1w,
    )
    from .bids.protocol import ProtocolFileError

    try:
        root = check_dataset(args.bids_dir)
        work_default = (os.environ.get("PHYS_BIDS_WORK_DIR") or
                        Path(args.output_dir).expanduser().resolve().parent / "phys-bids-work")
        out_dir, work_dir = check_output_dirs(root, args.output_dir,
                                              args.work_dir or work_default)
        if args.analysis_level == "group":
            from .group import run_group

            return run_group(root, out_dir, classical=not args.no_classical,
                             bridge=tuple(args.bridge) if args.bridge else None,
                             bridge_steps=args.bridge_steps, model=args.model, seed=args.seed,
                             device=_device(args.device))
        bids_filter = load_filter_file(args.bids_filter_file) if args.bids_filter_file else None
        models = _models()
        if args.model not in models:
            raise UsageError(f"--model {args.model}: unknown; available: {', '.join(models)}")
        settings = _settings(args)
        # the protocol file and the reference protocol are read here, once, for all
        # subjects (Settings caches them): a malformed one fails before any work
        settings.protocol  # noqa: B018
        settings.reference  # noqa: B018
        if args.pydra_worker == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("--pydra-worker slurm: sbatch not found on PATH; run on a SLURM "
                           "login node or use --pydra-worker serial or cf")
        if not args.skip_bids_validation:
            log.info("%s", validate_bids(root))
        layout = index_dataset(root, work_dir)
        selection = select_t1w(layout, participants=args.participant_label,
                               sessions=args.session_label, bids_filter=bids_filter)
    except (DatasetError, ProtocolFileError, UsageError) as err:
        raise UsageError(str(err)) from None

    from .errors import SubjectError
    from .progress import PROGRESS_ENV, ProgressDisplay, read_events
    from .workflows.run import run_subject, subject_context

    ctx = subject_context(settings, bids_root=root, out_dir=out_dir, work_dir=work_dir,
                          container=_container())
    n_runs = sum(len(v) for v in selection.values())
    log.info("%d subject(s), %d T1w run(s) selected: %s", len(selection), n_runs,
             "; ".join(f"sub-{s}: {', '.join(r.name for r in runs) or 'none'}"
                       for s, runs in selection.items()))
    logs = None
    failures: dict[str, str] = {}
    progress = work_dir / f"progress-{os.getpid()}.jsonl"
    os.environ[PROGRESS_ENV] = str(progress)
    t0 = time.time()
    def outcomes():
        """(subject, summaries or None, error or None) as each subject ends."""
        if settings.worker == "slurm":
            from .workflows.cluster import run_subjects_on_slurm

            log.info("submitting %d subject(s) as SLURM jobs (sbatch %s)", len(selection),
                     settings.slurm_args or "with no extra arguments")
            try:
                done = run_subjects_on_slurm(selection, settings=settings, bids_root=root,
                                             out_dir=out_dir, work_dir=work_dir,
                                             container=_container())
            except Exception as err:  # the submission itself failed: every subject did
                for subject in selection:
                    yield subject, None, f"sub-{subject}: SLURM: {err}"
                return
            for subject in selection:
                o = done.get(subject, {"error": f"sub-{subject}: no result from its job"})
                yield subject, o.get("summaries"), o.get("error")
            return
        for subject, runs in selection.items():
            try:
                yield subject, run_subject(subject, runs, settings=settings, bids_root=root,
                                           work_dir=work_dir, **ctx.as_kwargs()), None
            except SubjectError as err:
                if args.verbose:
                    log.exception("traceback")
                yield subject, None, str(err)
            except Exception as err:  # an unexpected failure still spares the other subjects
                log.debug("traceback", exc_info=True)
                yield subject, None, (f"sub-{subject}: unexpected {type(err).__name__}: {err} "
                                      "(run with -v for the traceback)")

    with ProgressDisplay(progress):
        for subject, summaries, error in outcomes():
            if error is not None:
                failures[subject] = error
                log.error("%s", error)
                continue
            if logs is None:
                logs = _file_logging(out_dir, argv, {**vars(args), "settings":
                                                     asdict(settings)})
            for s in summaries:
                for q in s["qc"]:
                    log.warning("sub-%s %s: QC: %s", subject, s["label"], q)
            log.info("sub-%s done: %s", subject, "; ".join(
                f"{s['label']} GM {s['volumes']['GM']:.1f} WM {s['volumes']['WM']:.1f} "
                f"CSF {s['volumes']['CSF']:.1f} mL" for s in summaries))
    if logs is not None:  # None only when every subject failed: nothing is written
        events = [e for e in read_events(progress) if e["state"] == "done"]
        rows = ["label\tstep\tseconds\tpeak_rss_mb"] + [
            f"{e['label']}\t{e['step']}\t{e.get('seconds', '')}\t{e.get('peak_rss_mb', '')}"
            for e in events]
        (logs / "steps.tsv").write_text("\n".join(rows) + "\n")
    progress.unlink(missing_ok=True)
    done = len(selection) - len(failures)
    log.info("finished in %.0f s: %d of %d subject(s) processed%s", time.time() - t0, done,
             len(selection), f"; outputs in {out_dir}" if done else "")
    if failures:
        log.error("%d subject(s) failed:\n%s", len(failures),
                  "\n".join(f"  {m}" for m in failures.values()))
        return EXIT_SUBJECTS_FAILED
    return EXIT_OK


def _container() -> dict | None:
    kind = os.environ.get("PHYS_BIDS_CONTAINER")
    if not kind:
        return None
    return {"Type": kind, "Tag": os.environ.get("PHYS_BIDS_CONTAINER_TAG", __version__)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:  # argparse exits (status 2, or 0 for --help/--version): return that status instead
        args = parser.parse_args(argv)
        args.participant_label = split_labels(args.participant_label)
        args.session_label = split_labels(args.session_label)
        if args.nprocs < 1:
            parser.error("--nprocs must be >= 1")
        if args.omp_nthreads is None:
            args.omp_nthreads = min(args.nprocs, 8)
        if args.omp_nthreads < 1:
            parser.error("--omp-nthreads must be >= 1")
        if args.mc_samples < 0:
            parser.error("--mc-samples must be >= 0")
        if args.bridge_steps < 3:
            parser.error("--bridge-steps must be >= 3")
    except SystemExit as exc:
        return int(exc.code or 0)
    _pin_threads(args.omp_nthreads)
    _setup_logging(args.verbose)
    try:
        import torch

        torch.set_num_threads(args.omp_nthreads)
        return run(args, argv)
    except UsageError as err:
        print(f"phys-bids: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("phys-bids: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose:
            raise
        print(f"phys-bids: error: {type(err).__name__}: {err} (run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
