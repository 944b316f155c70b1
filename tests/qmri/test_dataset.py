"""Fits of the qMRI acquisitions a BIDS session holds (phys_bids.qmri.dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from phys_bids.physics import sequences as S
from phys_bids.qmri.dataset import FitError, compare_maps, find_sets, fit_set

SHAPE = (12, 10, 8)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _truth(seed=0):
    g = np.random.default_rng(seed)
    return {"pd": g.uniform(0.6, 1.0, SHAPE), "r1": g.uniform(0.4, 1.5, SHAPE),
            "r2s": g.uniform(10, 40, SHAPE), "mt": g.uniform(0.5, 2.0, SHAPE)}


def _save(anat: Path, stem: str, data, sidecar: dict | None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFF), str(anat / f"{stem}.nii.gz"))
    if sidecar is not None:
        (anat / f"{stem}.json").write_text(json.dumps(sidecar))


@pytest.fixture
def session(tmp_path):
    root = tmp_path / "bids"
    anat = root / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    m = {k: torch.from_numpy(v) for k, v in _truth().items()}
    # VFA: 2 flip angles
    for i, fa in enumerate((3, 20), start=1):
        _save(anat, f"sub-01_ses-1_flip-{i}_VFA",
              S.spgr(m["pd"], m["r1"], 0.0, 0.015, 0.0, fa),
              {"FlipAngle": fa, "RepetitionTimeExcitation": 0.015})
    # MEGRE: 4 echoes, magnitude and phase (phase is ignored)
    for i, te in enumerate((0.004, 0.01, 0.016, 0.022), start=1):
        sig = S.spgr(m["pd"], m["r1"], m["r2s"], 0.04, te, 15)
        _save(anat, f"sub-01_ses-1_echo-{i}_part-mag_MEGRE", sig, {"EchoTime": te})
        _save(anat, f"sub-01_ses-1_echo-{i}_part-phase_MEGRE", sig * 0 + 1, {"EchoTime": te})
    # MP2RAGE: UNIT1 (DICOM-scaled) + the inversions' sidecars, shared fields at the root
    mp2 = {"RepetitionTimeExcitation": 0.0062, "RepetitionTimePreparation": 5.5,
           "NumberShots": 159}
    (root / "MP2RAGE.json").write_text(json.dumps(mp2))
    i1, i2 = S.mp2rage(m["pd"], m["r1"], ti1=0.8, ti2=2.7, tr=5.5, echo_spacing=0.0062,
                       n_excitations=159, fa1=5, fa2=7)
    (anat / "sub-01_ses-1_inv-1_MP2RAGE.json").write_text(
        json.dumps({"InversionTime": 0.8, "FlipAngle": 5}))
    (anat / "sub-01_ses-1_inv-2_MP2RAGE.json").write_text(
        json.dumps({"InversionTime": 2.7, "FlipAngle": 7}))
    for inv, sig in ((1, i1), (2, i2)):
        _save(anat, f"sub-01_ses-1_inv-{inv}_part-mag_MP2RAGE", sig.abs(), None)
    _save(anat, "sub-01_ses-1_UNIT1", (S.mp2rage_uni(i1, i2) + 0.5) * 4095, {})
    # MPM: PDw / T1w / MTw echo series
    tes = (0.0023, 0.0046, 0.0069)
    for acq, fa, mt in (("PDw", 6, False), ("T1w", 21, False), ("MTw", 6, True)):
        for i, te in enumerate(tes, start=1):
            sig = S.spgr(m["pd"], m["r1"], m["r2s"], 0.025, te, fa,
                         mtsat=m["mt"] if mt else 0.0)
            flip = 2 if acq == "T1w" else 1
            _save(anat, f"sub-01_ses-1_acq-{acq}_echo-{i}_flip-{flip}_mt-{'on' if mt else 'off'}"
                  "_MPM", sig, {"EchoTime": te, "FlipAngle": fa, "MTState": mt,
                                "RepetitionTimeExcitation": 0.025})
    return root, anat


def rel(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_every_kind_is_found_and_fitted_to_the_simulated_maps(session):
    root, _ = session
    t = _truth()
    sets = {s.kind: s for s in find_sets(root, "01", "1")}
    assert set(sets) == {"VFA", "MEGRE", "UNIT1", "MPM"}
    assert sets["MPM"].name == "sub-01_ses-1" and len(sets["MPM"].images) == 9
    assert len(sets["MEGRE"].images) == 4  # the phase images are not fitted

    maps, aff, prov = fit_set(sets["VFA"])
    assert np.allclose(aff, AFF)
    assert rel(maps["R1map"], t["r1"]) < 1e-3 and rel(maps["PDmap"], t["pd"]) < 1e-3
    assert prov["Parameters"] == {"FlipAngle": [3.0, 20.0], "RepetitionTimeExcitation": 0.015}

    maps, _, _ = fit_set(sets["MEGRE"])
    assert rel(maps["R2starmap"], t["r2s"]) < 1e-3

    maps, _, prov = fit_set(sets["UNIT1"])
    assert prov["Parameters"]["InversionTime"] == [0.8, 2.7]  # from the inv-1/2 sidecars
    assert prov["Parameters"]["NumberShots"] == 159  # inherited from the root
    # float32 UNIT1 on a 0-4095 scale: ~1e-3 T1 precision
    assert rel(maps["R1map"], t["r1"]) < 0.01 and rel(maps["T1map"], 1 / t["r1"]) < 0.01

    maps, _, _ = fit_set(sets["MPM"])
    for key, ref in (("R1map", "r1"), ("PDmap", "pd"), ("R2starmap", "r2s"), ("MTsat", "mt")):
        assert rel(maps[key], t[ref]) < 1e-2, key


def test_unfittable_sets_say_why(session):
    root, anat = session
    sets = {s.kind: s for s in find_sets(root, "01", "1")}
    # a flip angle in radians, an MEGRE echo on another grid, a missing inversion sidecar
    sc = anat / "sub-01_ses-1_flip-2_VFA.json"
    sc.write_text(json.dumps({"FlipAngle": 0.35, "RepetitionTimeExcitation": 0.015}))
    sets = {s.kind: s for s in find_sets(root, "01", "1")}
    with pytest.raises(FitError, match=r"FlipAngle=0.35 is not plausible in degrees"):
        fit_set(sets["VFA"])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), AFF),
             str(anat / "sub-01_ses-1_echo-3_part-mag_MEGRE.nii.gz"))
    with pytest.raises(FitError, match="grid differs"):
        fit_set(sets["MEGRE"])
    (anat / "sub-01_ses-1_inv-2_MP2RAGE.json").unlink()
    with pytest.raises(FitError, match="inv-2_part-mag_MP2RAGE.nii.gz: the sidecar has no "
                                       "InversionTime"):
        fit_set(sets["UNIT1"])
    for f in anat.glob("*inv-2*"):
        f.unlink()
    with pytest.raises(FitError, match="the inv-1 and inv-2 MP2RAGE sidecars are needed"):
        fit_set(sets["UNIT1"])


def test_a_session_without_qmri_images_has_no_sets(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    assert find_sets(tmp_path, "01", None) == []
    assert find_sets(tmp_path, "02", None) == []


@pytest.mark.realdata
def test_the_placeholder_images_of_the_bids_examples_are_skipped_with_a_reason(shared_data):
    root = shared_data / "bids-examples-qmri" / "qmri_vfa"
    sets = find_sets(root, "01", None)
    assert [s.kind for s in sets] == ["VFA"]
    with pytest.raises(FitError, match="cannot read the image"):
        fit_set(sets[0])


def test_comparison_resamples_by_scanner_coordinates():
    g = np.random.default_rng(1)
    truth = g.uniform(0.5, 1.5, (20, 20, 20))
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10], lab[10:18] = 1, 2
    est_aff = np.eye(4)
    estimate = nib.Nifti1Image(truth.astype(np.float32), est_aff)
    dseg = nib.Nifti1Image(lab, est_aff)
    # the "fitted" map: the same values on a grid shifted by 4 mm (voxel index + 4)
    fit_aff = np.eye(4)
    fit_aff[:3, 3] = -4.0
    fitted = np.zeros((28, 28, 28))
    fitted[4:24, 4:24, 4:24] = truth
    c = compare_maps(fitted, fit_aff, estimate, dseg)
    assert c["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    assert c["GM"]["ratio"] == pytest.approx(1.0) and c["WM"]["ratio"] == pytest.approx(1.0)
    # without the shift the maps disagree
    c = compare_maps(fitted, np.eye(4), estimate, dseg)
    assert c["pearson_r"] < 0.5
