"""Acceptance: a synthetic multi-site, travelling-subject study through both levels.

The project's own simulator writes two heads scanned at three sites (the same
anatomy everywhere: Siemens MPRAGE TI 0.9 s, Philips MPRAGE TI 1.1 s, GE SPGR), the
participant level processes them (one deterministic pass, no qMRI: the figures a
study relies on, not the bounds) and the group level compares the physics model with
a classical segmentation of the same images and bridges site A -> site B. Asserted,
with the tolerances the benchmark (bench/bench_bridge.py, docs/usage.md) supports:

* the physics model's within-subject variation across sites is smaller than the
  classical segmentation's for WM (for GM it is not: a strict xfail: the network is not
  yet acquisition-invariant), and its volumes are within 10 % of the truth and nearer
  than the classical ones for GM and WM;
* bridging (a third subject is needed: two to search, one to test) recovers the
  simulated TI difference between the protocols (0.2 s) within one grid step; the
  absolute TIs are not identified (volumes depend on the pair mostly through its
  difference), which the docs say;
* on the held-out pair, the physics model (as processed and bridged) disagrees less
  between A and B than the uncorrected classical segmentation.

The site-effect and accuracy tests run in CI on two subjects (6 scans, one subject per
process: about 5 minutes; three subjects took 8.4 minutes in CI). The bridging test
processes three subjects (9 scans) and adds 42 segmentation passes on the 1 mm
template grid (about 15 minutes alone on 2 cores) and is marked slow: ``pytest
--run-slow tests/app/test_travelling_subjects.py``; the bridging code itself is
unit-tested in ``tests/app/test_bridge.py`` on small phantoms.
"""

from __future__ import annotations

import csv
import json

import pytest

from phys_bids.demo import SITES, write_demo_dataset
from phys_bids.models.registry import available_models

from .helpers import cli

pytestmark = pytest.mark.skipif("seg-physics" not in available_models(),
                                reason="the shipped seg-physics model is not installed")


def _study(base, subjects: int) -> dict:
    """``subjects`` demo heads (the first ones of any larger demo of this seed) through
    the participant level (deterministic, no qMRI) and the group level."""
    bids = write_demo_dataset(base / "bids", subjects=subjects, voxel=2.0, seed=4)
    out, work = base / "out", base / "work"
    common = ["-w", work, "--omp-nthreads", "2", "--nprocs", "2"]
    r = cli(bids, out, "participant", "--mc-samples", "0", "--qmri-model", "none",
            "--skip-bids-validation", *common)
    assert r.returncode == 0, r.stderr
    r = cli(bids, out, "group", *common)
    assert r.returncode == 0, r.stderr
    return {"bids": bids, "out": out, "common": common, "subjects": subjects}


@pytest.fixture(scope="module")
def travelling(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("travelling"), subjects=2)


@pytest.fixture(scope="module")
def travelling3(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("travelling3"), subjects=3)


def _site_effects(travelling) -> dict:
    return json.loads((travelling["out"] / "group" / "site_effects.json").read_text())


def test_physics_wm_site_effect_is_smaller_than_the_classical_one(travelling):
    e = _site_effects(travelling)["tissues"]["WM"]
    phys = e["within_subject"]["mean_cov_x1e3"]
    clas = e["classical"]["within_subject"]["mean_cov_x1e3"]
    assert phys < clas, (phys, clas)  # measured 15 against 174 (3 subjects: 19 against 177)
    assert (travelling["out"] / "group" / "site_effects.png").is_file()


@pytest.mark.xfail(strict=True, reason="the shipped model's GM varies across sites as much "
                   "as Atropos's on the demo (the SPGR site reads GM +9 %, the MPRAGE sites "
                   "-3 to -7 %; docs/segmentation.md, travelling subjects): a goal not met "
                   "yet")
def test_physics_gm_site_effect_is_smaller_than_the_classical_one(travelling):
    e = _site_effects(travelling)["tissues"]["GM"]
    assert e["within_subject"]["mean_cov_x1e3"] < e["classical"]["within_subject"][
        "mean_cov_x1e3"]


def test_physics_volumes_are_near_the_truth_and_nearer_than_the_classical_ones(travelling):
    """Against the demo's true volumes (the same anatomy at every site): the physics
    model's mean absolute error is under 10 % for every tissue (measured 6.3 / 2.0 / 4.9
    % GM / WM / CSF) and under Atropos's for GM and WM (15.2 / 25.1 %)."""
    from phys_bids.demo import demo_truth

    truth = demo_truth(subjects=travelling["subjects"], voxel=2.0, seed=4)
    rows = list(csv.DictReader((travelling["out"] / "group" / "volumes.tsv").open(),
                               delimiter="\t"))
    assert len(rows) == 3 * travelling["subjects"]

    def mean_abs_error(t: str, column: str) -> float:
        return sum(abs(float(r[column]) / truth[r["participant_id"]][t] - 1)
                   for r in rows) / len(rows) * 100

    for t in ("GM", "WM", "CSF"):
        phys = mean_abs_error(t, f"{t}_ml")
        assert phys < 10.0, (t, phys)
        if t != "CSF":  # CSF: 4.9 against 5.7, too close to assert
            assert phys < mean_abs_error(t, f"{t}_atropos_ml"), t


@pytest.mark.slow
def test_bridging_recovers_the_protocol_difference_and_beats_classical(travelling3):
    out = travelling3["out"]
    r = cli(travelling3["bids"], out, "group", "--bridge", "siteA", "siteB", "--bridge-steps",
            "7", *travelling3["common"], timeout=3600)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "group" / "bridge.json").read_text())
    truth = (SITES["siteA"]["params"]["ti"], SITES["siteB"]["params"]["ti"])
    assert rep["sidecars"] == {"A": truth[0], "B": truth[1]}
    step = rep["grid"]["A"][1] - rep["grid"]["A"][0]
    found = rep["chosen"]["B"] - rep["chosen"]["A"]
    assert abs(found - (truth[1] - truth[0])) <= step + 1e-9, rep["chosen"]
    ev = rep["test_mean_abs_pct_difference"]
    assert ev["physics_bridged"]["mean_pct"] < ev["classical_uncorrected"]["mean_pct"]
    assert ev["physics_as_processed"]["mean_pct"] < ev["classical_uncorrected"]["mean_pct"]
    proto = json.loads((out / "group" / "bridge_protocol.json").read_text())
    assert len(proto["runs"]) == 6  # every scan of A and B
    html = (out / "group" / "report.html").read_text()
    assert "Bridging siteA" in html and "bridge_contour.png" in html
