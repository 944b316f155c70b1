"""Bridging a protocol change and the classical segmentation of the group level."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phys_bids.bids.protocol import Protocol
from phys_bids.group.bridge import (
    BridgeError,
    bridge_pairs,
    evaluate,
    percent_difference,
    run_bridge,
    search,
    split_pairs,
    sweep_volumes,
)
from phys_bids.models.classical import ClassicalSegmentationError, atropos_labels
from phys_bids.models.registry import available_models, load_model

GRID_A = np.linspace(0.6, 1.2, 13)
GRID_B = np.linspace(0.6, 1.2, 13)


def _row(sub, ses, site, seq="MPRAGE", acq=None, ti=0.9):
    name = f"sub-{sub}_ses-{ses}" + (f"_acq-{acq}" if acq else "") + "_T1w.nii.gz"
    return {"participant_id": f"sub-{sub}", "session_id": f"ses-{ses}", "site": site,
            "source": f"sub-{sub}/ses-{ses}/anat/{name}", "sequence": seq,
            "parameters": json.dumps({"ti": ti, "tr": 2.3, "te": 0.003, "fa": 9.0}),
            "GM_ml": "700", "WM_ml": "500", "CSF_ml": "300"}


def _synthetic_sweeps(n, true_a, true_b, rng):
    """Volumes that depend linearly on the told TI, with tissue-specific slopes that
    differ between the protocols: only the true pair makes A and B agree."""
    base = rng.uniform(500, 800, size=(n, 1, 3))
    slope_a = np.array([0.30, -0.20, 0.10])
    slope_b = np.array([0.15, -0.25, 0.05])
    va = base * (1 + slope_a * (GRID_A[None, :, None] - true_a))
    vb = base * (1 + slope_b * (GRID_B[None, :, None] - true_b))
    return va, vb


def test_search_recovers_the_parameters_that_make_the_protocols_agree():
    rng = np.random.default_rng(0)
    va, vb = _synthetic_sweeps(6, 0.9, 1.1, rng)
    res = search(va, vb)
    p, q = res["index"]
    assert (GRID_A[p], GRID_B[q]) == pytest.approx((0.9, 1.1))
    assert res["objective"][p, q] == pytest.approx(0.0, abs=1e-9)
    # any other pair leaves a difference
    assert np.sort(res["objective"].ravel())[1] > 0.1


def test_evaluation_linear_correction_removes_a_linear_protocol_effect():
    rng = np.random.default_rng(1)
    a = rng.uniform(500, 800, size=(8, 3))
    b = 20.0 + 1.05 * a  # protocol B reads 5 % + 20 mL more
    vols = np.stack([a, b], axis=1)
    exact = np.stack([a, a], axis=1)
    out = evaluate(list(range(4)), list(range(4, 8)), processed=vols, classical=vols,
                   bridged=exact)
    assert out["classical_uncorrected"]["mean_pct"] > 5.0
    assert out["classical_linear"]["mean_pct"] == pytest.approx(0.0, abs=1e-6)
    assert out["physics_bridged"]["mean_pct"] == 0.0
    assert set(out) == {"physics_as_processed", "physics_bridged", "classical_uncorrected",
                        "physics_linear", "classical_linear"}


def test_pairs_are_found_by_site_session_or_acquisition_and_bad_groups_refused():
    rows = [_row(s, "pre", "Old scanner") for s in ("01", "02", "03", "04")]
    rows += [_row(s, "post", "New scanner", ti=1.1) for s in ("01", "02", "03")]
    rows += [_row("05", "post", "New scanner")]
    for a, b in (("pre", "post"), ("ses-pre", "ses-post"), ("Old scanner", "New scanner")):
        pairs = bridge_pairs(rows, a, b)
        assert [p[0]["participant_id"] for p in pairs] == ["sub-01", "sub-02", "sub-03"]
        assert all(p[0]["session_id"] == "ses-pre" for p in pairs)
    acq = [_row(s, "1", "X", acq=a) for s in ("01", "02", "03") for a in ("v1", "v2")]
    assert len(bridge_pairs(acq, "acq-v1", "v2")) == 3
    with pytest.raises(BridgeError, match="2 subject.* scanned in both; bridging needs >= 3"):
        bridge_pairs(rows[:2] + rows[4:6], "pre", "post")
    with pytest.raises(BridgeError, match="is in both groups"):
        bridge_pairs(rows, "Old scanner", "pre")
    mixed = rows[:3] + [_row(s, "post", "N", seq=q) for s, q in
                        (("01", "MPRAGE"), ("02", "SPGR"), ("03", "MPRAGE"))]
    with pytest.raises(BridgeError, match="must share one sequence"):
        bridge_pairs(mixed, "pre", "post")


def test_split_is_by_pair_seeded_and_keeps_two_for_training():
    for n in (3, 4, 7, 12):
        train, test = split_pairs(n, seed=3)
        assert len(train) >= 2 and len(test) >= 1
        assert sorted(train + test) == list(range(n))
    assert split_pairs(10, 1) == split_pairs(10, 1) != split_pairs(10, 2)


def test_percent_difference_is_symmetric():
    a, b = np.array([100.0, 50.0]), np.array([110.0, 40.0])
    assert np.allclose(percent_difference(a, b), percent_difference(b, a))


def test_atropos_names_clusters_by_intensity_and_leaves_no_temporary_files(tmp_path,
                                                                         monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rng = np.random.default_rng(2)
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[:, :, :6], truth[:, :, 6:13], truth[:, :, 13:] = 3, 1, 2  # CSF, GM, WM slabs
    signal = np.array([0.0, 0.6, 1.0, 0.25])[truth]
    img = signal + rng.normal(0, 0.03, truth.shape)
    img[0, 0, 0] = 25.0  # one bright outlier must not take a class of its own
    lab = atropos_labels(img, np.ones(truth.shape, bool))
    agree = (lab == truth).mean()
    assert agree > 0.98
    assert list(tmp_path.iterdir()) == []


def test_atropos_repeats_exactly_across_calls_processes_and_threads():
    """Atropos seeds its k-means/MRF from the clock unless told not to: two calls on an
    ambiguous image (a smooth random field: many voxels near the cluster borders) gave
    41-100 different labels of 64000 before ``r=0``; now one call, another and a fresh
    process on 2 ITK threads agree voxel for voxel."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 40, 40)).cumsum(0)
    mask = np.ones(img.shape, bool)
    first = atropos_labels(img, mask)
    assert np.array_equal(first, atropos_labels(img, mask))
    code = ("import numpy as np, sys; from phys_bids.models.classical import atropos_labels; "
            "img = np.random.default_rng(0).normal(size=(40, 40, 40)).cumsum(0); "
            "sys.stdout.buffer.write(atropos_labels(img, np.ones(img.shape, bool)).tobytes())")
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"}
    other = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                           capture_output=True).stdout
    assert np.array_equal(np.frombuffer(other, np.uint8).reshape(first.shape), first)
    assert len(np.unique(first)) == 3


def test_atropos_starts_again_where_its_k_means_leaves_a_class_empty():
    """Tissue peaks with nothing between them (no partial volume; a CSF peak far below
    GM and WM, as on the benchmark's phantoms) leave Atropos's evenly spread middle
    centre without voxels: it stops with an empty class. Started again from the brain's
    percentiles it finds the three tissues; an image with two levels still fails."""
    rng = np.random.default_rng(2)
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[:, :, :14], truth[:, :, 14:28], truth[:, :, 28:] = 3, 1, 2  # CSF, GM, WM
    lo, hi = np.array([0, 1.15, 1.29, 0.53]), np.array([0, 1.26, 1.44, 0.56])
    img = lo[truth] + rng.uniform(size=truth.shape) * (hi - lo)[truth]
    mask = np.ones(truth.shape, bool)
    restarts: list = []
    lab = atropos_labels(img, mask, restarts=restarts)
    assert (lab == truth).mean() > 0.99
    (centres,) = restarts
    assert centres[0] < centres[1] < centres[2]
    # an image that separates its tissues well is segmented at the first start
    again: list = []
    spread = np.array([0.0, 0.6, 1.0, 0.25])[truth] + rng.normal(0, 0.03, truth.shape)
    assert (atropos_labels(spread, mask, restarts=again) == truth).mean() > 0.98
    assert again == []
    with pytest.raises(ClassicalSegmentationError):
        atropos_labels(np.where(truth == 3, 0.5, 1.2), mask)


needs_model = pytest.mark.skipif("seg-physics" not in available_models(),
                                 reason="the shipped seg-physics model is not installed")


def _phantom_outputs(out: Path, rows: list[dict], rng) -> None:
    """Template-space preprocessed T1w and dseg, as the participant level writes them,
    for small brains whose MPRAGE contrast follows each row's TI."""
    from phys_bids.physics.simulate import simulate

    for r in rows:
        folder = out / Path(r["source"]).parent
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(r["source"]).name.split("_T1w")[0]
        cls = np.zeros((40, 40, 40), np.uint8)
        zz, yy, xx = np.mgrid[:40, :40, :40] - 19.5
        rad = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
        cls[rad < 16], cls[rad < 13], cls[rad < 8] = 3, 1, 2
        r1 = np.array([0, 0.68, 1.04, 0.24])[cls]
        pd = np.array([0, 0.8, 0.7, 1.0])[cls]
        import torch

        ti = json.loads(r["parameters"])["ti"]
        sig = simulate("MPRAGE", {"pd": torch.tensor(pd), "r1": torch.tensor(r1),
                                  "r2s": torch.full(cls.shape, 20.0)}, {"ti": ti})[0]
        img = sig.numpy() * (cls > 0) + rng.normal(0, 0.005, cls.shape) * (cls > 0)
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image(img.astype(np.float32), aff),
                 str(folder / f"{stem}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"))
        nib.save(nib.Nifti1Image(cls, aff),
                 str(folder / f"{stem}_space-MNI152NLin2009aSym_dseg.nii.gz"))


@needs_model
def test_run_bridge_writes_a_usable_protocol_file_and_plot(tmp_path):
    rows = [_row(s, "pre", "A", ti=0.9) for s in ("01", "02", "03")]
    rows += [_row(s, "post", "B", ti=1.1) for s in ("01", "02", "03")]
    _phantom_outputs(tmp_path, rows, np.random.default_rng(0))
    res = run_bridge(rows, tmp_path, "pre", "post", model_name="seg-physics", steps=3, seed=0,
                     classical=False)
    rep = res.report
    assert rep["grid"]["A"] == pytest.approx([0.6, 0.9, 1.2])
    assert rep["sidecars"] == {"A": 0.9, "B": 1.1}
    assert {p["subset"] for p in rep["pairs"]} == {"train", "test"}
    assert len(rep["per_test_subject"]) == sum(p["subset"] == "test" for p in rep["pairs"])
    ev = rep["test_mean_abs_pct_difference"]
    assert set(ev) == {"physics_as_processed", "physics_bridged", "physics_linear"}
    assert all(np.isfinite(v["mean_pct"]) for v in ev.values())
    assert np.array(rep["objective_pct"]).shape == (3, 3)
    # the protocol file is one the participant level accepts, naming every scan
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(res.protocol))
    proto = Protocol.load(path)
    assert proto.fields_for(Path(rows[0]["source"]).name) == {
        "InversionTime": rep["chosen"]["A"]}
    assert proto.fields_for(Path(rows[4]["source"]).name) == {
        "InversionTime": rep["chosen"]["B"]}
    assert res.figure[:8] == b"\x89PNG\r\n\x1a\n"


@needs_model
def test_the_sweep_tells_the_model_each_value():
    model = load_model("seg-physics")
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 1.0, (32, 32, 32)).astype(np.float32)
    mask = np.ones(img.shape, bool)
    v = sweep_volumes(model, img, mask, 0.001, "MPRAGE", {"ti": 0.9, "tr": 2.3}, GRID_A[::4])
    assert v.shape == (4, 3)
    # probabilities of GM/WM/CSF fill the brain (background is the rest), and the
    # told TI changes the volumes of the same image
    assert np.all(v.sum(1) <= 32 ** 3 * 0.001 + 1e-6)
    assert np.ptp(v[:, 0]) > 0


def test_bridge_benchmark_runs_both_levels_with_the_model_it_is_given(tmp_path):
    """bench/bench_bridge.py --model: the participant level segments with that model and
    the group level's bridging search runs the same one (both command lines parse with
    phys-bids' own parser); without it, the application's default."""
    from phys_bids.cli import build_parser

    from ..scripts import bench_script

    bench = bench_script("bench_bridge")
    cli_parser = build_parser()
    for given, expected in (([], cli_parser.get_default("model")),
                            (["--model", "seg-physics-film"], "seg-physics-film")):
        args = bench.parser().parse_args(["--steps", "5", *given])
        participant, group = bench.commands(args, tmp_path / "bids", tmp_path / "out", tmp_path)
        for line, level in ((participant, "participant"), (group, "group")):
            parsed = cli_parser.parse_args(line)
            assert parsed.analysis_level == level
            assert parsed.model == expected
        assert cli_parser.parse_args(group).bridge == ["siteA", "siteB"]
        assert cli_parser.parse_args(group).bridge_steps == 5


def test_bridge_benchmark_report_heads_the_model_column_with_the_model_measured():
    """The markdown of bench_bridge names the model it measured in the column header (it
    said "physics" whatever --model was) and carries the figures of the result."""
    from ..scripts import bench_script

    bench = bench_script("bench_bridge")
    effects = {t: {"physics": {"partial_eta2_site": 0.5 + i / 10,
                               "within_subject_cov_x1e3": 10.0 * (i + 1)},
                   "classical": {"partial_eta2_site": 0.25, "within_subject_cov_x1e3": 99.0}}
               for i, t in enumerate(("GM", "WM", "CSF"))}
    result = {"model": "seg-baseline", "subjects": 4, "voxel_mm": 1.5, "steps": 5,
              "participant_seconds": 12.0, "group_seconds": 34.0, "site_effects": effects,
              "bridge": {"truth": [0.9, 1.1], "chosen": [0.8, 1.0], "grid_step": 0.1,
                         "test_mean_abs_pct_difference": {
                             "physics_bridged": {"mean_pct": 1.5, "GM_pct": 2.0, "WM_pct": 1.0}}}}
    err = {t: {"mean_signed_pct": v, "mean_abs_pct": abs(v)}
           for t, v in (("GM", -6.44), ("WM", 10.5), ("CSF", 0.0))}
    failed = {t: {"mean_signed_pct": None, "mean_abs_pct": None} for t in err}
    result["error_vs_truth"] = {"siteA": {"model": err, "classical": err},
                                "siteC": {"model": err, "classical": failed}}
    md = bench.markdown(result)
    assert "| siteA | -6.4 / -6.4 | +10.5 / +10.5 | +0.0 / +0.0 |" in md
    assert "| siteC | -6.4 / n/a | +10.5 / n/a | +0.0 / n/a |" in md
    header = next(line for line in md.splitlines() if line.startswith("| tissue"))
    assert header.startswith("| tissue | seg-baseline: site share")
    assert "physics" not in header
    assert "| WM | 0.600 | 20.0 | 0.250 | 99.0 |" in md
    assert "searched TI (0.800, 1.000) s" in md
    assert "| physics_bridged | 1.50 | 2.00 | 1.00 |" in md


def test_bridge_benchmark_reports_each_sites_error_against_the_truth():
    """bench_bridge's accuracy: per site, the model's and Atropos's mean signed and
    absolute % error against the true volumes, each subject against its own truth."""
    from ..scripts import bench_script

    bench = bench_script("bench_bridge")
    truth = {"sub-01": {"GM": 100.0, "WM": 200.0, "CSF": 50.0},
             "sub-02": {"GM": 200.0, "WM": 100.0, "CSF": 50.0}}

    def row(sub, site, gm, wm, csf, a_gm):
        return {"participant_id": sub, "session_id": f"ses-{site}", "GM_ml": gm,
                "WM_ml": wm, "CSF_ml": csf, "GM_atropos_ml": a_gm, "WM_atropos_ml": wm,
                "CSF_atropos_ml": csf}

    rows = [row("sub-01", "siteA", "110", "200", "50", "90"),
            row("sub-02", "siteA", "180", "100", "50", "200"),
            row("sub-01", "siteB", "100", "220", "40", "100"),
            row("sub-02", "siteB", "200", "100", "60", "200")]
    acc = bench.accuracy(rows, truth)
    assert sorted(acc) == ["siteA", "siteB"]
    # site A: GM +10 % and -10 %: signed 0, absolute 10; Atropos -10 % and 0 %
    assert acc["siteA"]["model"]["GM"]["mean_signed_pct"] == pytest.approx(0.0)
    assert acc["siteA"]["model"]["GM"]["mean_abs_pct"] == pytest.approx(10.0)
    assert acc["siteA"]["classical"]["GM"]["mean_signed_pct"] == pytest.approx(-5.0)
    # site B: WM +10 % and 0 %, CSF -20 % and +20 %
    assert acc["siteB"]["model"]["WM"]["mean_signed_pct"] == pytest.approx(5.0)
    assert acc["siteB"]["model"]["CSF"]["mean_signed_pct"] == pytest.approx(0.0)
    assert acc["siteB"]["model"]["CSF"]["mean_abs_pct"] == pytest.approx(20.0)
    # a scan whose Atropos failed (n/a) is left out of Atropos's mean, not a crash
    rows[0]["GM_atropos_ml"] = "n/a"
    acc = bench.accuracy(rows, truth)
    assert acc["siteA"]["classical"]["GM"]["n"] == 1
    assert acc["siteA"]["classical"]["GM"]["mean_signed_pct"] == pytest.approx(0.0)
    assert acc["siteA"]["model"]["GM"]["n"] == 2
    rows[1]["GM_atropos_ml"] = "n/a"
    assert bench.accuracy(rows, truth)["siteA"]["classical"]["GM"]["mean_signed_pct"] is None
