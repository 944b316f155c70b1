"""Bad input: a clear error, nothing lost (docs/bad-input.md lists the same cases).

Every case runs the command line on a small dataset broken in one way and checks:
non-zero exit status, the actionable message, no traceback, no derivative written,
and the input unchanged (hashes).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phys_bids.cli import main
from phys_bids.demo import write_demo_dataset

from .helpers import tree_hashes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template_dataset(tmp_path_factory) -> Path:
    root = write_demo_dataset(tmp_path_factory.mktemp("bad") / "bids", subjects=2, size=32,
                              seed=5, anatomy="phantom")
    # sub-02 keeps only a T2w image: a subject without T1w
    for f in (root / "sub-02").rglob("*_T1w.*"):
        f.unlink()
    t2 = root / "sub-02/ses-siteA/anat/sub-02_ses-siteA_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((32, 32, 32), np.float32), np.eye(4)), str(t2))
    return root


T1 = "sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.nii.gz"
SC = "sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.json"


def _img(root, data, affine=None):
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else None)
    if affine is not None:  # a header nibabel would refuse to build from an affine
        img.header.set_sform(affine, code=1)
        img.header.set_qform(None, code=0)
    nib.save(img, str(root / T1))


def _sidecar(root, **changes):
    p = root / SC
    d = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    p.write_text(json.dumps(d))


def _good():
    return np.random.default_rng(0).uniform(1, 100, (32, 32, 32)).astype(np.float32)


def _truncate(root):
    p = root / T1
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _nan(root):
    d = _good()
    d[3, 3, 3] = np.nan
    _img(root, d)


def _write(rel, text):
    def f(root, tmp):
        p = tmp / rel
        p.write_text(text)
        return p
    return f


def _uncompressed_copy(root):
    src = root / T1
    (root / T1.replace(".nii.gz", ".nii")).write_bytes(gzip.decompress(src.read_bytes()))


def _foreign(tmp):
    out = tmp / "other"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "fmriprep", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    return out


def _no_sbatch(args):
    """A PATH without sbatch (the clean_env fixture restores it)."""
    os.environ["PATH"] = "/nonexistent"
    return args


# id: (mutate dataset, extra args (callable of root, tmp -> list), message regex, exit status)
CASES = {
    "bids-dir-missing": (None, lambda r, t: ["BIDS", t / "nope"], r"does not exist", 2),
    "bids-dir-is-a-file": (None, lambda r, t: ["BIDS", r / "participants.tsv"],
                           r"is a file, not a folder", 2),
    "no-dataset-description": (lambda r: (r / "dataset_description.json").unlink(), None,
                               r"not a BIDS dataset \(no dataset_description.json\)", 2),
    "malformed-dataset-description": (
        lambda r: (r / "dataset_description.json").write_text("{"), None, r"not valid JSON", 2),
    "participant-absent": (None, lambda r, t: ["--participant-label", "sub-99"],
                           r"participant\(s\) 99 not found in BIDS_DIR; available: 01, 02", 2),
    "session-absent": (None, lambda r, t: ["--session-label", "ses-7T"],
                       r"session\(s\) 7T not found", 2),
    "no-t1w-for-subject": (None, lambda r, t: ["--participant-label", "02"],
                           r"sub-02 has no T1w image", 1),
    "4d-t1w": (lambda r: _img(r, np.ones((32, 32, 32, 3), np.float32)), None,
               r"must be 3D, this one has shape \(32, 32, 32, 3\)", 1),
    "2d-t1w": (lambda r: _img(r, np.ones((64, 64, 1), np.float32)), None,
               r"too small for a brain image \(2D", 1),
    "corrupted-gzip": (_truncate, None, r"cannot read the file|not a readable NIfTI", 1),
    "nan-voxels": (_nan, None, r"1 voxels are NaN or Inf", 1),
    "all-zero-image": (lambda r: _img(r, np.zeros((32, 32, 32), np.float32)), None,
                       r"the image is all zeros", 1),
    "singular-affine": (lambda r: _img(r, _good(), np.diag([1.0, 1.0, 0.0, 1.0])), None,
                        r"affine \(orientation\) matrix is singular", 1),
    "missing-acquisition-field": (lambda r: _sidecar(r, InversionTime=None, SequenceVariant=None,
                                                     ScanningSequence=None,
                                                     SequenceName="*tfl3d1"),
                                  None, r"missing InversionTime", 1),
    "wrong-units": (lambda r: _sidecar(r, InversionTime=900), None,
                    r"InversionTime=900 is not plausible in seconds", 1),
    "malformed-sidecar": (lambda r: (r / SC).write_text("{\"EchoTime\": "), None,
                          r"not valid JSON", 1),
    "unsupported-sequence": (lambda r: (r / SC).write_text(json.dumps(
        {"PulseSequenceType": "TSE", "EchoTime": 0.1, "RepetitionTime": 3.0})), None,
        r"knows \['MPRAGE', 'SPGR'\] images, not FSE", 1),
    "ambiguous-runs": (_uncompressed_copy, None, r"ambiguous runs", 1),
    "malformed-protocol-file": (None, lambda r, t: ["--protocol-file",
                                                     _write("p.json", "{oops")(r, t)],
                                r"protocol file .* is not valid JSON", 2),
    "protocol-file-unknown-field": (None, lambda r, t: ["--protocol-file", _write(
        "p.json", json.dumps({"PhysBIDSProtocol": 1, "runs": [
            {"match": "*", "fields": {"InversionTim": 0.9}}]}))(r, t)],
        r"unknown field\(s\) \['InversionTim'\] \(did you mean InversionTime\?\)", 2),
    "malformed-filter-file": (None, lambda r, t: ["--bids-filter-file",
                                                   _write("f.json", "[1, 2")(r, t)],
                              r"--bids-filter-file .* is not valid JSON", 2),
    "filter-file-unknown-entity": (None, lambda r, t: ["--bids-filter-file", _write(
        "f.json", json.dumps({"t1w": {"colour": "red"}}))(r, t)],
        r"unknown entities \['colour'\]", 2),
    "output-inside-bids-dir": (None, lambda r, t: ["OUT", r / "derivatives" / "phys-bids"],
                               r"OUTPUT_DIR .* is inside BIDS_DIR", 2),
    "work-dir-inside-bids-dir": (None, lambda r, t: ["-w", r / "work"],
                                 r"--work-dir .* is inside BIDS_DIR", 2),
    "unwritable-output-dir": (None, lambda r, t: ["OUT", Path("/proc/phys-bids-out")],
                              r"OUTPUT_DIR /proc/phys-bids-out is not writable", 2),
    "output-dir-holds-another-dataset": (None, lambda r, t: ["OUT", _foreign(t)],
                                         r"holds another dataset", 2),
    "unknown-model": (None, lambda r, t: ["--model", "seg-magic"],
                      r"--model seg-magic: unknown; available: seg-baseline, seg-physics, "
                      r"seg-physics-film, seg-physics-film-nonorm", 2),
    "cuda-requested-without-gpu": (None, lambda r, t: ["--device", "cuda"],
                                   r"no CUDA device is available", 2),
    "bad-nprocs": (None, lambda r, t: ["--nprocs", "0"], r"--nprocs must be >= 1", 2),
    "unknown-qmri-model": (None, lambda r, t: ["--qmri-model", "qmri-magic"],
                           r"--qmri-model qmri-magic: unknown; available: ", 2),
    "reference-protocol-wrong-units": (None, lambda r, t: ["--reference-protocol", _write(
        "ref.json", json.dumps({"PulseSequenceType": "MPRAGE", "InversionTime": 900}))(r, t)],
        r"--reference-protocol .*InversionTime=900 is not plausible in seconds", 2),
    "slurm-without-sbatch": (None, lambda r, t: _no_sbatch(["--pydra-worker", "slurm"]),
                             r"--pydra-worker slurm: sbatch not found on PATH", 2),
    "invalid-bids-dataset": (lambda r: (r / "sub-01/ses-siteA/anat/notbids.nii.gz").write_bytes(
        (r / T1).read_bytes()), lambda r, t: ["VALIDATE"],
        r"fails BIDS validation with \d+ error\(s\), first: NOT_INCLUDED", 2),
}


@pytest.fixture
def clean_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_actionable_line_and_writes_nothing(case, template_dataset, tmp_path,
                                                                 capsys, clean_env):
    mutate, extra, pattern, status = CASES[case]
    if case == "cuda-requested-without-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    root = tmp_path / "bids"
    shutil.copytree(template_dataset, root)
    if mutate:
        mutate(root)
    before = tree_hashes(root)
    bids, out = root, tmp_path / "out"
    args = list(extra(root, tmp_path)) if extra else []
    validate = "VALIDATE" in args
    if validate:
        from phys_bids.cli import _validator

        if _validator() is None:
            pytest.skip("bids-validator-deno is not installed")
        args.remove("VALIDATE")
    if args[:1] == ["BIDS"]:
        bids, args = args[1], args[2:]
    if args[:1] == ["OUT"]:
        out, args = args[1], args[2:]
    flags = [] if validate else ["--skip-bids-validation"]
    code = main([str(bids), str(out), "participant", "--omp-nthreads", "1", *flags,
                 *map(str, args)])
    err = capsys.readouterr().err
    assert code == status, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    error_lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert error_lines and len(error_lines[0]) < 400
    # nothing written to OUTPUT_DIR (beyond what was there), input unchanged
    written = [p for p in Path(out).rglob("*") if p.is_file()] if Path(out).is_dir() else []
    assert all(p.name == "dataset_description.json" for p in written), written
    assert tree_hashes(root) == before


def test_every_case_is_documented():
    doc = (ROOT / "docs" / "bad-input.md").read_text()
    missing = [c for c in CASES if f"`{c}`" not in doc]
    assert not missing, f"document these cases in docs/bad-input.md: {missing}"
    assert len(CASES) >= 20
