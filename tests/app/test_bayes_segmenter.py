"""``participant --segmenter bayes`` end to end on the demo (one head, 2 mm, its MPRAGE
and SPGR sites): the physics-tied Bayesian segmentation through the application."""

from __future__ import annotations

import csv
import json

import pytest

from phys_bids.demo import demo_truth, write_demo_dataset

from .helpers import cli

SITES = ("siteA", "siteC")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bayes")
    bids = write_demo_dataset(base / "bids", subjects=1, voxel=2.0, seed=0)
    out = base / "out"
    r = cli(bids, out, "participant", "-w", base / "work", "--segmenter", "bayes",
            "--qmri-model", "none", "--session-label", *SITES, "--device", "cpu",
            "--omp-nthreads", "2", "--skip-bids-validation")
    return r, out


def _morph(out, site):
    f = out / f"sub-01/ses-{site}/anat/sub-01_ses-{site}_morph.tsv"
    return {row["tissue"]: row for row in csv.DictReader(open(f), delimiter="\t")}


def test_runs_and_writes_posterior_bounds_not_monte_carlo(run):
    r, out = run
    assert r.returncode == 0, r.stderr[-3000:]
    for site in SITES:
        rows = _morph(out, site)
        for t in ("GM", "WM", "CSF"):
            v, sd = float(rows[t]["volume_ml"]), float(rows[t]["post_sd_ml"])
            assert 0 < sd < 0.05 * v
            assert float(rows[t]["post_p2_5_ml"]) == pytest.approx(v - 1.96 * sd, abs=2e-4)
            assert rows[t]["mc_median_ml"] == "n/a" and rows[t]["cal_p2_5_ml"] == "n/a"
        assert rows["ICV"]["post_sd_ml"] == "n/a"


def test_provenance_records_the_fitted_tissue_model(run):
    _, out = run
    for site in SITES:
        side = json.loads((out / f"sub-01/ses-{site}/anat/sub-01_ses-{site}_dseg.json")
                          .read_text())["PhysBIDS"]
        assert side["Model"] is None
        fit = side["Segmentation"]["Fit"]
        assert fit["converged"] and fit["gain"] > 0
        assert set(fit["cnr"]) == {"GM-WM", "GM-CSF", "WM-CSF"}
        # the demo's MPRAGE separates GM from WM more than its SPGR does
    cnr = {s: json.loads((out / f"sub-01/ses-{s}/anat/sub-01_ses-{s}_dseg.json").read_text())
           ["PhysBIDS"]["Segmentation"]["Fit"]["cnr"]["GM-WM"] for s in SITES}
    assert cnr["siteA"] > cnr["siteC"] > 1.0


def test_gm_agrees_across_the_protocols(run):
    """The same head at an MPRAGE and an SPGR site: GM within 4 % of each other
    (measured 2.1 %; the shipped network reads the SPGR site's GM 15 % higher on the
    same scans) and within 12 % of the demo's anatomy (measured +9 to +11 %). WM is
    read 12-18 % high and 5 % apart; the SPGR site's skull strip holds more outer CSF
    (docs/segmentation.md)."""
    _, out = run
    truth = demo_truth()["sub-01"]
    gm = {s: float(_morph(out, s)["GM"]["volume_ml"]) for s in SITES}
    assert abs(gm["siteA"] - gm["siteC"]) / (0.5 * (gm["siteA"] + gm["siteC"])) < 0.04, gm
    for s in SITES:
        assert gm[s] == pytest.approx(truth["GM"], rel=0.12), gm
    wm = {s: float(_morph(out, s)["WM"]["volume_ml"]) for s in SITES}
    assert abs(wm["siteA"] - wm["siteC"]) / (0.5 * (wm["siteA"] + wm["siteC"])) < 0.07, wm
