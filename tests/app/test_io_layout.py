"""Shared output files under concurrency, the pybids index cache, progress, threads."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phys_bids.bids.derivatives import DerivativesWriter
from phys_bids.bids.layout import index_dataset, select_t1w
from phys_bids.demo import write_demo_dataset
from phys_bids.progress import PROGRESS_ENV, ProgressDisplay, emit, step


def _writer_job(args):
    out, bids, i = args
    w = DerivativesWriter(out, bids, version="test")
    for _ in range(20):
        w.init_dataset()
        w.write_json(f"sub-{i:02d}/anat/sub-{i:02d}_dseg.json", {"i": i, "pad": "x" * 5000})
    return i


def test_concurrent_writers_never_corrupt_shared_files(tmp_path):
    out, bids = tmp_path / "out", tmp_path / "bids"
    bids.mkdir()
    with mp.get_context("spawn").Pool(4) as pool:
        done = pool.map(_writer_job, [(out, bids, i) for i in range(1, 9)])
    assert done == list(range(1, 9))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert (out / "dseg.tsv").read_text().startswith("index\tname")
    for i in range(1, 9):
        assert json.loads((out / f"sub-{i:02d}/anat/sub-{i:02d}_dseg.json").read_text())["i"] == i
    # no temporary files left behind
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_unchanged_files_are_not_rewritten(tmp_path):
    w = DerivativesWriter(tmp_path / "out", tmp_path, version="test")
    w.init_dataset()
    p = w.write_text("a.txt", "same\n")
    stamp = p.stat().st_mtime_ns
    time.sleep(0.01)
    w.write_text("a.txt", "same\n")
    assert p.stat().st_mtime_ns == stamp
    w.write_text("a.txt", "changed\n")
    assert p.read_text() == "changed\n"


def test_pybids_index_is_reused_until_the_dataset_changes(tmp_path):
    root = write_demo_dataset(tmp_path / "bids", subjects=1, size=24, anatomy="phantom")
    work = tmp_path / "work"
    index_dataset(root, work)
    db = next((work / "bids_db").glob("*.sqlite"))
    stamp = db.stat().st_mtime_ns
    time.sleep(0.05)
    layout = index_dataset(root, work)
    assert db.stat().st_mtime_ns == stamp  # not re-indexed
    assert sorted(layout.get_subjects()) == ["01"]
    # a new subject changes the fingerprint: re-indexed, and found
    anat = root / "sub-02" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((24, 24, 24), np.float32), np.eye(4)),
             str(anat / "sub-02_T1w.nii.gz"))
    layout = index_dataset(root, work)
    assert sorted(layout.get_subjects()) == ["01", "02"]
    runs = select_t1w(layout, participants=["sub-02"])
    assert [r.relpath for r in runs["02"]] == ["sub-02/anat/sub-02_T1w.nii.gz"]


def test_selection_by_session_and_filter_file(tmp_path):
    root = write_demo_dataset(tmp_path / "bids", subjects=2, size=24, anatomy="phantom")
    layout = index_dataset(root, tmp_path / "work")
    sel = select_t1w(layout, participants=["01"], sessions=["ses-siteB"])
    assert [r.name for r in sel["01"]] == ["sub-01_ses-siteB_T1w.nii.gz"]
    sel = select_t1w(layout, bids_filter={"t1w": {"session": ["siteA", "siteC"]}})
    assert {k: [r.session for r in v] for k, v in sel.items()} == {
        "01": ["siteA", "siteC"], "02": ["siteA", "siteC"]}


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_redraws_one_status_line(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    stream = _Tty()
    with ProgressDisplay(path, stream=stream, interval=0.05):
        with step("sub-01_T1w", "N4"):
            time.sleep(0.15)
        emit("sub-02_T1w", "segmentation", "start")
        time.sleep(0.15)
    text = stream.getvalue()
    assert "\r" in text and "\n" not in text.rstrip("\n")
    assert "sub-01_T1w: N4 ok" in text and "sub-02_T1w: segmentation ..." in text


def test_progress_without_a_terminal_logs_plain_lines(tmp_path, monkeypatch, caplog):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    caplog.set_level("INFO", logger="phys_bids.progress")
    with ProgressDisplay(path, stream=io.StringIO(), interval=0.05):
        with pytest.raises(ValueError):
            with step("sub-01_T1w", "registration"):
                raise ValueError("diverged")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["sub-01_T1w: registration started",
                     "sub-01_T1w: registration failed: ValueError: diverged"]


def test_threads_follow_omp_nthreads(tmp_path):
    """--omp-nthreads reaches torch, ITK and BLAS (checked in a fresh process)."""
    import subprocess
    import sys

    code = ("import os, sys, torch\n"
            "from phys_bids.cli import main\n"
            "rc = main([sys.argv[1], sys.argv[2], 'participant', '--omp-nthreads', '1',"
            " '--nprocs', '3', '--skip-bids-validation'])\n"
            "print(torch.get_num_threads(), os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'],"
            " os.environ['OMP_NUMBER_OF_THREADS'] if 'OMP_NUMBER_OF_THREADS' in os.environ"
            " else os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'], rc)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing"),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "7"})
    assert r.stdout.split() == ["1", "1", "1", "1", "2"], r.stderr


def test_default_work_dir_is_beside_output(tmp_path):
    from phys_bids.cli import build_parser

    ap = build_parser()
    args = ap.parse_args([str(tmp_path), str(tmp_path / "out"), "participant"])
    assert args.work_dir is None and args.seed == 0 and args.pydra_worker == "serial"
    assert "--omp-nthreads" in ap.format_help() and Path(ap.prog).name == "phys-bids"


def test_help_explains_every_option(capsys):
    from phys_bids.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--participant-label", "--session-label", "--bids-filter-file", "--work-dir",
                "--nprocs", "--omp-nthreads", "--device", "--seed", "--protocol-file",
                "--skip-bids-validation", "--overwrite", "--verbose", "--version",
                "--pydra-worker", "--slurm-args", "--model", "--skull-strip", "--physics-clamp"):
        assert opt in text, opt
    assert text.count("default") >= 8


def test_out_of_training_space_is_flagged_not_refused(tmp_path):
    from phys_bids.bids.layout import T1wRun
    from phys_bids.bids.protocol import Protocol
    from phys_bids.workflows.acquisition import prepare_run

    root = write_demo_dataset(tmp_path / "bids", subjects=1, size=24, anatomy="phantom")
    path = root / "sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.nii.gz"
    run = T1wRun(path, "01", "siteA")
    ok = prepare_run(run, root, None, physics=True)
    assert ok.in_training_space and ok.params == {"ti": 0.9}
    assert ok.sources == {"ti": "sidecar:InversionTime"}
    proto = Protocol.from_dict({"PhysBIDSProtocol": 1, "runs": [
        {"match": "sub-01_ses-siteA_T1w", "fields": {"InversionTime": 0.3}}]})
    flagged = prepare_run(run, root, proto, physics=True)
    assert flagged.params == {"ti": 0.3} and flagged.sources == {"ti": "protocol:InversionTime"}
    assert not flagged.in_training_space and flagged.outside == ["ti"]
    assert any("outside the model's training space" in w for w in flagged.warnings)
    assert not ok.low_contrast and ok.wm_gm_contrast > 0.3  # MPRAGE TI 0.9 s
    # --physics-clamp contrast: only a physics model, only outside the space, is told a
    # training acquisition; the run keeps its own parameters and flags
    told = prepare_run(run, root, proto, physics=True, physics_clamp="contrast")
    assert told.params == {"ti": 0.3} and not told.in_training_space
    assert 0.6 <= told.told_params["ti"] <= 1.2 and told.segmentation_params == told.told_params
    assert any("physics branch told ti" in w for w in told.warnings)
    for kept in (prepare_run(run, root, None, physics=True, physics_clamp="contrast"),
                 prepare_run(run, root, proto, physics=False, physics_clamp="contrast")):
        assert kept.told_params is None and kept.segmentation_params == kept.params


def test_a_low_contrast_spgr_protocol_is_flagged_from_its_parameters(tmp_path):
    """The demo's SPGR site (TR 20 ms, FA 25 deg) is clear of the low-contrast corner; the
    same scan told FA 12 deg is flagged, in the warnings and the sidecar provenance, at
    the sidecar's field strength; an MPRAGE at short TI is never flagged this way."""
    from types import SimpleNamespace

    from phys_bids.bids.layout import T1wRun
    from phys_bids.bids.protocol import Protocol
    from phys_bids.config import Settings
    from phys_bids.physics.tissues import wm_gm_contrast
    from phys_bids.workflows.acquisition import LOW_CONTRAST_SPGR, prepare_run
    from phys_bids.workflows.outputs import _provenance

    root = write_demo_dataset(tmp_path / "bids", subjects=1, size=24, anatomy="phantom")
    run = T1wRun(root / "sub-01/ses-siteC/anat/sub-01_ses-siteC_T1w.nii.gz", "01", "siteC")
    site = prepare_run(run, root, None, physics=True)
    assert site.sequence == "SPGR" and site.contrast_field_strength == 3.0
    assert site.wm_gm_contrast == pytest.approx(float(wm_gm_contrast("SPGR", site.params)[0]))
    assert site.wm_gm_contrast > LOW_CONTRAST_SPGR and not site.low_contrast
    proto = Protocol.from_dict({"PhysBIDSProtocol": 1, "runs": [
        {"match": "sub-01_ses-siteC_T1w", "fields": {"FlipAngle": 12,
                                                     "MagneticFieldStrength": 1.5}}]})
    low = prepare_run(run, root, proto, physics=True)
    assert low.in_training_space is False  # FA 12 is outside 15-75 too
    assert low.contrast_field_strength == 1.5 and low.low_contrast
    assert low.wm_gm_contrast == pytest.approx(
        float(wm_gm_contrast("SPGR", low.params, 1.5)[0]))
    assert any("SPGR WM-GM contrast" in w and "1.5 T" in w for w in low.warnings)
    model = SimpleNamespace(name="m", manifest={"weights_sha256": "0"}, physics=True)
    prov = _provenance(low, Settings(), SimpleNamespace(name="t", source="s"), model, "d")
    assert prov["PredictedContrast"]["Low"] is True
    assert prov["PredictedContrast"]["WMGM"] == pytest.approx(low.wm_gm_contrast, abs=1e-4)
    # the report's summary marks it
    from phys_bids.workflows.report import _contrast_cell

    cell = _contrast_cell({"wm_gm_contrast": low.wm_gm_contrast, "low_contrast": True})
    assert cell == f"{low.wm_gm_contrast:+.2f} (LOW)"
    assert _contrast_cell({"wm_gm_contrast": None}) == "n/a"
    short = Protocol.from_dict({"PhysBIDSProtocol": 1, "runs": [
        {"match": "sub-01_ses-siteA_T1w", "fields": {"InversionTime": 0.3}}]})
    mprage = prepare_run(T1wRun(root / "sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.nii.gz",
                                "01", "siteA"), root, short, physics=True)
    assert mprage.wm_gm_contrast < 0 and not mprage.low_contrast
