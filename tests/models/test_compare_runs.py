"""bench/compare_runs.py: two consistency runs over the images they share."""

import json

import numpy as np
import pytest

from tests.scripts import bench_script


def _run(tmp_path, name, ti, volumes, seed=2024, flags=None):
    doc = {"meta": {"seed": seed},
           "curves": {"seg-physics": {"mprage-id": [
               {"subject": s, "ti": list(ti), "volumes": v.tolist(),
                **({"harmonised": flags} if flags else {})}
               for s, v in volumes.items()]}}}
    (tmp_path / name).mkdir()
    (tmp_path / name / "consistency.json").write_text(json.dumps(doc))
    return str(tmp_path / name)


def test_the_cov_of_each_run_is_taken_over_the_images_both_hold(tmp_path):
    """A 121-TI run and a 31-TI run (every fourth TI): each CoV is over the 31 shared
    images, per subject and as mean +- SD; a subject with fewer than 3 shared images is
    left out and named; runs of other seeds (other phantoms) are refused."""
    compare = bench_script("compare_runs")
    rng = np.random.default_rng(0)
    ti121, ti31 = np.linspace(0.6, 1.2, 121), np.linspace(0.6, 1.2, 31)
    a = {s: 1000 + rng.normal(0, 5, (121, 3)) for s in ("h1", "h2")}
    b = {"h1": 1000 + rng.normal(0, 1, (31, 3)), "h2": 1000 + rng.normal(0, 2, (31, 3))}
    da = _run(tmp_path, "a", ti121, a)
    db = _run(tmp_path, "b", ti31, b)
    compare.main(["--a", da, "--b", db, "--a-label", "curve", "--b-label", "landmarks",
                  "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "compare_runs.json").read_text())
    cell = res["cov_x1e3"]["seg-physics"]["mprage-id"]
    for s in ("h1", "h2"):
        assert cell["subjects"][s]["n"] == 31
        assert cell["subjects"][s]["a"] == pytest.approx(compare.cov(a[s][::4]), abs=1e-3)
        assert cell["subjects"][s]["b"] == pytest.approx(compare.cov(b[s]), abs=1e-3)
    per = np.array([compare.cov(b[s]) for s in ("h1", "h2")])
    assert cell["b"]["mean"] == pytest.approx(per.mean(0), abs=2e-3)
    assert cell["b"]["sd"] == pytest.approx(per.std(0), abs=2e-3)
    md = (tmp_path / "out" / "compare_runs.md").read_text()
    assert "| h1 | 31 |" in md and "**curve** and **landmarks**" in md
    # TIs off the 121-image grid: nothing shared
    off = [0.6125, 0.6225, 0.6325]
    dc = _run(tmp_path, "c", off, {"h1": np.full((3, 3), 1000.0)})
    with pytest.raises(SystemExit, match="share no network"):
        compare.main(["--a", da, "--b", dc, "--out", str(tmp_path / "out2")])
    # one subject off the grid, one on it: the first is left out and named
    doc = json.loads((tmp_path / "b" / "consistency.json").read_text())
    doc["curves"]["seg-physics"]["mprage-id"][0]["ti"] = off[:2] + list(ti31[2:] + 0.0025)
    (tmp_path / "b" / "consistency.json").write_text(json.dumps(doc))
    compare.main(["--a", da, "--b", db, "--out", str(tmp_path / "out4")])
    cell = json.loads((tmp_path / "out4" / "compare_runs.json").read_text())["cov_x1e3"][
        "seg-physics"]["mprage-id"]
    assert cell["left_out"] == ["h1"] and list(cell["subjects"]) == ["h2"]
    assert "Left out (fewer than 3 shared images): h1" in (
        tmp_path / "out4" / "compare_runs.md").read_text()
    dd = _run(tmp_path, "d", ti31, b, seed=0)
    with pytest.raises(SystemExit, match="seeds differ"):
        compare.main(["--a", da, "--b", dd, "--out", str(tmp_path / "out3")])


def test_the_images_both_runs_re_rendered_are_compared_apart(tmp_path):
    """Two harmonised runs that flag the same images as re-rendered: the CoV over those
    is given too (the rest were segmented as acquired in both); --conditions keeps the
    conditions asked for."""
    compare = bench_script("compare_runs")
    rng = np.random.default_rng(1)
    ti = np.linspace(0.1, 2.0, 7)
    flags = [True, False, True, True, True, True, True]
    a = {"h1": 1000 + rng.normal(0, 5, (7, 3))}
    b = {"h1": a["h1"].copy()}
    b["h1"][flags] = 1000 + rng.normal(0, 1, (6, 3))
    da = _run(tmp_path, "a", ti, a, flags=flags)
    db = _run(tmp_path, "b", ti, b, flags=flags)
    compare.main(["--a", da, "--b", db, "--conditions", "mprage-id", "--out",
                  str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "compare_runs.json").read_text())["cov_x1e3"]
    r = res["seg-physics"]["mprage-id"]["subjects"]["h1"]["rendered"]
    keep = np.array(flags)
    assert r["n"] == 6
    assert r["a"] == pytest.approx(compare.cov(a["h1"][keep]), abs=1e-3)
    assert r["b"] == pytest.approx(compare.cov(b["h1"][keep]), abs=1e-3)
    assert "| h1, the 6 re-rendered by both | 6 |" in (
        tmp_path / "out" / "compare_runs.md").read_text()
    with pytest.raises(SystemExit, match="share no network"):
        compare.main(["--a", da, "--b", db, "--conditions", "spgr-id", "--out",
                      str(tmp_path / "out2")])
