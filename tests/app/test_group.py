"""Group-level statistics on synthetic study tables."""

import numpy as np
import pytest

from phys_bids.group import site_effects


def _rows(site_offsets, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(6):
        base = 700 + rng.normal(0, 50)
        for site, off in site_offsets.items():
            rows.append({"participant_id": f"sub-{s}", "site": site,
                         "GM_ml": base + off + rng.normal(0, noise),
                         "WM_ml": 500 + rng.normal(0, 20), "CSF_ml": 300.0,
                         "ICV_ml": 1500 + off})
    return rows


def test_a_site_offset_is_found_once_subjects_are_accounted_for():
    e = site_effects(_rows({"A": 0, "B": 30, "C": -10}))["tissues"]
    # between-subject spread hides the offset in the one-way model, not in the paired one
    assert e["GM"]["eta2_site"] < 0.5 < 0.9 < e["GM"]["partial_eta2_site_given_subject"]
    assert e["WM"]["partial_eta2_site_given_subject"] < 0.5  # no site effect on WM
    assert e["ICV"]["eta2_site"] == pytest.approx(1.0)
    assert e["CSF"]["within_subject"]["mean_cov_x1e3"] == 0.0
    assert e["GM"]["by_site"]["B"]["n"] == 6
    assert e["GM"]["by_site"]["B"]["mean_ml"] - e["GM"]["by_site"]["A"]["mean_ml"] == \
        pytest.approx(30, abs=5)


def test_within_subject_cov_grows_with_the_site_effect():
    small = site_effects(_rows({"A": 0, "B": 5}))["tissues"]["GM"]["within_subject"]
    large = site_effects(_rows({"A": 0, "B": 50}))["tissues"]["GM"]["within_subject"]
    assert small["subjects"] == 6 and large["mean_cov_x1e3"] > 3 * small["mean_cov_x1e3"]


def test_one_site_gives_no_site_statistics():
    e = site_effects(_rows({"A": 0}))["tissues"]["GM"]
    assert e["eta2_site"] is None and e["within_subject"] is None


def test_combat_removes_a_site_offset_and_keeps_the_raw_volumes():
    from phys_bids.group import combat

    rows = _rows({"A": 0, "B": 40, "C": -20}, noise=3.0)
    before = site_effects(rows)["tissues"]["GM"]["partial_eta2_site_given_subject"]
    out = combat(rows)
    assert out is not None and len(out["volumes"]) == len(rows)
    after_rows = [{**r, **v} for r, v in zip(rows, out["volumes"], strict=True)]
    after = site_effects(after_rows)["tissues"]["GM"]["partial_eta2_site_given_subject"]
    assert before > 0.9 and after < 0.2
    assert rows[0]["GM_ml"] != out["volumes"][0]["GM_ml"]  # a new table, rows untouched
    assert combat(_rows({"A": 0})) is None  # one site: nothing to harmonise


@pytest.mark.parametrize("scans_per_site", [3, 2])
def test_proxy_a_distance_separates_shifted_sites_only(scans_per_site):
    """Two scans per site (two travelling subjects) used to leave a cross-validation
    fold with one site only, and the classifier refused to fit: folds are now
    stratified by site."""
    from phys_bids.group.domains import image_features, proxy_a_distance

    rng = np.random.default_rng(1)
    mask = np.zeros((40, 40, 40), bool)
    mask[5:35, 5:35, 5:35] = True
    feats, sites = [], []
    for _ in range(scans_per_site):  # subject by subject, as the volumes table lists scans
        for site, contrast in (("A", 1.0), ("B", 1.0), ("C", 3.0)):
            img = np.where(rng.random(mask.shape) < 0.5, 1.0, 1.0 + contrast) \
                + rng.normal(0, 0.05, mask.shape)
            feats.append(image_features(img * mask, mask, rng, patches=32))
            sites.append(site)
    d = proxy_a_distance(feats, sites)
    assert set(d) == {"A | B", "A | C", "B | C"}
    assert d["A | B"] < 0.6 and d["A | C"] > 1.5 and d["B | C"] > 1.5


def test_classical_columns_give_their_own_site_statistics_and_the_report_plots_them():
    from phys_bids.group.report import group_report, site_effect_plot

    rows = _rows({"A": 0, "B": 5})
    for r in rows:  # a classical segmentation with a 60 mL site offset on GM
        r.update({"GM_atropos_ml": r["GM_ml"] + (60 if r["site"] == "B" else 0),
                  "WM_atropos_ml": r["WM_ml"], "CSF_atropos_ml": r["CSF_ml"]})
    effects = site_effects(rows)
    clas = site_effects(rows, "{t}_atropos_ml", ("GM", "WM", "CSF"))["tissues"]
    assert set(clas) == {"GM", "WM", "CSF"}
    assert (clas["GM"]["partial_eta2_site_given_subject"]
            > effects["tissues"]["GM"]["partial_eta2_site_given_subject"])
    assert (clas["GM"]["within_subject"]["mean_cov_x1e3"]
            > 5 * effects["tissues"]["GM"]["within_subject"]["mean_cov_x1e3"])
    for t in ("GM", "WM", "CSF"):
        effects["tissues"][t]["classical"] = clas[t]
    png = site_effect_plot(effects)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = group_report(effects, site_plot=True)
    assert "site_effects.png" in html and "classical (Atropos)" in html
    assert "site_effects.png" not in group_report(effects)


def test_within_subject_cov_has_a_bootstrap_interval_around_its_mean():
    w = site_effects(_rows({"A": 0, "B": 20}))["tissues"]["GM"]["within_subject"]
    lo, hi = w["ci95_cov_x1e3"]
    assert w["min_cov_x1e3"] <= lo < w["mean_cov_x1e3"] < hi <= w["max_cov_x1e3"]
    assert site_effects(_rows({"A": 0, "B": 20}))["tissues"]["GM"]["within_subject"] == w


def test_a_scan_atropos_cannot_segment_stays_n_a(tmp_path, monkeypatch):
    import nibabel as nib

    import phys_bids.models.classical as classical
    from phys_bids.group import classical_volumes

    rows = []
    for sub in ("01", "02"):
        anat = tmp_path / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        img = np.zeros((10, 10, 10), np.float32)
        img[2:8, 2:8, 2:8] = np.linspace(0.2, 1.0, 216).reshape(6, 6, 6)
        nib.save(nib.Nifti1Image(img, np.eye(4)), anat / f"sub-{sub}_desc-preproc_T1w.nii.gz")
        nib.save(nib.Nifti1Image((img > 0).astype(np.uint8), np.eye(4)),
                 anat / f"sub-{sub}_desc-brain_mask.nii.gz")
        rows.append({"source": f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
                     **{f"{t}_atropos_ml": "n/a" for t in ("GM", "WM", "CSF")}})
    real = classical.atropos_volumes

    def flaky(image, mask, voxel_ml):
        if flaky.calls == 0:
            flaky.calls += 1
            raise classical.ClassicalSegmentationError("Atropos failed (empty class)")
        return real(image, mask, voxel_ml)
    flaky.calls = 0
    monkeypatch.setattr(classical, "atropos_volumes", flaky)
    assert classical_volumes(tmp_path, rows)
    assert rows[0]["GM_atropos_ml"] == "n/a"
    assert sum(float(rows[1][f"{t}_atropos_ml"]) for t in ("GM", "WM", "CSF")) == \
        pytest.approx(0.216, abs=1e-6)
