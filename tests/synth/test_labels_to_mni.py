"""training/labels_to_mni.py: training label maps brought onto the template grid."""

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phys_bids.physics.tissues import CLASSES, label_to_class

from ..phantoms import phantom_labels, write_phantom

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("labels_to_mni",
                                              ROOT / "training" / "labels_to_mni.py")
labels_to_mni = importlib.util.module_from_spec(spec)
spec.loader.exec_module(labels_to_mni)


def test_synthetic_t1w_has_t1_contrast_and_no_skull():
    lab = phantom_labels(40, 0)
    img = labels_to_mni.synthetic_t1w(lab)
    cls = label_to_class(lab)
    med = {c: float(np.median(img[cls == CLASSES.index(c)])) for c in ("wm", "gm_cortex", "csf")}
    assert med["wm"] > med["gm_cortex"] > med["csf"] >= 0
    assert img[cls == CLASSES.index("skull")].max() == 0 and img[cls == 0].max() == 0


@pytest.fixture
def importable(monkeypatch):
    """The workflow imported the way train_segmentation.py imports it (training/ on
    the path), so that its worker processes can import align() as the parent names it."""
    monkeypatch.syspath_prepend(str(ROOT / "training"))
    monkeypatch.delitem(sys.modules, "labels_to_mni", raising=False)
    return importlib.import_module("labels_to_mni")


def test_labels_land_on_the_template_grid_with_their_values(tmp_path, importable):
    data = tmp_path / "in"
    data.mkdir()
    write_phantom(data / "head_x.nii.gz", 40, 3)
    out = tmp_path / "out"
    assert importable.main(["--data", str(data), "--out", str(out), "--threads", "1"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    entry = man["heads"]["head_x.nii.gz"]
    assert entry["labels_kept"] and 0.0 <= entry["brain_dice_with_template"] <= 1.0
    res = nib.load(out / "head_x.nii.gz")
    tpl = nib.load(next((out / ".templates").rglob("*_desc-brain_T1w.nii.gz")))
    assert res.shape == tpl.shape and np.allclose(res.affine, tpl.affine)
    src = set(np.unique(phantom_labels(40, 3)).tolist())
    assert set(np.unique(np.asanyarray(res.dataobj)).tolist()) <= src
    assert (out / entry["transform"]).is_file()


def test_the_maps_do_not_depend_on_threads(tmp_path, importable):
    # --threads aligns heads in parallel worker processes; each registration runs with
    # one thread, so the maps (and their sha256, which training manifests record) are
    # the same for any --threads, also when this process has registered with more
    # threads before (ITK keeps the count of its first use in a process)
    from phys_bids.preproc.register import register_to_template

    fixed = nib.Nifti1Image(np.pad(np.ones((8, 8, 8), np.float32), 8), np.eye(4))
    register_to_template(fixed, fixed, tmp_path / "warm.mat", threads=2)
    mod = importable
    data = tmp_path / "in"
    data.mkdir()
    for i, name in enumerate(("head_x", "head_y")):
        write_phantom(data / f"{name}.nii.gz", 40, 3 + i)
    outs = {}
    for threads in (1, 2):
        out = tmp_path / f"out{threads}"
        assert mod.main(["--data", str(data), "--out", str(out), "--threads",
                         str(threads), "--work", str(tmp_path / "tpl")]) == 0
        man = json.loads((out / "manifest.json").read_text())
        assert man["registration_threads"] == 1 and list(man["heads"]) == [
            "head_x.nii.gz", "head_y.nii.gz"]
        outs[threads] = {n: (out / n).read_bytes() for n in man["heads"]}
    assert outs[1] == outs[2]
    assert outs[1]["head_x.nii.gz"] != outs[1]["head_y.nii.gz"]


def test_training_remakes_aligned_maps_made_another_way(tmp_path, monkeypatch):
    # training/train_segmentation.py uses the aligned maps it finds only when they were
    # made with one registration thread (the shipped manifests' sha256); older maps
    # are made again
    from ..scripts import training_script

    calls = []
    monkeypatch.setitem(sys.modules, "labels_to_mni", labels_to_mni)
    monkeypatch.setattr(labels_to_mni, "main", lambda argv: calls.append(argv) or 0)
    trainer = training_script("train_segmentation")
    cfg = trainer.TrainConfig(train_subjects=("head_a",), val_subjects=("head_b",))
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    for s in ("head_a", "head_b"):
        (aligned / f"{s}.nii.gz").write_bytes(b"")
    (aligned / "manifest.json").write_text(json.dumps({"registration_threads": 1}))
    trainer.ensure_aligned(cfg, "labels", aligned, 2)
    assert calls == []
    (aligned / "manifest.json").write_text(json.dumps({"heads": {}}))  # made before
    trainer.ensure_aligned(cfg, "labels", aligned, 2)
    assert calls == [["--data", "labels", "--out", str(aligned), "--threads", "2"]]
    (aligned / "manifest.json").write_text(json.dumps({"registration_threads": 1}))
    (aligned / "head_b.nii.gz").unlink()
    trainer.ensure_aligned(cfg, "labels", aligned, 1)
    assert len(calls) == 2
