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
    from ..scripts import training_script

    subjects = training_script("calibrate_bounds")._subjects
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert subjects("val", split) == ["c"]
    assert subjects("train+val", split) == ["a", "b", "c"]
    assert subjects("b, c", split) == ["b", "c"]
    with pytest.raises(ValueError, match="test subject"):
        subjects("c,d", split)
    with pytest.raises(ValueError, match="not in the model's train/val split"):
        subjects("x", split)


def test_calibration_rows_of_two_samplers_compare_on_the_images_they_share():
    from ..scripts import bench_script

    bench = bench_script("compare_calibration_rows")

    def row(subject, tissue, median, half, seed=101):
        return {"subject": subject, "condition": "mprage-id", "image": 0, "tissue": tissue,
                "seed": seed, "truth_ml": 100.0, "in_training_space": True,
                "median": median, "q1": median - half, "q3": median + half,
                "p2_5": median - 2 * half, "p97_5": median + 2 * half}

    old = [row("a", "GM", 110.0, 2.0), row("b", "GM", 90.0, 2.0), row("c", "GM", 95.0, 1.0)]
    new = [row("a", "GM", 111.1, 1.0), row("b", "GM", 90.0, 0.5),
           row("c", "GM", 95.0, 1.0, seed=7)]  # another seed: not the same image
    res = bench.compare(old, new, seed=101)
    assert res["rows"] == 2
    gm = res["tissues"]["GM"]
    assert gm["max_shift_pct"] == pytest.approx(1.0)
    assert gm["median_shift_pct"] == pytest.approx(0.5)
    assert gm["iqr_width_pct"][1] < gm["iqr_width_pct"][0]  # the new intervals are narrower
    # narrower intervals around the same medians leave the truth further outside
    assert res["margins"]["new"]["in"]["GM"]["0.5"] > res["margins"]["old"]["in"]["GM"]["0.5"]
    assert "| GM |" in bench.markdown(res)
    with pytest.raises(ValueError, match="share no"):
        bench.compare(old, [row("z", "GM", 100.0, 1.0)])
