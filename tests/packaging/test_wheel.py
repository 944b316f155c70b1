"""`python -m build` gives an sdist and a wheel that carry what the runtime needs, and the
wheel installed in a fresh virtual environment (torch pinned first) runs the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-1500:]}\n{out.stderr[-1500:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT],
         timeout=900)
    return out


def test_wheel_and_sdist_carry_weights_manifests_and_no_checkpoints(dist):
    wheel = next(dist.glob("phys_bids-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.parent.name for p in (ROOT / "phys_bids/data/models").glob("*/weights.pt"))
    assert shipped, "no shipped models in the repository"
    for model in shipped:
        for f in ("weights.pt", "manifest.json"):
            assert f"phys_bids/data/models/{model}/{f}" in names, (model, f)
    assert not [n for n in names if n.endswith("checkpoint.pt")]
    assert "phys_bids/preproc/templates.py" in names and "phys_bids/cli.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "phys-bids = phys_bids.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    # the weights in the wheel are those the manifests pin (registry hash check)
    z = zipfile.ZipFile(wheel)
    import hashlib
    for model in shipped:
        man = json.loads(z.read(f"phys_bids/data/models/{model}/manifest.json"))
        digest = hashlib.sha256(z.read(f"phys_bids/data/models/{model}/weights.pt")).hexdigest()
        assert digest == man["weights_sha256"], model
    sdist = next(dist.glob("phys_bids-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        snames = tar.getnames()
    for model in shipped:
        assert any(n.endswith(f"phys_bids/data/models/{model}/weights.pt") for n in snames)
    assert wheel.stat().st_size < 60e6


def test_wheel_in_a_fresh_venv_runs_the_demo(dist, tmp_path):
    wheel = next(dist.glob("phys_bids-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], timeout=900, env=env)
    _run([py, "-m", "pip", "install", "-q", wheel], timeout=900, env=env)
    # imported from the venv, not from the repository
    where = _run([py, "-c", "import phys_bids; print(phys_bids.__file__)"], cwd=tmp_path,
                 env=env).stdout.strip()
    assert where.startswith(str(venv)), where
    demo, out = tmp_path / "demo", tmp_path / "out"
    _run([py, "-m", "phys_bids.demo", demo, "--subjects", "1", "--anatomy", "phantom",
          "--size", "32"], cwd=tmp_path, env=env, timeout=300)
    r = _run([venv / "bin" / "phys-bids", demo, out, "participant", "--session-label", "siteA",
              "-w", tmp_path / "work", "--omp-nthreads", "1"], cwd=tmp_path, env=env,
             timeout=900)
    assert "1 of 1 subject(s) processed" in r.stderr
    morph = out / "sub-01/ses-siteA/anat/sub-01_ses-siteA_morph.tsv"
    assert morph.is_file() and "GM" in morph.read_text()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "phys-bids"
