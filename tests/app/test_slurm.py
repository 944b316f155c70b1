"""--pydra-worker slurm against a real SLURM cluster: one job per subject.

Needs ``sbatch`` and a responding controller (``sinfo``); .ci/run starts a
single-node cluster from Debian's packages with tools/slurm-single-node.sh. Skipped
with that reason elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from phys_bids.demo import write_demo_dataset

from .helpers import cli, tree_hashes


def _slurm_ready() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found (start a cluster with tools/slurm-single-node.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed: {err}"
    if out.returncode or not re.search(r"idle|mix|alloc", out.stdout):
        return f"no SLURM node is up: {out.stdout.strip() or out.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(_slurm_ready() is not None, reason=str(_slurm_ready()))


def test_one_slurm_job_per_subject_gives_the_serial_outputs(tmp_path):
    bids = write_demo_dataset(tmp_path / "bids", subjects=2, size=32, seed=5, anatomy="phantom")
    common = ["--session-label", "siteA", "--omp-nthreads", "1", "--skip-bids-validation"]
    r = cli(bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
            "--pydra-worker", "slurm", "--slurm-args=--mem=3G --time=20", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "submitting 2 subject(s) as SLURM jobs" in r.stderr
    # one job per subject, each with its SLURM log, completed according to sacct
    logs = sorted((tmp_path / "work" / "slurm").glob("*/slurm_scripts/*/slurm-*.out"))
    assert len(logs) == 2
    ids = [re.search(r"slurm-(\d+)\.out", p.name)[1] for p in logs]
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State,ReqCPUS",
                           "-j", ",".join(ids)], capture_output=True, text=True, timeout=30)
    rows = [line.split("|") for line in acct.stdout.split()]
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1].startswith("SubjectJob") and r[2] == "COMPLETED" and r[3] == "1"
               for r in rows), rows
    # the outputs are those of a serial run of the same data, byte for byte
    s = cli(bids, tmp_path / "serial", "participant", "-w", tmp_path / "work-serial", *common)
    assert s.returncode == 0, s.stderr[-2000:]
    slurm_files = tree_hashes(tmp_path / "out", exclude=("logs/",))
    serial_files = tree_hashes(tmp_path / "serial", exclude=("logs/",))
    assert slurm_files.keys() == serial_files.keys()
    assert [f for f in slurm_files if f.endswith("_morph.tsv")], "no volumes written"
    differ = [f for f in slurm_files if slurm_files[f] != serial_files[f]
              and not f.endswith(".html")]
    assert differ == []
