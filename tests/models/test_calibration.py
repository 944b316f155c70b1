"""Conformal widening of the Monte-Carlo volume bounds (phys_bids.models.calibration)."""

import numpy as np
import pytest

from phys_bids.models.calibration import coverage_summary, fit_margins, widen


def _rows(rng, n, *, bias, spread, inside, condition="c"):
    """Intervals around a biased, noisy estimate of a 500 mL truth (what a model with a
    systematic error and a too-narrow Monte-Carlo spread produces)."""
    rows = []
    for i in range(n):
        med = 500.0 * (1 + bias + spread * rng.standard_normal())
        rows.append({"tissue": "GM", "condition": condition, "image": i,
                     "in_training_space": inside, "truth_ml": 500.0, "median": med,
                     "q1": med - 1.0, "q3": med + 1.0, "p2_5": med - 3.0, "p97_5": med + 3.0,
                     "iqr": 2.0})
    return rows


def test_widened_intervals_reach_nominal_coverage_on_exchangeable_images():
    rng = np.random.default_rng(0)
    cal = {"margins": fit_margins(_rows(rng, 200, bias=0.05, spread=0.08, inside=True))}
    test = _rows(rng, 2000, bias=0.05, spread=0.08, inside=True)
    s = coverage_summary(test, cal)
    # raw intervals almost never hold the truth; widened ones reach the nominal levels
    assert s["c"]["coverage_iqr"] < 0.05 and s["c"]["coverage_95"] < 0.1
    assert s["calibrated"]["c"]["cal_in_iqr"] == pytest.approx(0.5, abs=0.06)
    assert s["calibrated"]["c"]["cal_in_95"] == pytest.approx(0.95, abs=0.03)
    assert s["all in distribution"]["n"] == 2000 and "all out of distribution" not in s


def test_margins_are_fitted_separately_inside_and_outside_the_training_space():
    rng = np.random.default_rng(1)
    rows = (_rows(rng, 100, bias=0.0, spread=0.02, inside=True)
            + _rows(rng, 100, bias=0.0, spread=0.2, inside=False, condition="ood"))
    m = fit_margins(rows)
    assert m["out"]["GM"]["0.95"] > 3 * m["in"]["GM"]["0.95"]
    s = coverage_summary(rows, {"margins": m})
    cal = s["calibrated"]
    assert cal["all out of distribution"]["cal_width_95_pct"] > \
        3 * cal["all in distribution"]["cal_width_95_pct"]
    # without margins for a group, its rows are scored raw only
    s = coverage_summary(rows, {"margins": {"in": m["in"], "out": None}})
    assert "ood" not in s["calibrated"] and "c" in s["calibrated"]


def test_widen_grows_both_ends_by_the_margin_times_the_median():
    w = widen({"median": 200.0, "q1": 190.0, "q3": 210.0, "p2_5": 180.0, "p97_5": 220.0},
              {"0.5": 0.1, "0.95": 0.25})
    assert w == {"q1": 170.0, "q3": 230.0, "p2_5": 130.0, "p97_5": 270.0}


def test_calibration_heads_never_include_the_test_subjects():
    from ..scripts import workflow_script

    subjects = workflow_script("calibrate_bounds")._subjects
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert subjects("val", split) == ["c"]
    assert subjects("train+val", split) == ["a", "b", "c"]
    assert subjects("b, c", split) == ["b", "c"]
    with pytest.raises(ValueError, match="test subject"):
        subjects("c,d", split)
    with pytest.raises(ValueError, match="not in the model's train/val split"):
        subjects("x", split)
