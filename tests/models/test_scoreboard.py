"""bench/scoreboard.py: the segmentation goals from result folders measured apart."""

import json

import numpy as np
import pytest

from tests.scripts import bench_script

TISSUES = ("GM", "WM", "CSF")
SUBJECTS = ("head_14", "head_15", "head_16")


def _folder(tmp_path, name, cells, n_images=121, seed=2024, harmonise=None):
    """A consistency.json holding ``cells`` {(method, condition): {subject: (cov, dice)}},
    each a 3-vector GM / WM / CSF."""
    per: dict = {}
    for (method, cond), subjects in cells.items():
        per.setdefault(method, {})[cond] = [
            {"subject": s, "cov_x1e3": dict(zip(TISSUES, cov, strict=True)),
             "dice_anatomy": dict(zip(TISSUES, dice, strict=True))}
            for s, (cov, dice) in subjects.items()]
    meta = {"n_images": n_images, "seed": seed, "subjects": sorted(
        {s for subj in cells.values() for s in subj})}
    if harmonise is not None:
        meta["harmonise"] = harmonise
    (tmp_path / name).mkdir()
    (tmp_path / name / "consistency.json").write_text(
        json.dumps({"meta": meta, "per_subject": per}))
    return tmp_path / name


def test_cells_goals_partial_and_missing_cells(tmp_path):
    """Cell means over subjects; each goal judged as the docs state it; two methods
    compared over the subjects both measured, and such a goal marked with them; absent
    cells are listed; a run
    from before the harmoniser's modes (``harmonise: true``) is the curve's row."""
    sb = bench_script("scoreboard")
    rng = np.random.default_rng(1)
    phys = {s: (rng.uniform(0.1, 0.3, 3), (0.95, 0.94, 0.92)) for s in SUBJECTS}
    # head_16, which Atropos lacks, varies so much that the three-subject mean (about
    # 13 in CSF) is above Atropos's 9: over the subjects both hold it is below
    phys["head_16"] = (np.array([0.2, 0.2, 40.0]), phys["head_16"][1])
    # the baseline varies more in GM and WM (physics: below 0.3), less in CSF
    base = {s: ((5.0, 5.0, 0.01), (0.9, 0.9, 0.9)) for s in SUBJECTS}
    atro = {s: ((9.0, 9.0, 9.0), (0.99, 0.99, 0.99)) for s in SUBJECTS[:2]}  # partial
    harm = {s: ((0.2, 0.3, 0.1), (0.95, 0.95, 0.95)) for s in SUBJECTS}
    folders = [
        _folder(tmp_path, "nets", {("seg-physics", "mprage-id"): phys,
                                   ("seg-baseline", "mprage-id"): base}),
        _folder(tmp_path, "atropos", {("atropos", "mprage-id"): atro}),
        _folder(tmp_path, "harm", {("seg-physics", "mprage-id"): harm}, harmonise=True),
    ]
    argv = sum((["--results", str(f)] for f in folders), []) + ["--out", str(tmp_path / "o")]
    sb.main(argv)
    doc = json.loads((tmp_path / "o" / "scoreboard.json").read_text())
    cell = doc["rows"]["seg-physics"]["mprage-id"]
    want = np.mean([phys[s][0] for s in SUBJECTS], 0)
    assert [cell["cov_x1e3"][t] for t in TISSUES] == pytest.approx(want)
    assert cell["complete"] and not doc["rows"]["atropos"]["mprage-id"]["complete"]

    g = doc["goals"]["seg-physics"]["mprage-id"]
    assert g["paper"] is True  # GM and WM below 0.42 / 0.51
    assert g["dice"] is False  # CSF 0.92
    assert g["baseline"] is False and g["baseline_not_below"] == ["CSF"]
    assert cell["cov_x1e3"]["CSF"] > 9.0  # the board's cell: all three subjects
    assert g["classical"] is True and g["partial"] == ["classical"]
    assert g["classical_compared_on"] == ["head_14", "head_15"]
    h = doc["goals"]["seg-physics --harmonise curve"]["mprage-id"]
    assert h["dice"] is True and h["paper"] is True and h["baseline"] is False

    text = (tmp_path / "o" / "scoreboard.md").read_text()
    assert ("| seg-physics | mprage-id | yes | no | no (CSF) | yes (on head_14, head_15) |"
            in text)
    assert "0.950 / 0.940 / 0.920" in text
    assert "(head_14, head_15 only)" in text
    assert "atropos mprage-id (head_16)" in text  # the subject that cell lacks
    assert "seg-physics spgr-ood" in text.split("Not measured")[1]
    assert "Goals met: 5 of 8" in text  # seg-physics 2, the harmonised row 3


def test_mixed_images_a_cell_held_twice_and_an_absent_file_are_refused(tmp_path):
    sb = bench_script("scoreboard")
    one = {"head_14": ((1.0, 1.0, 1.0), (0.9, 0.9, 0.9))}
    a = _folder(tmp_path, "a", {("seg-physics", "mprage-id"): one})
    b = _folder(tmp_path, "b", {("seg-baseline", "mprage-id"): one}, n_images=7)
    c = _folder(tmp_path, "c", {("seg-physics", "mprage-id"): one})
    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="n_images 7 where"):
        sb.main(["--results", str(a), "--results", str(b), *out])
    with pytest.raises(SystemExit, match="seg-physics mprage-id is in both"):
        sb.main(["--results", str(a), "--results", str(c), *out])
    with pytest.raises(SystemExit, match="no consistency.json"):
        sb.main(["--results", str(tmp_path / "nowhere"), *out])
    with pytest.raises(SystemExit, match="--physics seg-x: no folder holds it"):
        sb.main(["--results", str(a), "--physics", "seg-x", *out])
    assert not (tmp_path / "o").exists()  # nothing written by a refused call
