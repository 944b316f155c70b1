"""bench/compare_harmonise.py: runs of the same phantoms listed in another order, and a
subject's control volumes taken from whichever control folder holds them."""

import json

import numpy as np
import pytest

from tests.scripts import bench_script

TISSUES = ("GM", "WM", "CSF")


def _run(tmp_path, name, listed, curves, harmonise=False, seeds=None, dice=0.8, fa=None):
    """A consistency.json of one network and condition: ``listed`` its --subjects,
    ``curves`` {subject: (images, 3) volumes} (a merged file may lack some), ``seeds``
    {subject: recorded phantom seed} (files from before the seed was recorded: none)."""
    seeds = seeds or {}
    doc = {"meta": {"n_images": 6, "seed": 2024, "window": 96, "subjects": listed,
                    "models": {"seg-physics": {"weights_sha256": "abc"}},
                    **({"harmonise": "curve"} if harmonise else {})},
           "curves": {"seg-physics": {"spgr-id": [
               {"subject": s, "volumes": v.tolist(), **({"fa": fa} if fa else {}),
                **({"harmonised": [True] * 4 + [False] * 2} if harmonise else {})}
               for s, v in curves.items()]}},
           "per_subject": {"seg-physics": {"spgr-id": [
               {"subject": s, "dice_anatomy": dict.fromkeys(TISSUES, dice + 0.01 * i),
                "volume_error_pct": dict.fromkeys(TISSUES, float(i)),
                **({"phantom_seed": seeds[s]} if s in seeds else {})}
               for i, s in enumerate(listed)]}}}
    (tmp_path / name).mkdir()
    (tmp_path / name / "consistency.json").write_text(json.dumps(doc))
    return str(tmp_path / name)


def test_subjects_in_another_order_and_curves_from_a_second_control(tmp_path):
    """One subject per process, then merged, lists the test subjects in another order
    than the control: the same phantoms (seeded by their place in the test split), so
    they compare. The merged control lacks head_15's curve, which a single-subject run
    holds; other phantom seeds, or a subject no control holds, are refused."""
    compare = bench_script("compare_harmonise")
    rng = np.random.default_rng(0)
    vol = {s: 1000 + rng.normal(0, 5 * (i + 1), (6, 3))
           for i, s in enumerate(("head_14", "head_15", "head_16"))}
    harm = {s: 1000 + rng.normal(0, 1, (6, 3)) for s in vol}
    merged = _run(tmp_path, "merged", ["head_15", "head_14", "head_16"],
                  {s: vol[s] for s in ("head_14", "head_16")})
    single = _run(tmp_path, "single", ["head_15"], {"head_15": vol["head_15"]})
    seeds = {"head_14": 2024, "head_15": 2025, "head_16": 2026}
    h = _run(tmp_path, "harm", ["head_14", "head_15", "head_16"], harm, harmonise=True,
             seeds=seeds, dice=0.9)
    compare.main(["--control", merged, "--control", single, "--harmonised", h,
                  "--out", str(tmp_path / "cmp")])
    cell = json.loads((tmp_path / "cmp" / "harmonise_vs_control.json").read_text())[
        "seg-physics"]["spgr-id"]
    for run, v in (("control", vol), ("harmonised", harm)):
        want = np.mean([compare.cov(v[s]) for s in ("head_14", "head_15", "head_16")], 0)
        assert [cell["all"][run]["mean"][t] for t in TISSUES] == pytest.approx(want, abs=6e-3)
        want = np.mean([compare.cov(v[s][:4]) for s in v], 0)
        assert [cell["rendered"][run]["mean"][t] for t in TISSUES] == pytest.approx(
            want, abs=6e-3)
    # Dice and volume error: means over the same three subjects in both runs, each
    # subject's row found by name whatever its place in the file
    assert cell["dice_anatomy"]["control"]["GM"] == pytest.approx(0.81)
    assert cell["dice_anatomy"]["harmonised"]["GM"] == pytest.approx(0.91)
    assert cell["rendered_share"] == pytest.approx(4 / 6, abs=1e-3)
    with pytest.raises(SystemExit, match="no --control holds the curves of seg-physics "
                                         "spgr-id head_15"):
        compare.main(["--control", merged, "--harmonised", h, "--out", str(tmp_path / "x")])
    other = _run(tmp_path, "other", ["head_14", "head_15", "head_16"], harm, harmonise=True,
                 seeds={**seeds, "head_15": 2031})
    with pytest.raises(SystemExit, match="phantom seeds"):
        compare.main(["--control", merged, "--control", single, "--harmonised", other,
                      "--out", str(tmp_path / "y")])


def test_bands_and_refused_images_get_their_own_cov_per_subject(tmp_path):
    """--band PARAM:LO:HI gives the CoV over the images whose parameter lies in the
    band (ends inclusive), the refused images (not re-rendered) get theirs, per subject
    and as mean +- SD; a parameter the curves lack, or a malformed band, is refused in
    one line."""
    compare = bench_script("compare_harmonise")
    rng = np.random.default_rng(1)
    subjects = ("head_14", "head_15")
    fa = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    vol = {s: 1000 + rng.normal(0, 20, (6, 3)) for s in subjects}
    harm = {s: 1000 + rng.normal(0, 3, (6, 3)) for s in subjects}
    ctrl = _run(tmp_path, "ctrl", list(subjects), vol, fa=fa)
    h = _run(tmp_path, "harm", list(subjects), harm, harmonise=True, fa=fa)
    compare.main(["--control", ctrl, "--harmonised", h, "--band", "fa:20:40",
                  "--band", "fa:5:15", "--out", str(tmp_path / "cmp")])
    cell = json.loads((tmp_path / "cmp" / "harmonise_vs_control.json").read_text())[
        "seg-physics"]["spgr-id"]
    assert cell["images"] == {"all": [6, 6], "rendered": [4, 4], "refused": [2, 2],
                              "fa 20-40": [3, 3], "fa 5-15": [1, 1]}
    for run, v in (("control", vol), ("harmonised", harm)):
        for key, rows in (("fa 20-40", slice(1, 4)), ("refused", slice(4, 6))):
            per = {s: compare.cov(v[s][rows]) for s in subjects}
            for s in subjects:
                assert [cell[key][run]["subjects"][s][t] for t in TISSUES] == pytest.approx(
                    per[s], abs=6e-3)
            assert [cell[key][run]["mean"][t] for t in TISSUES] == pytest.approx(
                np.mean(list(per.values()), 0), abs=6e-3)
        assert cell["fa 5-15"][run] is None  # one image: no CoV
    md = (tmp_path / "cmp" / "harmonise_vs_control.md").read_text()
    assert "| seg-physics | spgr-id | fa 20-40 (3/3) |" in md
    # a subset of one image has no CoV, and the table says so
    assert "| seg-physics | spgr-id | fa 5-15 (1/1) | n/a | n/a |" in md
    with pytest.raises(SystemExit, match="curves hold no 'ti'"):
        compare.main(["--control", ctrl, "--harmonised", h, "--band", "ti:0.6:1.2",
                      "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="expected PARAM:LO:HI"):
        compare.main(["--control", ctrl, "--harmonised", h, "--band", "fa:40:20",
                      "--out", str(tmp_path / "y")])
