"""The participant and group levels end to end, on the demo dataset (2 mm heads).

One module-scoped run processes two subjects, one of which has a broken image: the
other completes, the failure is summarised, outputs validate, the input is
untouched, a second run does no work, and a run killed with SIGKILL and started
again gives byte-identical outputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phys_bids.bids.layout import check_dataset
from phys_bids.demo import write_demo_dataset
from phys_bids.models.registry import available_models, load_model

from .helpers import cli, make_read_only, make_writable, tree_hashes

SUB = "sub-01/ses-siteA/anat/sub-01_ses-siteA"
EXPECTED = sorted([
    f"{SUB}_desc-brain_mask.nii.gz", f"{SUB}_desc-brain_mask.json",
    f"{SUB}_desc-preproc_T1w.nii.gz", f"{SUB}_desc-preproc_T1w.json",
    f"{SUB}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
    f"{SUB}_space-MNI152NLin2009aSym_desc-preproc_T1w.json",
    f"{SUB}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat",
    *[f"{SUB}_label-{t}_probseg.{e}" for t in ("GM", "WM", "CSF") for e in ("nii.gz", "json")],
    f"{SUB}_dseg.nii.gz", f"{SUB}_dseg.json",
    # Monte-Carlo SD maps: --mc-samples defaults to 4
    *[f"{SUB}_label-{t}_desc-sd_probseg.{e}" for t in ("GM", "WM", "CSF")
      for e in ("nii.gz", "json")],
    f"{SUB}_space-MNI152NLin2009aSym_dseg.nii.gz", f"{SUB}_space-MNI152NLin2009aSym_dseg.json",
    f"{SUB}_morph.tsv", f"{SUB}_morph.json",
    *[f"sub-01/figures/sub-01_ses-siteA_desc-{s}.png" for s in
      ("skullstrip_T1w", "n4_biasfield", "registration_T1w", "segmentation_T1w",
       "volumes_T1w")],
    "sub-01.html", "dataset_description.json", "dseg.tsv", ".bidsignore", "README.md",
    # model-based fits of the session's VFA and multi-echo GRE images (demo qmri=True)
    *[f"{SUB}_desc-{d}_{m}.{e}" for d, m in (("despot1", "R1map"), ("despot1", "PDmap"),
                                            ("r2starfit", "R2starmap"))
      for e in ("nii.gz", "json")],
])
#: with the shipped qMRI model: its four maps, the harmonised image and their figure
QMRI_FILES = sorted([
    *[f"{SUB}_desc-qmriphysics_{m}.{e}" for m in ("PDmap", "R1map", "R2starmap", "MTsat")
      for e in ("nii.gz", "json")],
    f"{SUB}_desc-harmonized_T1w.nii.gz", f"{SUB}_desc-harmonized_T1w.json",
    "sub-01/figures/sub-01_ses-siteA_desc-qmri_T1w.png",
])
if "qmri-physics" in available_models(kind="qmri"):
    EXPECTED = sorted(EXPECTED + QMRI_FILES)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    bids = write_demo_dataset(base / "bids", subjects=2, voxel=2.0, seed=0, qmri=True)
    bad = bids / "sub-02/ses-siteA/anat/sub-02_ses-siteA_T1w.nii.gz"
    img = nib.load(bad)
    data = img.get_fdata(dtype=np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(bad))
    make_read_only(bids)
    before = tree_hashes(bids)
    out, work = base / "out", base / "work"
    args = [bids, out, "participant", "--session-label", "siteA", "-w", work,
            "--omp-nthreads", "2", "--nprocs", "2"]
    t0 = time.time()
    first = cli(*args)
    yield {"bids": bids, "out": out, "work": work, "args": args, "first": first,
           "before": before, "base": base, "seconds": time.time() - t0}
    make_writable(bids)


def test_one_subject_fails_the_other_completes(study):
    r = study["first"]
    assert r.returncode == 1, r.stderr
    assert "sub-02" in r.stderr and "1 voxels are NaN or Inf" in r.stderr
    assert "1 subject(s) failed" in r.stderr and "1 of 2 subject(s) processed" in r.stderr
    assert "Traceback" not in r.stderr
    out = study["out"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and not p.relative_to(out).as_posix().startswith("logs/")
                   and p.name != ".phys-bids.lock")
    assert files == EXPECTED
    assert not (out / "sub-02").exists() and not (out / "sub-02.html").exists()


def test_input_is_unchanged(study):
    assert tree_hashes(study["bids"]) == study["before"]


def test_logs_hold_the_command_configuration_and_step_costs(study):
    logs = sorted((study["out"] / "logs").glob("run-*"))
    assert len(logs) == 1
    assert "participant" in (logs[0] / "command.txt").read_text()
    config = json.loads((logs[0] / "config.json").read_text())
    assert config["settings"]["model"] == "seg-physics" and config["settings"]["seed"] == 0
    steps = (logs[0] / "steps.tsv").read_text().splitlines()
    names = {ln.split("\t")[1] for ln in steps[1:]}
    assert {"skull strip", "N4", "registration", "segmentation"} <= names
    assert "1 voxels are NaN or Inf" in (logs[0] / "phys-bids.log").read_text()


def test_outputs_are_valid_bids_derivatives(study):
    from phys_bids.cli import _validator

    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    r = subprocess.run([exe, "--format", "json", str(study["out"])], capture_output=True,
                       text=True, timeout=300)
    issues = json.loads(r.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []


def test_sidecars_and_description_carry_provenance(study):
    out = study["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "phys-bids"
    assert desc["SourceDatasets"][0]["URL"] == Path(study["bids"]).resolve().as_uri()
    side = json.loads((out / f"{SUB}_dseg.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.nii.gz"]
    prov = side["PhysBIDS"]
    model = load_model("seg-physics")
    assert prov["Model"]["WeightsSha256"] == model.manifest["weights_sha256"]
    assert prov["Acquisition"] == {"Sequence": "MPRAGE", "Parameters": {"ti": 0.9},
                                   "ParameterSources": {"ti": "sidecar:InversionTime"}}
    assert prov["InTrainingSpace"] is True and prov["Seed"] == 0
    assert prov["PhysicsClamp"] == "none" and prov["PhysicsToldParameters"] == {"ti": 0.9}
    # the protocol's predicted contrast, at the sidecar's 3 T: MPRAGE, not flagged
    from phys_bids.physics.tissues import wm_gm_contrast

    contrast = prov["PredictedContrast"]
    assert contrast["FieldStrength"] == 3.0 and contrast["Low"] is False
    assert contrast["WMGM"] == pytest.approx(float(wm_gm_contrast("MPRAGE", {"ti": 0.9})[0]),
                                             abs=1e-4)
    assert prov["Template"]["Name"] == "MNI152NLin2009aSym"
    assert json.loads((out / f"{SUB}_desc-preproc_T1w.json").read_text())["SkullStripped"]
    assert (out / "dseg.tsv").read_text().splitlines()[1:] == [
        "0\tbackground\tBG", "1\tgray matter\tGM", "2\twhite matter\tWM",
        "3\tcerebrospinal fluid\tCSF"]


def test_native_outputs_keep_the_input_geometry_and_volumes_add_up(study):
    out, bids = study["out"], study["bids"]
    src = nib.load(bids / "sub-01/ses-siteA/anat/sub-01_ses-siteA_T1w.nii.gz")
    dseg = nib.load(out / f"{SUB}_dseg.nii.gz")
    assert dseg.shape == src.shape and np.array_equal(dseg.affine, src.affine)
    labels = np.asarray(dseg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).mean() > 0.1
    probs = np.stack([nib.load(out / f"{SUB}_label-{t}_probseg.nii.gz").get_fdata()
                      for t in ("GM", "WM", "CSF")])
    assert probs.min() >= 0 and probs.sum(0).max() <= 1 + 1e-5
    rows = dict(ln.split("\t")[:2] for ln in (out / f"{SUB}_morph.tsv").read_text().splitlines())
    voxel_ml = 8 / 1000
    for i, t in enumerate(("GM", "WM", "CSF")):
        assert float(rows[t]) == pytest.approx(probs[i].sum() * voxel_ml, rel=1e-4)
    icv = float(rows["ICV"])
    # a whole brain, and no tissue is more than 70 % of it
    assert 900 < icv < 2300
    assert max(float(rows[t]) for t in ("GM", "WM", "CSF")) < 0.7 * icv


def test_report_is_self_contained(study):
    out = study["out"]
    html = (out / "sub-01.html").read_text()
    assert "Acquisition parameters used" in html and "sidecar:InversionTime" in html
    assert "predicted WM-GM contrast" in html and "(LOW)" not in html
    srcs = [s.split("'")[0] for s in html.split("<img src='")[1:]]
    # 4 steps + the volumes with their bounds (--mc-samples 4) + the qMRI figure
    n_figures = 5 + ("qmri-physics" in available_models(kind="qmri"))
    assert len(srcs) == n_figures and all((out / s).is_file() for s in srcs)
    assert "http" not in html.replace("https://github.com/phys-bids/phys-bids", "")


def test_second_run_does_no_work(study):
    out = study["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.is_file() and "logs" not in p.parts}
    t0 = time.time()
    r = cli(*study["args"])
    assert r.returncode == 1
    assert "started" not in r.stderr, r.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert time.time() - t0 < max(30.0, 0.5 * study["seconds"])


def test_other_configuration_needs_overwrite(study):
    r = cli(*study["args"], "--seed", "3", "--participant-label", "01")
    assert r.returncode == 1
    assert "pass --overwrite to replace them" in r.stderr


def test_group_level_gathers_volumes(study):
    r = cli(study["bids"], study["out"], "group", "-w", study["work"])
    assert r.returncode == 0, r.stderr
    lines = (study["out"] / "group" / "volumes.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    rows = [dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:]]
    assert [r["participant_id"] for r in rows] == ["sub-01"]
    assert rows[0]["site"] == "Site A/Prisma" and rows[0]["Manufacturer"] == "Siemens"
    side = json.loads((study["out"] / f"{SUB}_morph.json").read_text())
    assert float(rows[0]["wm_gm_contrast"]) == side["PhysBIDS"]["PredictedContrast"]["WMGM"]
    assert rows[0]["low_contrast"] == "false"
    morph = (study["out"] / f"{SUB}_morph.tsv").read_text()
    assert f"GM\t{rows[0]['GM_ml']}\t" in morph
    assert json.loads((study["out"] / "group" / "volumes.json").read_text())["GM_ml"]
    effects = json.loads((study["out"] / "group" / "site_effects.json").read_text())
    assert effects["scans"] == 1 and effects["sites"] == ["Site A/Prisma"]
    html = (study["out"] / "group" / "report.html").read_text()
    assert "volumes_by_site.png" in html and (study["out"] / "group/volumes_by_site.png").is_file()
    # the classical segmentation labels the same brain mask: its tissues add up to ICV
    classical = sum(float(rows[0][f"{t}_atropos_ml"]) for t in ("GM", "WM", "CSF"))
    assert classical == pytest.approx(float(rows[0]["ICV_ml"]), rel=0.03)
    assert all(float(rows[0][f"{t}_atropos_ml"]) > 0.05 * classical for t in ("GM", "WM", "CSF"))
    assert effects["tissues"]["GM"]["classical"]["by_site"]["Site A/Prisma"]["n"] == 1
    # bridging needs subjects scanned in both groups: one actionable line, exit 2
    before = tree_hashes(study["out"] / "group")
    r = cli(study["bids"], study["out"], "group", "-w", study["work"], "--bridge", "siteA",
            "siteB")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        "phys-bids: error: --bridge siteA siteB: 0 subject(s) scanned in both")
    assert tree_hashes(study["out"] / "group") == before


def test_killed_run_resumes_to_identical_outputs(study):
    base = study["base"]
    out, work = base / "out-killed", base / "work-killed"
    args = [study["bids"], out, "participant", "--session-label", "siteA", "-w", work,
            "--omp-nthreads", "2", "--nprocs", "2", "--participant-label", "01"]
    proc = subprocess.Popen([sys.executable, "-m", "phys_bids", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    killed = False
    while time.time() < deadline and proc.poll() is None:
        events = "".join(p.read_text() for p in work.glob("progress-*.jsonl")) \
            if work.exists() else ""
        if '"step": "segmentation", "state": "start"' in events:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    assert killed, "the run ended before it could be killed"
    assert not (out / "sub-01").exists() or not any((out / "sub-01").rglob("*_dseg.nii.gz"))
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    # the resumed run reused the finished steps
    assert "skull strip started" not in r.stderr and "segmentation started" in r.stderr
    a = tree_hashes(study["out"], exclude=("logs/", "group/", ".phys-bids.lock"))
    b = tree_hashes(out, exclude=("logs/", ".phys-bids.lock"))
    assert a == b


def test_check_dataset_resolves_the_root(study):
    assert check_dataset(study["bids"]) == Path(study["bids"]).resolve()


def test_process_pool_worker_runs_the_workflow_and_flags_qc(tmp_path):
    """--pydra-worker cf: tasks in a process pool; a tiny phantom trips the QC flags."""
    bids = write_demo_dataset(tmp_path / "bids", subjects=1, size=40, seed=2,
                              anatomy="phantom")
    out = tmp_path / "out"
    r = cli(bids, out, "participant", "-w", tmp_path / "work", "--pydra-worker", "cf",
            "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation",
            "--session-label", "siteA", "siteC")
    assert r.returncode == 0, r.stderr
    assert len(list(out.rglob("*_dseg.nii.gz"))) == 4  # 2 runs x (native + model grid)
    html = (out / "sub-01.html").read_text()
    assert "check the skull strip" in html and "check the registration figure" in html
    assert "QC: brain mask volume" in r.stderr


def test_monte_carlo_bounds_in_the_volumes_table_and_uncertainty_maps(tmp_path):
    bids = write_demo_dataset(tmp_path / "bids", subjects=1, size=40, seed=4,
                              anatomy="phantom")
    out = tmp_path / "out"
    r = cli(bids, out, "participant", "-w", tmp_path / "work", "--omp-nthreads", "2",
            "--skip-bids-validation", "--session-label", "siteB", "--mc-samples", "3",
            "--seed", "7")
    assert r.returncode == 0, r.stderr
    anat = out / "sub-01/ses-siteB/anat"
    lines = (next(anat.glob("*_morph.tsv"))).read_text().splitlines()
    head = lines[0].split("\t")
    rows = {ln.split("\t")[0]: dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:]}
    for t in ("GM", "WM", "CSF", "ICV"):
        v = {k: float(rows[t][k]) for k in head if k.startswith("mc_")}
        assert v["mc_p2_5_ml"] <= v["mc_q1_ml"] <= v["mc_median_ml"] <= v["mc_q3_ml"] \
            <= v["mc_p97_5_ml"]
        assert v["mc_iqr_ml"] == pytest.approx(v["mc_q3_ml"] - v["mc_q1_ml"], abs=2e-4)
        assert rows[t]["mc_samples"] == "3" and rows[t]["seed"] == "7"
        if t != "ICV" and load_model("seg-physics").calibration:  # calibrated contain raw
            c = {k: float(rows[t][k]) for k in head if k.startswith("cal_")}
            assert c["cal_p2_5_ml"] <= v["mc_p2_5_ml"] and v["mc_p97_5_ml"] <= c["cal_p97_5_ml"]
            assert c["cal_q1_ml"] < v["mc_q1_ml"] and v["mc_q3_ml"] < c["cal_q3_ml"]
    sd = nib.load(anat / "sub-01_ses-siteB_label-GM_desc-sd_probseg.nii.gz").get_fdata()
    assert sd.max() > 0 and sd.min() >= 0
    side = json.loads((anat / "sub-01_ses-siteB_label-GM_desc-sd_probseg.json").read_text())
    assert "not a probability" in side["Description"]
    assert "MC [Q1, Q3]" in (out / "sub-01.html").read_text()


def _demo_at_ti_0_3(tmp_path, *sessions):
    """A one-subject demo dataset whose siteA MPRAGE a protocol file puts at TI 0.3 s
    (outside the training space; tissues fold there), and the participant arguments
    that process ``sessions`` of it without MC sampling or qMRI."""
    bids = write_demo_dataset(tmp_path / "bids", subjects=1, size=40, seed=5,
                              anatomy="phantom")
    proto = tmp_path / "protocol.json"
    proto.write_text(json.dumps({"PhysBIDSProtocol": 1, "runs": [
        {"match": "sub-01_ses-siteA_T1w", "fields": {"InversionTime": 0.3}}]}))
    return bids, ["participant", "--omp-nthreads", "2", "--skip-bids-validation",
                  "--session-label", *sessions, "--mc-samples", "0", "--qmri-model", "none",
                  "--protocol-file", proto]


def test_physics_clamp_tells_the_network_a_training_acquisition(tmp_path):
    """--physics-clamp contrast: an MPRAGE at TI 0.3 s (outside the training space) is
    segmented by a physics branch told a training TI, recorded beside the real
    acquisition, which the scan keeps (and stays flagged by); the segmentation differs
    from the one told TI 0.3 s, and the setting is part of the configuration digest."""
    bids, common = _demo_at_ti_0_3(tmp_path, "siteA")
    runs = {}
    for clamp in ("none", "contrast"):
        out = tmp_path / clamp
        r = cli(bids, out, *common, "-w", tmp_path / f"work-{clamp}", "--physics-clamp", clamp)
        assert r.returncode == 0, r.stderr
        anat = out / "sub-01/ses-siteA/anat"
        prov = json.loads((anat / "sub-01_ses-siteA_dseg.json").read_text())["PhysBIDS"]
        gm = nib.load(anat / "sub-01_ses-siteA_label-GM_probseg.nii.gz").get_fdata()
        runs[clamp] = (prov, gm, r.stderr)
    (plain, gm0, _), (clamped, gm1, err) = runs["none"], runs["contrast"]
    for prov in (plain, clamped):
        assert prov["Acquisition"]["Parameters"] == {"ti": 0.3}
        assert prov["InTrainingSpace"] is False and prov["OutsideTrainingSpace"] == ["ti"]
    assert plain["PhysicsToldParameters"] == {"ti": 0.3}
    told = clamped["PhysicsToldParameters"]["ti"]
    assert clamped["PhysicsClamp"] == "contrast" and 0.6 <= told <= 1.2
    assert f"(physics branch told ti {told:.4g}: --physics-clamp contrast)" in err
    assert "physics branch told ti" in (tmp_path / "contrast" / "sub-01.html").read_text()
    assert not np.allclose(gm0, gm1, atol=1e-4)
    assert plain["ConfigurationDigest"] != clamped["ConfigurationDigest"]


def test_harmonise_contrast_re_renders_what_it_can_and_says_what_it_did(tmp_path):
    """--harmonise-contrast: the MPRAGE at TI 1.1 s is re-rendered at the reference
    protocol, skull-stripped and segmented by a physics branch told that protocol (another
    mask and segmentation than without the option; the acquisition is kept in the
    provenance); the one a
    protocol file puts at TI 0.3 s, where tissues fold, is segmented as acquired with a
    warning; the setting is part of the configuration digest."""
    from phys_bids.preproc.harmonise import REFERENCE

    bids, common = _demo_at_ti_0_3(tmp_path, "siteA", "siteB")
    runs = {}
    for name, extra in (("plain", []), ("harm", ["--harmonise-contrast"])):
        out = tmp_path / name
        r = cli(bids, out, *common, "-w", tmp_path / f"work-{name}", *extra)
        assert r.returncode == 0, r.stderr
        runs[name] = {"err": r.stderr}
        for ses in ("siteA", "siteB"):
            anat = out / f"sub-01/ses-{ses}/anat"
            prov = json.loads((anat / f"sub-01_ses-{ses}_dseg.json").read_text())["PhysBIDS"]
            gm = nib.load(anat / f"sub-01_ses-{ses}_label-GM_probseg.nii.gz").get_fdata()
            mask = np.asarray(nib.load(anat / f"sub-01_ses-{ses}_desc-brain_mask.nii.gz")
                              .dataobj)
            runs[name][ses] = (prov, gm, mask)
    plain, harm = runs["plain"], runs["harm"]
    assert "ContrastHarmonisation" not in plain["siteB"][0]
    applied, refused = harm["siteB"][0], harm["siteA"][0]
    assert applied["ContrastHarmonisation"]["Applied"] is True
    assert applied["ContrastHarmonisation"]["Reference"] == {
        "Sequence": REFERENCE[0], "Parameters": dict(REFERENCE[1])}
    assert applied["PhysicsToldParameters"] == dict(REFERENCE[1])
    assert applied["Acquisition"]["Parameters"] == plain["siteB"][0]["Acquisition"]["Parameters"]
    assert not np.allclose(plain["siteB"][1], harm["siteB"][1], atol=1e-4)
    assert refused["ContrastHarmonisation"]["Applied"] is False
    assert refused["PhysicsToldParameters"] == {"ti": 0.3}
    assert np.array_equal(plain["siteA"][1], harm["siteA"][1])
    # the skull strip cuts the re-rendered head, and the refused scan as acquired
    assert not np.array_equal(plain["siteB"][2], harm["siteB"][2])
    assert np.array_equal(plain["siteA"][2], harm["siteA"][2])
    assert "contrast harmonisation not applied, segmented as acquired" in harm["err"]
    assert applied["ConfigurationDigest"] != plain["siteB"][0]["ConfigurationDigest"]


@pytest.mark.skipif("qmri-physics" not in available_models(kind="qmri"),
                    reason="the qMRI model is not installed")
def test_qmri_maps_are_plausible_estimates_and_the_harmonised_image_has_its_protocol(study):
    anat = study["out"] / "sub-01/ses-siteA/anat"
    dseg = np.asanyarray(nib.load(anat / "sub-01_ses-siteA_dseg.nii.gz").dataobj)
    r1 = nib.load(anat / "sub-01_ses-siteA_desc-qmriphysics_R1map.nii.gz").get_fdata()
    pd_ = nib.load(anat / "sub-01_ses-siteA_desc-qmriphysics_PDmap.nii.gz").get_fdata()
    med = {t: (float(np.median(r1[dseg == k])), float(np.median(pd_[dseg == k])))
           for k, t in ((1, "GM"), (2, "WM"), (3, "CSF"))}
    # tissue order of the literature at 3 T (R1: WM > GM > CSF; PD: CSF > GM > WM)
    assert med["WM"][0] > med["GM"][0] > med["CSF"][0] > 0
    assert med["CSF"][1] > med["GM"][1] > med["WM"][1] > 0
    assert 0.8 < med["WM"][0] < 1.3 and 0.5 < med["GM"][0] < 1.0  # 1/s
    brain = np.asanyarray(nib.load(anat / "sub-01_ses-siteA_desc-brain_mask.nii.gz").dataobj)
    assert r1[brain == 0].max() == 0 and r1[brain > 0].min() >= 0  # nothing outside the brain
    side = json.loads((anat / "sub-01_ses-siteA_desc-qmriphysics_MTsat.json").read_text())
    assert side["ModelEstimate"] is True and "no MT contrast" in side["Description"]
    assert side["Units"] == "p.u. (MTsat)"
    harm = json.loads((anat / "sub-01_ses-siteA_desc-harmonized_T1w.json").read_text())
    assert harm["ReferenceProtocol"]["Name"] == "mprage-3t"
    assert harm["ReferenceProtocol"]["Parameters"] == {"ti": 0.9}
    h = nib.load(anat / "sub-01_ses-siteA_desc-harmonized_T1w.nii.gz").get_fdata()
    assert h[dseg > 0].mean() == pytest.approx(1000, rel=0.05)
    # MPRAGE contrast: WM brighter than GM brighter than CSF
    assert np.median(h[dseg == 2]) > np.median(h[dseg == 1]) > np.median(h[dseg == 3])
    # another reference protocol and no qMRI at all, from the same work dir (cached steps)
    base = study["base"]
    r = cli(study["bids"], base / "out-spgr", "participant", "--session-label", "siteA",
            "-w", study["work"], "--omp-nthreads", "2", "--reference-protocol", "spgr-3t",
            "--participant-label", "01")
    assert r.returncode == 0, r.stderr
    h2 = json.loads((base / "out-spgr" / anat.relative_to(study["out"]) /
                     "sub-01_ses-siteA_desc-harmonized_T1w.json").read_text())
    assert h2["ReferenceProtocol"]["Sequence"] == "SPGR"
    r = cli(study["bids"], base / "out-none", "participant", "--session-label", "siteA",
            "-w", study["work"], "--omp-nthreads", "2", "--qmri-model", "none",
            "--participant-label", "01")
    assert r.returncode == 0, r.stderr
    assert not list((base / "out-none").rglob("*qmriphysics*"))
    # the model-based fits do not need the network
    assert (base / "out-none" / f"{SUB}_desc-despot1_R1map.nii.gz").is_file()
    assert not list((base / "out-none").rglob("*harmonized*"))


def test_session_qmri_acquisitions_are_fitted_and_compared_with_the_estimates(study):
    from phys_bids.physics.tissues import PRIORS

    anat = study["out"] / "sub-01/ses-siteA/anat"
    side = json.loads((anat / "sub-01_ses-siteA_desc-despot1_R1map.json").read_text())
    assert side["ModelEstimate"] is False and side["Units"] == "1/s"
    assert side["EstimationParameters"]["Parameters"]["FlipAngle"] == [3.0, 20.0]
    assert side["Sources"] == ["bids:raw:sub-01/ses-siteA/anat/sub-01_ses-siteA_flip-1_VFA.nii.gz",
                               "bids:raw:sub-01/ses-siteA/anat/sub-01_ses-siteA_flip-2_VFA.nii.gz"]
    dseg = np.asanyarray(nib.load(anat / "sub-01_ses-siteA_dseg.nii.gz").dataobj)
    fit = {m: nib.load(anat / f"sub-01_ses-siteA_desc-{d}_{m}.nii.gz").get_fdata()
           for d, m in (("despot1", "R1map"), ("r2starfit", "R2starmap"))}
    # the VFA/MEGRE images were simulated from the demo's maps: the fits find the
    # tissue values of the priors (subject jitter of R1 +-5 %, partial volume, SNR 50)
    for k, cls in ((1, "gm_cortex"), (2, "wm")):
        assert np.median(fit["R1map"][dseg == k]) == pytest.approx(PRIORS[cls]["r1"].mean,
                                                                  rel=0.15)
        assert np.median(fit["R2starmap"][dseg == k]) == pytest.approx(
            PRIORS[cls]["r2s"].mean, rel=0.2)
    html = (study["out"] / "sub-01.html").read_text()
    assert "model-based fits of this session" in html and "despot1" in html
    if "qmri-physics" in available_models(kind="qmri"):
        # the report's table compares the fit with the network's estimate (GM/WM medians)
        assert "WM median fit / estimate" in html
