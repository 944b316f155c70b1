"""workflows/labels_to_mni.py: training label maps brought onto the template grid."""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from phys_bids.synth.tissues import CLASSES, label_to_class

from ..phantoms import phantom_labels, write_phantom

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("labels_to_mni",
                                              ROOT / "workflows" / "labels_to_mni.py")
labels_to_mni = importlib.util.module_from_spec(spec)
spec.loader.exec_module(labels_to_mni)


def test_synthetic_t1w_has_t1_contrast_and_no_skull():
    lab = phantom_labels(40, 0)
    img = labels_to_mni.synthetic_t1w(lab)
    cls = label_to_class(lab)
    med = {c: float(np.median(img[cls == CLASSES.index(c)])) for c in ("wm", "gm_cortex", "csf")}
    assert med["wm"] > med["gm_cortex"] > med["csf"] >= 0
    assert img[cls == CLASSES.index("skull")].max() == 0 and img[cls == 0].max() == 0


def test_labels_land_on_the_template_grid_with_their_values(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    write_phantom(data / "head_x.nii.gz", 40, 3)
    out = tmp_path / "out"
    assert labels_to_mni.main(["--data", str(data), "--out", str(out), "--threads", "1"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    entry = man["heads"]["head_x.nii.gz"]
    assert entry["labels_kept"] and 0.0 <= entry["brain_dice_with_template"] <= 1.0
    res = nib.load(out / "head_x.nii.gz")
    tpl = nib.load(next((out / ".templates").rglob("*_desc-brain_T1w.nii.gz")))
    assert res.shape == tpl.shape and np.allclose(res.affine, tpl.affine)
    src = set(np.unique(phantom_labels(40, 3)).tolist())
    assert set(np.unique(np.asanyarray(res.dataobj)).tolist()) <= src
    assert (out / entry["transform"]).is_file()
