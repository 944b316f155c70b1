import hashlib

import nibabel as nib
import numpy as np
import pytest

from phys_bids.bids.sidecars import load_sidecar, parse_entities
from phys_bids.demo import SITES, write_demo_dataset
from phys_bids.physics.sidecar import acquisition_from_sidecar


def test_demo_dataset_sidecars_map_to_the_simulated_parameters(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", subjects=2, size=40, seed=1, anatomy="phantom")
    images = sorted(root.rglob("*_T1w.nii.gz"))
    assert len(images) == 2 * len(SITES)
    means = {}
    for img in images:
        ents, suffix = parse_entities(img.name)
        site = SITES[ents["ses"]]
        acq = acquisition_from_sidecar(load_sidecar(img, root), suffix=suffix)
        assert acq.sequence == site["sequence"]
        assert acq.model_params() == pytest.approx(site["params"])
        data = np.asarray(nib.load(img).dataobj)
        assert data.shape == (40, 40, 40) and np.isfinite(data).all() and data.max() > 0
        means.setdefault(ents["sub"], []).append(float(data.mean()))
    assert "participant_id" in (root / "participants.tsv").read_text()
    # different sites give different contrast of the same anatomy
    assert len({round(m, 3) for m in means["01"]}) == len(SITES)


def test_demo_is_deterministic_and_refuses_a_non_empty_folder(tmp_path):
    a = write_demo_dataset(tmp_path / "a", subjects=1, size=32, seed=3, anatomy="phantom")
    b = write_demo_dataset(tmp_path / "b", subjects=1, size=32, seed=3, anatomy="phantom")
    for fa in sorted(a.rglob("*.nii.gz")):
        fb = b / fa.relative_to(a)
        da, db = (np.asarray(nib.load(f).dataobj) for f in (fa, fb))
        assert hashlib.sha256(da.tobytes()).hexdigest() == hashlib.sha256(db.tobytes()).hexdigest()
    with pytest.raises(FileExistsError, match="not empty"):
        write_demo_dataset(a)


def test_mni_demo_heads_are_brain_sized_and_differ_between_subjects(tmp_path):
    root = write_demo_dataset(tmp_path / "d", subjects=2, voxel=2.0, seed=0)
    shapes, sums = set(), []
    for sub in ("01", "02"):
        img = nib.load(root / f"sub-{sub}/ses-siteA/anat/sub-{sub}_ses-siteA_T1w.nii.gz")
        data = np.asarray(img.dataobj)
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), 2.0)
        shapes.add(data.shape)
        head = data > 0.1 * data.max()
        # a whole head: between 2 and 6 litres of signal above 10 % of the maximum
        assert 2000 < head.sum() * 8 / 1000 < 6000
        sums.append(float(data.sum()))
    assert shapes == {(88, 104, 88)}
    assert sums[0] != sums[1]


def test_demo_truth_matches_the_written_anatomy(tmp_path):
    from phys_bids.demo import demo_truth

    truth = demo_truth(subjects=2, voxel=2.0, seed=0)
    assert set(truth) == {"sub-01", "sub-02"}
    for vols in truth.values():
        # adult-brain-sized tissue volumes, GM > WM > CSF as in the ICBM152 maps
        assert 500 < vols["GM"] < 1100 and vols["GM"] > vols["WM"] > vols["CSF"] > 100
    assert truth["sub-01"]["GM"] != truth["sub-02"]["GM"]
    assert demo_truth(subjects=2, voxel=2.0, seed=0) == truth


def test_mni_demo_anatomy_leaves_no_empty_space_inside_the_brain():
    """The fractions sum to 1, every voxel of the (grown) brain mask is all tissue, and
    GM/WM are the template's own probabilities where those sum to at most 1. (The first
    version multiplied them by min(gm + wm, 1) as well, which left 119 mL of the brain
    empty - PD 0, dark - and every model read those voxels as CSF.)"""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    from phys_bids.demo import _mni_anatomy
    from phys_bids.physics.tissues import CLASSES

    frac, _ = _mni_anatomy()
    assert frac.min() >= 0 and np.allclose(frac.sum(0), 1, atol=1e-5)
    gm, wm, csf = (frac[CLASSES.index(c)] for c in ("gm_cortex", "wm", "csf"))
    tissue = gm + wm + csf
    inside = tissue > 0
    assert inside.sum() > 1_500_000  # the brain mask grown by 2 mm, about 2 litres
    assert tissue[inside].min() > 1 - 1e-5  # a voxel with any tissue is all tissue
    assert frac[0][inside].max() < 1e-5
    tgm = load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    twm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    keep = inside & (tgm + twm <= 1)
    assert keep.sum() > 1_000_000  # most of the brain
    np.testing.assert_allclose(gm[keep], tgm[keep], atol=1e-6)
    np.testing.assert_allclose(wm[keep], twm[keep], atol=1e-6)
    # the template's GM volume, not less: about a litre at 1 mm
    assert 950 < gm[inside].sum() / 1000 < 1100

