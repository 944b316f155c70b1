import numpy as np
import pytest
import torch

from phys_bids.physics.tissues import CLASSES, PRIORS, label_to_class
from phys_bids.synth import Head, SynthConfig, SynthGenerator
from phys_bids.synth.gold_standard import physics_gold_standard

from ..phantoms import phantom_labels


@pytest.fixture(scope="module")
def gen():
    heads = [Head("p0", label_to_class(phantom_labels(48, 0))),
             Head("p1", label_to_class(phantom_labels(48, 1)))]
    return SynthGenerator(heads, SynthConfig(patch=24, realisations=3))


def test_label_mapping():
    lab = np.array([0, 2, 3, 10, 4, 24, 515, 511, 506, 512, 507, 41, 42])
    names = [CLASSES[i] for i in label_to_class(lab)]
    assert names == ["background", "wm", "gm_cortex", "gm_deep", "csf", "csf", "skull",
                     "scalp_fat", "eyes", "spinal_cord", "soft_tissue", "wm", "gm_cortex"]


def test_virtual_subject_values_follow_the_priors(gen):
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([torch.stack([v for v in gen._tissue_values(g).values()]) for _ in
                         range(3000)])  # (n, params, K)
    for pi, p in enumerate(("pd", "r1", "r2s", "r2", "mt")):
        for k, c in enumerate(CLASSES):
            pr = PRIORS[c][p]
            x = draws[:, pi, k]
            if pr.sd == 0:
                continue
            assert abs(float(x.mean()) - pr.mean) < 4 * pr.sd / 3000**0.5 + 1e-6, (c, p)
            assert abs(float(x.std()) / pr.sd - 1) < 0.1, (c, p)


def test_batch_shapes_targets_and_normalisation(gen):
    b = gen.sample(torch.Generator().manual_seed(1), sequence="MPRAGE")
    assert b["image"].shape == (3, 1, 24, 24, 24) and b["physics"].shape == (3, 10)
    assert torch.allclose(b["target"].sum(0), torch.ones(24, 24, 24), atol=1e-5)
    assert float(b["target"][1:, ~b["mask"]].abs().max()) == 0.0  # tissue only in the mask
    assert float(b["image"][:, 0, ~b["mask"]].abs().max()) == 0.0  # skull-stripped
    # same anatomy, different contrasts: realisations differ
    assert not torch.allclose(b["image"][0], b["image"][1])
    # WM brighter than GM brighter than CSF in every MPRAGE realisation (pure voxels)
    t = b["target"]
    for i in range(3):
        im = b["image"][i, 0]
        means = [float(im[t[k] > 0.95].mean()) for k in (2, 1, 3) if bool((t[k] > 0.95).any())]
        assert means == sorted(means, reverse=True)


def test_seeded_batches_repeat_exactly(gen):
    a = gen.sample(torch.Generator().manual_seed(7))
    b = gen.sample(torch.Generator().manual_seed(7))
    assert a["sequence"] == b["sequence"]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])


def test_physics_gold_standard_is_acquisition_independent(gen):
    b = gen.sample(torch.Generator().manual_seed(3), sequence="SPGR")
    pgs = physics_gold_standard(b["r1"], b["mask"])
    assert torch.allclose(pgs.sum(0), torch.ones_like(pgs[0]))
    wm = b["target"][2] > 0.99
    assert float((pgs.argmax(0)[wm] == 2).float().mean()) > 0.8


def test_subvoxel_shift_shows_the_anatomy_at_every_phase_of_the_label_grid():
    """Unrotated, the centre on a label voxel puts every 1 mm voxel across two label
    voxels per axis: a plane boundary is always a 50/50 voxel. With the shift, the
    voxels straddling it take other fractions too (including pure ones)."""
    classes = np.full((40, 40, 40), CLASSES.index("wm"), np.uint8)
    classes[:, :, 20:] = CLASSES.index("gm_cortex")
    head = Head("plane", classes)

    def patches_with_a_mixed_voxel(shift: bool) -> int:
        cfg = SynthConfig(patch=16, realisations=1, rotation_deg=0.0, scale=0.0,
                          elastic_mm=0.0, subvoxel_shift=shift)
        g = SynthGenerator([head], cfg)
        mixed = 0
        for seed in range(40):
            pts = g._sample_grid(head, torch.Generator().manual_seed(seed), 16)
            wm = g._fractions(head, pts, 16)[CLASSES.index("wm")]
            if wm.min() < 1 and wm.max() > 0:  # the boundary is in the patch
                mixed += bool(((wm > 0) & (wm < 1)).any())
            else:
                mixed += 1  # no boundary: count as "not sharp"
        return mixed

    assert patches_with_a_mixed_voxel(False) == 40  # always a 50/50 voxel
    assert 5 < patches_with_a_mixed_voxel(True) < 35  # half the phases are sharp


def test_level_and_gamma_jitter_change_only_the_input_level(gen):
    heads = gen.heads
    plain = SynthGenerator(heads, SynthConfig(patch=24, realisations=3))
    gain = SynthGenerator(heads, SynthConfig(patch=24, realisations=3, level_jitter=0.3))
    both = SynthGenerator(heads, SynthConfig(patch=24, realisations=3, level_jitter=0.3,
                                             gamma_jitter=0.2))
    a, b, c = (s.sample(torch.Generator().manual_seed(5), sequence="MPRAGE")
               for s in (plain, gain, both))
    # the draws come last: anatomy, targets and acquisitions are those of the plain batch
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["physics"], c["physics"])
    inside = a["mask"] & (a["image"][0, 0] > 0)
    ratios = []
    for i in range(3):
        x, y, z = (t["image"][i, 0][inside].double() for t in (a, b, c))
        r = y / x  # one gain per realisation, within exp(+-0.3)
        assert float(r.max() - r.min()) < 1e-5 * float(r.mean())
        assert np.exp(-0.3) - 1e-6 <= float(r.mean()) <= np.exp(0.3) + 1e-6
        ratios.append(float(r.mean()))
        # gamma then gain: log z = gamma log x + log gain, exactly linear in log x
        keep = (x - 1).abs() > 0.05
        slope, icpt = np.polyfit(np.log(x[keep].numpy()), np.log(z[keep].numpy()), 1)
        resid = np.log(z[keep].numpy()) - (slope * np.log(x[keep].numpy()) + icpt)
        assert np.abs(resid).max() < 1e-4 and np.exp(-0.2) - 1e-6 <= slope <= np.exp(0.2) + 1e-6
    assert len({round(r, 6) for r in ratios}) == 3  # each realisation its own gain


def _after_draws(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.rand(n, generator=g)
    return g.get_state()


def test_partial_volume_augmentation_mixes_voxels_and_keeps_fractions_summing_to_one(gen):
    heads = gen.heads
    sharp = SynthGenerator(heads, SynthConfig(patch=24, realisations=2))
    smooth = SynthGenerator(heads, SynthConfig(patch=24, realisations=2, pv_sigma=2.0))
    mixed = {"sharp": [], "smooth": []}
    for seed in range(6):
        for name, s in (("sharp", sharp), ("smooth", smooth)):
            b = s.sample(torch.Generator().manual_seed(seed), sequence="MPRAGE")
            t = b["target"]
            assert torch.allclose(t.sum(0), torch.ones_like(t[0]), atol=1e-5)
            assert float(t.min()) >= -1e-6
            mixed[name].append(float((t.max(0).values < 0.9).float().mean()))
    # smoothing by up to 2 voxels makes more mixed voxels than the label borders alone
    assert np.mean(mixed["smooth"]) > 1.5 * np.mean(mixed["sharp"])
    # the smoothing kernel keeps every class's total inside the patch (replicate edges
    # aside) and spreads a step edge
    frac = torch.zeros(2, 16, 16, 16)
    frac[0, :8], frac[1, 8:] = 1.0, 1.0
    # off, it returns the fractions and draws nothing (shipped configs replay exactly)
    g = torch.Generator().manual_seed(3)
    assert sharp._smooth_fractions(frac, g) is frac
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())
    # pv_probability: that share of the patches is smoothed, the rest stays sharp; at
    # its default of 1 it draws nothing more (pv_sigma configs replay their streams)
    g = torch.Generator().manual_seed(5)
    once = smooth._smooth_fractions(frac, g)
    assert torch.equal(g.get_state(), _after_draws(5, 1))
    assert not torch.equal(once, frac)
    smooth.cfg.pv_probability = 0.5
    kept = [smooth._smooth_fractions(frac, torch.Generator().manual_seed(s)) is frac
            for s in range(200)]
    assert 0.35 < np.mean(kept) < 0.65
    smooth.cfg.pv_probability = 1.0
    smooth.cfg.pv_sigma = 3.0
    out = smooth._smooth_fractions(frac, torch.Generator().manual_seed(0))
    assert torch.allclose(out.sum(0), torch.ones(16, 16, 16), atol=1e-5)
    assert 0.05 < float(out[0, 8].mean()) < 0.5 and float(out[0, 0].mean()) > 0.99


@pytest.mark.parametrize("setting, named", [
    ({"rotation_deg": 200.0}, "rotation_deg must be in \\[0, 180\\] degrees"),
    ({"snr": (80.0, 15.0)}, "snr must be \\(low, high\\)"),
    ({"blur_probability": 25.0}, "blur_probability must be in \\[0, 1\\]"),
    ({"scale": 10.0}, "scale must be in \\[0, 1\\)"),
    ({"pv_sigma": -1.0}, "pv_sigma must not be negative"),
    ({"field_strength": 3000.0}, "field_strength must be in"),
    ({"sequences": ("MPRAGE", "T2")}, "sequence 'T2' is not one of"),
    ({"spaces": {"MPRAGE": "spgr-id", "SPGR": "spgr-id"}}, "is not a parameter space of MPRAGE"),
    ({"oversample": {"SPGR": ["spgr-ood", 0.5]}}, "'spgr-ood' does not lie inside 'spgr-id'"),
    ({"oversample": {"SPGR": ["spgr-id-lowfa", 50]}}, "probability must be in \\[0, 1\\]"),
    ({"oversample": {"SPGR": ["mprage-id", 0.5]}}, "is not a parameter space of SPGR"),
    ({"oversample": {"SPGR": ["spgr-id-lowfa", "half"]}}, "probability must be in"),
    ({"oversample": {"SPGR": "spgr-id-lowfa"}}, "must be \\[space, probability\\]"),
    ({"oversample": {"FSE": ["qsynth-fse", 0.5]}}, "oversample names 'FSE'"),
])
def test_generator_settings_out_of_range_are_refused_by_name(setting, named):
    """Settings in the wrong unit or order (a rotation in tenths of a degree, swapped SNR
    bounds, a probability in percent, a field strength in mT) are refused, naming the
    field, instead of training on images nobody asked for; the defaults pass."""
    SynthConfig()
    with pytest.raises(ValueError, match=named):
        SynthConfig(**setting)


def test_training_command_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    """training/train_segmentation.py with an out-of-range generator setting (or an
    unknown key) exits with one line naming the config and writes nothing."""
    import json

    from ..scripts import training_script

    trainer = training_script("train_segmentation")
    for bad, said in (({"synth": {"snr": [80, 15]}}, "snr must be"),
                      ({"synth": {"snr_db": 20}}, "snr_db"), ({"epochs": 3}, "epochs")):
        cfg = tmp_path / "bad.json"
        cfg.write_text(json.dumps({"name": "bad", **bad}))
        with pytest.raises(SystemExit) as exc:
            trainer.main(["--config", str(cfg), "--out", str(tmp_path / "out")])
        msg = str(exc.value.code)
        assert msg.startswith(f"{cfg}: ") and said in msg and "\n" not in msg
        assert not (tmp_path / "out").exists()


def test_oversampling_weights_a_corner_of_the_training_space(gen):
    """``oversample`` draws each SPGR realisation from the low-flip-angle corner with the
    given probability and from the training space otherwise, and stays inside the
    training space; without an entry the draws are those of the plain space (the
    shipped models' streams replay)."""
    from phys_bids.physics import SPACES

    n = 4000
    plain = gen._sample_params("SPGR", n, torch.Generator().manual_seed(5))
    assert torch.equal(plain["fa"], SPACES["spgr-id"].sample(
        n, generator=torch.Generator().manual_seed(5), dtype=torch.float32)["fa"])
    heavy = SynthGenerator(gen.heads, SynthConfig(patch=24, realisations=3, oversample={
        "SPGR": ["spgr-id-lowfa", 0.5]}))
    p = heavy._sample_params("SPGR", n, torch.Generator().manual_seed(5))
    assert SPACES["spgr-id"].contains(p)
    low = float((p["fa"] <= 30.0).float().mean())
    # half from [15, 30] deg, half from [15, 75] deg of which a quarter is below 30
    assert abs(low - (0.5 + 0.5 * 0.25)) < 0.03
    assert abs(float((plain["fa"] <= 30.0).float().mean()) - 0.25) < 0.03
    # picked per realisation, not per batch: batches of 4 mix the corner and the rest
    mixed = (p["fa"].reshape(-1, 4) <= 30.0).float().mean(1)
    assert float(((mixed > 0) & (mixed < 1)).float().mean()) > 0.5
    # MPRAGE draws are untouched by an SPGR entry
    assert torch.equal(heavy._sample_params("MPRAGE", 8, torch.Generator().manual_seed(2))["ti"],
                       gen._sample_params("MPRAGE", 8, torch.Generator().manual_seed(2))["ti"])
