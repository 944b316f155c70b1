import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from phys_bids.models import PhysicsUNet, enable_mc_dropout, stratification_loss
from phys_bids.models.inference import sliding_window_logits
from phys_bids.models.losses import soft_dice_loss, stochastic_cross_entropy
from phys_bids.models.registry import ModelCorruptError, available_models, load_model
from phys_bids.models.training import TrainConfig, train
from phys_bids.physics.tissues import wm_gm_contrast

from ..phantoms import write_phantom
from ..scripts import bench_script


def tiny(physics_dim=10, **kw):
    torch.manual_seed(0)
    return PhysicsUNet(channels=(4, 8), physics_dim=physics_dim, **kw)


def test_physics_changes_the_physics_model_not_the_baseline():
    x = torch.randn(1, 1, 16, 16, 16)
    p1, p2 = torch.zeros(1, 10), torch.ones(1, 10)
    phys, base = tiny(10).eval(), tiny(0).eval()
    assert not torch.allclose(phys(x, p1)[0], phys(x, p2)[0])
    assert torch.equal(base(x, p1)[0], base(x, p2)[0])
    with pytest.raises(ValueError, match="physics branch"):
        phys(x, None)


def test_stratification_loss_zero_for_identical_realisations():
    f = torch.randn(1, 4, 8, 8, 8)
    assert float(stratification_loss(f.expand(3, -1, -1, -1, -1))) == 0.0
    assert float(stratification_loss(torch.randn(3, 4, 8, 8, 8))) > 0.1


def test_stochastic_ce_reduces_to_ce_and_attenuates():
    logits = torch.randn(2, 4, 6, 6, 6)
    target = torch.softmax(torch.randn(2, 4, 6, 6, 6), 1)
    ce = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    tiny_sigma = torch.full_like(logits, -20.0)
    assert torch.allclose(stochastic_cross_entropy(logits, tiny_sigma, target), ce, atol=1e-5)
    assert torch.allclose(stochastic_cross_entropy(logits, None, target), ce)


def test_mc_dropout_samples_differ_and_eval_is_deterministic():
    net = tiny(10, dropout=0.5)
    x, p = torch.randn(1, 1, 16, 16, 16), torch.zeros(1, 10)
    net.eval()
    assert torch.equal(net(x, p)[0], net(x, p)[0])
    enable_mc_dropout(net)
    assert not torch.equal(net(x, p)[0], net(x, p)[0])


def test_tiny_network_learns():
    torch.manual_seed(0)
    net = tiny(10)
    x = torch.randn(2, 1, 16, 16, 16)
    target = torch.zeros(2, 4, 16, 16, 16)
    target[:, 2] = (x[:, 0] > 0).float()
    target[:, 1] = 1 - target[:, 2]
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(25):
        logits, ls, _ = net(x, torch.zeros(2, 10))
        loss = stochastic_cross_entropy(logits, ls, target) + soft_dice_loss(logits.softmax(1),
                                                                            target, classes=(1, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_sliding_window_equals_one_pass_when_the_window_covers_the_image():
    net = tiny(10).eval()
    x, p = torch.randn(1, 1, 13, 16, 10), torch.zeros(1, 10)
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 1))  # x: 13 -> 14 (multiple of 2)
    ref = net(xp, p)[0][:, :, :13, :16, :10]  # weights and input in the default layout
    out = sliding_window_logits(net, x, p, window=64)  # channels-last on CPU
    assert out.shape == (1, 4, 13, 16, 10)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out, sliding_window_logits(net, x, p, window=64))  # repeatable
    tiled = sliding_window_logits(net, x, p, window=8, overlap=0.5, flip_axes=(0, 1, 2))
    assert tiled.shape == out.shape and torch.isfinite(tiled).all()


def test_flip_tta_averages_each_window_with_its_mirror():
    net = tiny(10).eval()
    x, p = torch.randn(1, 1, 14, 16, 10), torch.randn(1, 10)
    plain = sliding_window_logits(net, x, p, window=64)
    lr = sliding_window_logits(net, x, p, window=64, flip_axes=(0,))
    mirrored = sliding_window_logits(net, x.flip(2), p, window=64).flip(2)
    assert torch.allclose(lr, (plain + mirrored) / 2, atol=1e-5)
    assert not torch.allclose(lr, plain, atol=1e-3)  # the mirror pass changed something
    # a left-right symmetric input gives a left-right symmetric answer
    sym = torch.cat([x[:, :, :7], x[:, :, :7].flip(2)], 2)
    s = sliding_window_logits(net, sym, p, window=64, flip_axes=(0,))
    assert torch.allclose(s, s.flip(2), atol=1e-5)
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window_logits(net, x, p, window=64, flip_axes=(3,))


def _tiny_cfg(**kw):
    base = dict(name="tiny", channels=(4, 8), patch=16, realisations=2, max_steps=4,
                val_every=2, checkpoint_every=2, train_subjects=("head_a",),
                val_subjects=("head_b",), test_subjects=(), aleatoric_samples=2, warmup=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    write_phantom(d / "head_a.nii.gz", 40, 0)
    write_phantom(d / "head_b.nii.gz", 40, 1)
    return d


def test_training_writes_manifest_resumes_and_is_deterministic(label_dir, tmp_path):
    m = train(_tiny_cfg(), label_dir, tmp_path / "a")
    assert m["steps"] == 4 and m["complete"]
    assert m["split"] == {"train": ["head_a"], "val": ["head_b"], "test": []}
    assert set(m["data"]) == {"head_a", "head_b"} and len(m["history"]["loss"]) == 4
    loaded = load_model(tmp_path / "a")
    assert loaded.physics and loaded.manifest["weights_sha256"] == m["weights_sha256"]
    from phys_bids.models.training import revalidate

    val = revalidate(loaded.manifest, loaded.network, label_dir)
    assert 0.0 <= val["dice_mean"] <= 1.0
    assert val == revalidate(loaded.manifest, loaded.network, label_dir)  # same batches
    # resume: continue the schedule from the checkpoint
    m2 = train(_tiny_cfg(max_steps=6), label_dir, tmp_path / "a")
    assert m2["steps"] == 6 and m2["history"]["resumed_at"] == [4]
    # determinism: same seed, same weights bit for bit
    m3 = train(_tiny_cfg(), label_dir, tmp_path / "b")
    assert m3["weights_sha256"] == m["weights_sha256"]
    # ... in any process: the file's bytes name no temporary file (nor its pid)
    import zipfile

    names = zipfile.ZipFile(tmp_path / "b" / "weights.pt").namelist()
    assert names and all(n.startswith("archive/") for n in names), names[:3]
    base = train(_tiny_cfg(physics=False, max_steps=2), label_dir, tmp_path / "c")
    assert load_model(tmp_path / "c").encoder is None and base["physics_encoder"] is None


def test_a_fine_tuning_arm_starts_from_a_committed_model_and_says_so(label_dir, tmp_path):
    parent = train(_tiny_cfg(), label_dir, tmp_path / "parent")
    cfg = _tiny_cfg(max_steps=6, cycles=(4,), dice_weight=0.0)
    arm = train(cfg, label_dir, tmp_path / "arm", init_from=tmp_path / "parent")
    assert arm["initialised_from"] == {"model": "tiny", "steps": 4,
                                       "weights_sha256": parent["weights_sha256"]}
    assert arm["steps"] == 6 and arm["history"]["resumed_at"] == [4]
    assert arm["history"]["loss"][:4] == parent["history"]["loss"]
    assert "--init-from tiny" in arm["reproduce"]
    # the parent is untouched; a second call resumes the arm's own checkpoint
    assert load_model(tmp_path / "parent").manifest["weights_sha256"] == \
        parent["weights_sha256"]
    again = train(_tiny_cfg(max_steps=7, cycles=(4,), dice_weight=0.0), label_dir,
                  tmp_path / "arm", init_from=tmp_path / "parent")
    assert again["history"]["resumed_at"] == [4, 6]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, label_dir, tmp_path / "x", init_from=tmp_path / "nowhere")


@pytest.mark.parametrize("ema", [False, True], ids=["last-weights", "weight-average"])
def test_a_slimmed_checkpoint_resumes_exactly_and_checks_the_weights(label_dir, tmp_path, ema):
    """A shipped checkpoint names weights.pt for the state it would repeat; resuming
    from it (in place, or as --init-from) gives the weights of resuming from the
    checkpoint training wrote, and a swapped weights.pt is refused."""
    from phys_bids.models.training import load_checkpoint, slim_checkpoint

    extra = dict(ema_decay=0.5, ema_from_step=2) if ema else {}
    train(_tiny_cfg(**extra), label_dir, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "slim")
    full = load_checkpoint(tmp_path / "full")
    saved = slim_checkpoint(tmp_path / "slim")
    assert saved > 0 and slim_checkpoint(tmp_path / "slim") == 0  # once only
    raw = torch.load(tmp_path / "slim" / "checkpoint.pt", weights_only=False)
    assert raw["in_weights"]["keys"] == (["ema"] if ema else ["model"])
    assert not set(raw) & set(raw["in_weights"]["keys"])
    back = load_checkpoint(tmp_path / "slim")
    assert back.keys() == full.keys()
    for key in ("model", "ema") if ema else ("model",):
        assert all(torch.equal(back[key][k], full[key][k]) for k in full[key])
    longer = _tiny_cfg(max_steps=6, **extra)
    arm = train(longer, label_dir, tmp_path / "arm", init_from=tmp_path / "slim")
    ref = train(longer, label_dir, tmp_path / "full")
    assert arm["weights_sha256"] == ref["weights_sha256"]
    assert train(longer, label_dir, tmp_path / "slim")["weights_sha256"] == \
        ref["weights_sha256"]
    shutil.copytree(tmp_path / "full", tmp_path / "slim2")
    slim_checkpoint(tmp_path / "slim2")
    _flip_a_byte(tmp_path / "slim2" / "weights.pt")
    with pytest.raises(ModelCorruptError, match="cannot resume"):
        load_checkpoint(tmp_path / "slim2")


def test_a_switch_to_aligned_label_maps_equals_resuming_there(label_dir, tmp_path):
    """The shipped schedule: native label maps, then MNI-aligned ones from a step."""
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    write_phantom(aligned / "head_a.nii.gz", 40, 2)  # other anatomy: the switch shows
    write_phantom(aligned / "head_b.nii.gz", 40, 3)
    cfg = _tiny_cfg(aligned_from_step=2)
    whole = train(cfg, label_dir, tmp_path / "whole", aligned_dir=aligned)
    assert whole["aligned_from_step"] == 2 and set(whole["aligned_data"]) == {"head_a",
                                                                              "head_b"}
    assert whole["aligned_data"]["head_a"]["sha256"] != whole["data"]["head_a"]["sha256"]
    # stop at the switch, resume: bit-identical weights, validation on the aligned maps
    train(_tiny_cfg(aligned_from_step=2, max_steps=2), label_dir, tmp_path / "split",
          aligned_dir=aligned)
    split = train(cfg, label_dir, tmp_path / "split", aligned_dir=aligned)
    assert split["weights_sha256"] == whole["weights_sha256"]
    assert split["history"]["val"] == whole["history"]["val"]
    native = train(_tiny_cfg(), label_dir, tmp_path / "native")
    assert native["history"]["loss"][:2] == whole["history"]["loss"][:2]
    assert native["history"]["loss"][2:] != whole["history"]["loss"][2:]
    from phys_bids.models.training import revalidate

    model = load_model(tmp_path / "whole")
    assert revalidate(model.manifest, model.network, label_dir, aligned) == \
        {k: v for k, v in whole["validation"].items() if k != "step"}
    with pytest.raises(ValueError, match="MNI-aligned"):
        revalidate(model.manifest, model.network, label_dir)
    with pytest.raises(ValueError, match="aligned-data"):
        train(cfg, label_dir, tmp_path / "x")


@pytest.mark.parametrize("name", available_models(kind=None))
def test_each_shipped_model_is_what_its_config_trains(name):
    """The documented command (config in training/configs) reproduces the shipped
    model: same configuration, schedule complete, and the data it says it used."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "training" / "configs" / f"{name}.json"
    if not config.is_file():
        pytest.skip(f"{config} not in this checkout (installed package only)")
    manifest = load_model(name).manifest
    assert TrainConfig.from_dict(manifest["train_config"]).to_dict() == \
        TrainConfig.from_json(config).to_dict()
    assert manifest["complete"] and manifest["steps"] == manifest["train_config"]["max_steps"]
    if manifest["train_config"].get("aligned_from_step") is not None:
        assert set(manifest["aligned_data"]) == set(manifest["data"])


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_training_config_builds_its_run(config):
    """Each committed config (arms included) resolves its ``extends`` chain into a valid
    TrainConfig whose name is the file's, whose generator settings are known and whose
    network builds: a typo in an arm's keys fails here, not an hour into its run."""
    from phys_bids.models.training import build_model, make_encoder, make_synth

    cfg = TrainConfig.from_json(config)
    assert cfg.name == config.stem
    assert make_synth(cfg).patch == cfg.patch
    net = build_model(cfg, make_encoder(cfg))
    assert sum(p.numel() for p in net.parameters()) > 0
    assert (net.physics_dim > 0) == cfg.physics


def _flip_a_byte(path: Path) -> None:
    """Corrupt a weights file in place (the archive still opens)."""
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_weights_are_refused(label_dir, tmp_path):
    train(_tiny_cfg(max_steps=2), label_dir, tmp_path / "m")
    _flip_a_byte(tmp_path / "m" / "weights.pt")
    with pytest.raises(ModelCorruptError, match="does not match"):
        load_model(tmp_path / "m")


SHIPPED = [m for m in ("seg-physics", "seg-physics-film", "seg-physics-film-nonorm",
                       "seg-baseline", "qmri-physics")
           if m in available_models(kind=None)]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_stored_prediction(name, tmp_path):
    """The fixture is written by training/ship_model.py when a model is shipped."""
    from pathlib import Path

    from phys_bids.models.registry import MODELS_DIR
    from phys_bids.models.shipping import reference_prediction

    ref = json.loads((Path(__file__).parent / "data" / f"{name}-prediction.json").read_text())
    model = load_model(name)
    assert model.manifest["weights_sha256"] == ref["weights_sha256"]
    got = reference_prediction(model, seed=ref["seed"], shape=ref["shape"], ti=ref["ti"])
    assert got == pytest.approx(ref["mean_probs"], rel=1e-5, abs=1e-5)
    # and the registry refuses a tampered copy
    shutil.copytree(MODELS_DIR / name, tmp_path / name)
    (tmp_path / name / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelCorruptError):
        load_model(tmp_path / name)


def test_validation_dice_is_one_for_a_perfect_prediction_and_bounded():
    from phys_bids.models.training import evaluate_batches

    target = torch.zeros(4, 8, 8, 8)
    target[1, :4], target[2, 4:6], target[3, 6:] = 1, 1, 1

    class Oracle(torch.nn.Module):
        def forward(self, image, physics):
            n = image.shape[0]
            return (20 * target[None].expand(n, -1, -1, -1, -1), None, None)

    batch = {"image": torch.zeros(3, 1, 8, 8, 8), "physics": None, "target": target}
    res = evaluate_batches(Oracle(), [batch], physics=False)
    assert res["dice_mean"] == pytest.approx(1.0)
    assert res["cov_x1e3"]["GM"] == pytest.approx(0.0, abs=1e-6)


def test_monte_carlo_segmentation_is_seeded_and_summarised():
    import numpy as np

    from phys_bids.models.registry import load_model
    from phys_bids.models.segment import segment_brain, volume_summary

    model = load_model("seg-physics")
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (24, 24, 24)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[4:20, 4:20, 4:20] = True
    run = [segment_brain(model, img, mask, "MPRAGE", {"ti": 0.9}, threads=1, mc_samples=3,
                         seed=s) for s in (1, 1, 2)]
    assert np.array_equal(run[0].volumes, run[1].volumes)
    assert not np.array_equal(run[0].volumes, run[2].volumes)
    assert run[0].volumes.shape == (3, 3) and (run[0].sd >= 0).all()
    assert np.allclose(run[0].probabilities.sum(0), 1, atol=1e-5)
    # no tissue and no spread outside the brain
    assert (run[0].probabilities[1:, ~mask] == 0).all() and (run[0].sd[:, ~mask] == 0).all()
    # the volumes are the sums of each sample's probabilities (1 mm voxels, mL)
    assert run[0].volumes.mean(0) == pytest.approx(
        run[0].probabilities[1:].reshape(3, -1).sum(1) / 1000, rel=1e-5)
    s = volume_summary([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5 and s["q1"] == 1.75 and s["iqr"] == 1.5 and s["n"] == 4


def test_contrastive_loss_is_zero_for_separated_tissues_and_trains_features_apart():
    from phys_bids.models.losses import contrastive_loss

    g = torch.Generator().manual_seed(0)
    lab = torch.randint(1, 4, (6, 6, 6), generator=g)
    target = torch.nn.functional.one_hot(lab, 4).permute(3, 0, 1, 2).float()
    # every tissue one point, 3 units apart, in every realisation: no loss
    centres = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    feats = centres[lab].permute(3, 0, 1, 2)[None].expand(3, -1, -1, -1, -1)
    assert float(contrastive_loss(feats, target, generator=g)) == 0.0
    # all tissues collapsed onto one point: the hinge of the dissimilar pairs (margin 1)
    same = torch.zeros(3, 2, 6, 6, 6)
    loss = float(contrastive_loss(same, target, generator=g))
    assert 0.5 < loss < 1.0  # about 2/3 of the pairs are dissimilar, each costs 1
    # no pure voxel: no loss
    assert float(contrastive_loss(same, torch.full((4, 6, 6, 6), 0.25))) == 0.0
    # gradient descent on the features lowers it
    f = torch.randn(3, 2, 6, 6, 6, generator=g, requires_grad=True)
    opt = torch.optim.Adam([f], lr=0.1)
    first = None
    for _ in range(30):
        opt.zero_grad()
        v = contrastive_loss(f, target, generator=torch.Generator().manual_seed(1))
        first = float(v.detach()) if first is None else first
        v.backward()
        opt.step()
    assert float(v.detach()) < 0.5 * first


def test_contrastive_weight_enters_the_training_loss(label_dir, tmp_path):
    on = train(_tiny_cfg(contrastive_weight=0.5, max_steps=1), label_dir, tmp_path / "on")
    off = train(_tiny_cfg(max_steps=1), label_dir, tmp_path / "off")
    assert on["train_config"]["contrastive_weight"] == 0.5
    # same seed, same batch: the first loss differs only by the contrastive term (>= 0)
    assert on["history"]["loss"][0] > off["history"]["loss"][0]


def test_output_consistency_weight_adds_the_l2_between_realisation_probabilities(label_dir):
    """The loss gains weight x the mean squared difference between the realisations'
    class probabilities, and is unchanged at weight 0."""
    from phys_bids.models.training import _loss, build_model, make_encoder, make_synth
    from phys_bids.synth import SynthGenerator, load_head

    cfg0, cfg2 = _tiny_cfg(), _tiny_cfg(output_consistency_weight=2.0)
    torch.manual_seed(0)
    model = build_model(cfg0, make_encoder(cfg0)).eval()  # no dropout: one function
    gen = SynthGenerator([load_head(label_dir / "head_a.nii.gz")], make_synth(cfg0),
                         make_encoder(cfg0), "cpu")
    batch = gen.sample(torch.Generator().manual_seed(3))
    l0, p0 = _loss(model, batch, cfg0, torch.Generator().manual_seed(0))
    l2, p2 = _loss(model, batch, cfg2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(model(batch["image"], batch["physics"])[0], 1)
    expected = float(stratification_loss(probs))
    assert expected > 0 and "output_consistency" not in p0
    assert p2["output_consistency"] == pytest.approx(expected, rel=1e-5)
    assert float((l2 - l0).detach()) == pytest.approx(2.0 * expected, rel=1e-4)


def _centre_physics_effect(net, size: int) -> float:
    """Mean |logit change| in the central 8^3 voxels between two physics vectors."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, size, size, size)
    with torch.no_grad():
        a = net(x, torch.zeros(1, 10))[0]
        b = net(x, torch.ones(1, 10))[0]
    c = slice(size // 2 - 4, size // 2 + 4)
    return float((a - b).abs()[..., c, c, c].mean())


def test_batch_norm_keeps_the_physics_effect_whatever_the_window():
    # instance norm subtracts the tiled physics constant again (away from the window's
    # zero padding), so its effect at the centre shrinks as the window grows; batch
    # norm at inference uses fixed statistics and keeps it
    torch.manual_seed(3)
    bn = PhysicsUNet(channels=(4, 8), physics_dim=10, norm="batch").eval()
    torch.manual_seed(3)
    inorm = PhysicsUNet(channels=(4, 8), physics_dim=10, norm="instance").eval()
    small, large = _centre_physics_effect(bn, 16), _centre_physics_effect(bn, 48)
    assert small > 1e-3 and large / small > 0.9, (small, large)
    small_i, large_i = _centre_physics_effect(inorm, 16), _centre_physics_effect(inorm, 48)
    assert large_i / small_i < 0.5, (small_i, large_i)


def test_film_injection_keeps_the_physics_effect_under_instance_norm():
    # the modulation comes after the norm, before the activation: nothing subtracts it
    torch.manual_seed(3)
    film = PhysicsUNet(channels=(4, 8), physics_dim=10, injection="film").eval()
    # starts as the identity modulation: the parameters change nothing yet
    assert _centre_physics_effect(film, 16) == 0.0
    torch.nn.init.normal_(film.physics[-1].weight, std=0.3)
    small, large = _centre_physics_effect(film, 16), _centre_physics_effect(film, 48)
    assert small > 1e-3 and large / small > 0.9, (small, large)
    # the baseline has no branch to modulate with
    base = PhysicsUNet(channels=(4, 8), physics_dim=0, injection="film")
    assert base.physics is None and not base.film


def _centre_logits(net, image, centre):
    with torch.no_grad():
        out = net(image, torch.zeros(1, 10))[0]
    c = [slice(k - 4, k + 4) for k in centre]
    return out[(..., *c)]


def test_without_a_norm_the_output_does_not_depend_on_what_else_the_window_holds():
    # the same 32^3 neighbourhood inside two windows whose other content differs (a bright
    # slab far outside the receptive field): a normalisation over the window sees the slab,
    # no normalisation does not
    torch.manual_seed(4)
    inner = torch.rand(1, 1, 32, 32, 32) * 2
    small = torch.zeros(1, 1, 48, 48, 48)
    small[..., 8:40, 8:40, 8:40] = inner
    large = torch.zeros(1, 1, 96, 96, 96)
    large[..., 8:40, 8:40, 8:40] = inner
    large[..., 64:, :, :] = 3.0
    diffs = {}
    for norm in ("none", "instance"):
        torch.manual_seed(5)
        net = PhysicsUNet(channels=(4, 8), physics_dim=10, injection="film", norm=norm).eval()
        diffs[norm] = float((_centre_logits(net, small, (24, 24, 24))
                             - _centre_logits(net, large, (24, 24, 24))).abs().max())
    assert diffs["none"] < 1e-5 and diffs["instance"] > 1e-2, diffs
    # the blocks carry a convolution bias in place of the norm's shift
    assert PhysicsUNet(channels=(4, 8), norm="none").enc[0][0].bias is not None
    assert PhysicsUNet(channels=(4, 8), norm="instance").enc[0][0].bias is None


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm"):
        PhysicsUNet(channels=(4, 8), norm="group")
    with pytest.raises(ValueError, match="injection"):
        PhysicsUNet(channels=(4, 8), injection="add")
    with pytest.raises(ValueError, match="input_transform"):
        PhysicsUNet(channels=(4, 8), input_transform="log")


def _skull_stripped(shape=(40, 40, 40), seed=6):
    """A positive random image inside an off-centre ellipsoid, zero outside."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape],
                                      indexing="ij"))
    centre = torch.tensor([18.0, 21.0, 19.0])[:, None, None, None]
    inside = (((grid - centre) / torch.tensor([14.0, 12.0, 15.0])[:, None, None, None]) ** 2
              ).sum(0) <= 1
    return (torch.rand(shape, generator=g) * 1.5 + 0.2) * inside


def test_log_contrast_channels_are_gain_invariant_and_zero_outside_the_brain():
    from phys_bids.models.unet import LOG_CONTRAST_SCALES, log_contrast

    image = _skull_stripped()[None, None]
    channels = log_contrast(image)
    assert channels.shape[1] == len(LOG_CONTRAST_SCALES) + 1
    brain = image[0, 0] > 0
    assert torch.equal(channels[0, -1] > 0, brain)  # the last channel is the mask
    assert float(channels[0, :-1, ~brain].abs().max()) == 0.0
    # a gain of the whole image leaves every channel as it was, at the mask border too
    assert torch.allclose(log_contrast(image * 3.7), channels, atol=1e-5)
    # a local change is a contrast: a 4^3 block twice as bright is seen by the box that
    # holds more than the block (log 2 = 0.69 less its share of the box mean), not by
    # the 3^3 box at the block's centre, which the block fills
    brighter = image.clone()
    brighter[..., 18:22, 18:22, 18:22] *= 2
    change = (log_contrast(brighter) - channels)[0, :-1, 20, 20, 20]
    assert abs(float(change[0])) < 1e-5 and float(change[-1]) > 0.65
    # the input of the first block: channels per scale, plus the mask
    net = PhysicsUNet(channels=(4, 8), physics_dim=3, norm="none",
                      input_transform="log-contrast")
    assert net.enc[0][0].in_channels == len(LOG_CONTRAST_SCALES) + 1
    assert net.config["input_transform"] == "log-contrast"
    assert "input_transform" not in PhysicsUNet(channels=(4, 8)).config  # shipped manifests


def test_a_log_contrast_network_without_a_norm_is_blind_to_the_input_level():
    # the failure of seg-physics-film-nonorm through the application: without a norm the
    # input level reaches the output; with log-contrast input it cannot, and the output
    # still does not depend on the window
    image = _skull_stripped((48, 48, 48))[None, None]
    physics = torch.tensor([[0.3, -0.2, 0.5]])
    outs = {}
    for transform in ("intensity", "log-contrast"):
        torch.manual_seed(7)
        net = PhysicsUNet(channels=(4, 8), physics_dim=3, injection="film", norm="none",
                          input_transform=transform).eval()
        with torch.no_grad():
            outs[transform] = [net(image * s, physics)[0] for s in (0.8, 1.25)]
    level = {t: float((a - b).abs().max()) for t, (a, b) in outs.items()}
    assert level["log-contrast"] < 1e-4 and level["intensity"] > 1e-2, level
    torch.manual_seed(8)
    net = PhysicsUNet(channels=(4, 8), physics_dim=3, injection="film", norm="none",
                      input_transform="log-contrast").eval()
    large = torch.zeros(1, 1, 96, 96, 96)
    large[..., :48, :48, :48] = image
    large[..., 80:, :, :] = 3.0  # other content, beyond the box filters and the convolutions
    with torch.no_grad():
        small_out = net(image, physics)[0][..., 16:24, 16:24, 16:24]
        large_out = net(large, physics)[0][..., 16:24, 16:24, 16:24]
    assert float((small_out - large_out).abs().max()) < 1e-5


def test_a_run_stopped_before_the_aligned_phase_does_not_need_the_aligned_maps():
    from phys_bids.models.training import needs_aligned

    cfg = TrainConfig(max_steps=2700, aligned_from_step=2250)
    assert needs_aligned(cfg)
    cfg.max_steps = 1500
    assert not needs_aligned(cfg)
    assert not needs_aligned(TrainConfig(max_steps=2700, aligned_from_step=None))


def _no_nan(token):
    raise AssertionError(f"{token} in a JSON file: not valid JSON")


def test_consistency_benchmark_measures_every_method_and_condition(label_dir, tmp_path,
                                                                   caplog):
    """bench/bench_consistency.py (the consistency benchmark) on tiny models, one small head
    and 3 images per condition: a row per method and condition; the CoV is 10^3 SD/mean
    of the volumes its TI plot shows; Dice lies in [0, 1]; Atropos segments the same
    images (a failure is counted, not averaged); --resume adds a subject without
    measuring the first one again."""
    bench = bench_script("bench_consistency")
    train(_tiny_cfg(max_steps=2), label_dir, tmp_path / "phys")
    train(_tiny_cfg(max_steps=2, physics=False), label_dir, tmp_path / "base")
    phys, base = str(tmp_path / "phys"), str(tmp_path / "base")
    out = tmp_path / "out"
    args = ["--data", str(label_dir), "--models", f"{phys},{base}", "--n-images", "3",
            "--window", "16", "--threads", "1", "--out", str(out)]
    bench.main(args + ["--subjects", "head_b"])
    result = json.loads((out / "consistency.json").read_text(), parse_constant=_no_nan)
    methods = [phys, base, "atropos"]
    conds = {"mprage-id", "mprage-ood", "spgr-id", "spgr-ood"}
    assert list(result["summary"]) == methods
    assert result["meta"]["complete"] and result["meta"]["subjects"] == ["head_b"]
    failed = result["meta"]["atropos_failures"]
    for m in methods:
        assert set(result["summary"][m]) == conds
        for c in conds:
            (row,) = result["per_subject"][m][c]
            n_failed = sum(f["condition"] == c for f in failed) if m == "atropos" else 0
            assert row["subject"] == "head_b" and row["images"] + n_failed == 3
            if row["images"]:
                assert all(0.0 <= d <= 1.0 for d in row["dice_anatomy"].values())
                assert all(0.0 <= d <= 1.0 for d in row["dice_pgs"].values())
            else:  # every image failed: null metrics, not NaN
                assert set(row["cov_x1e3"].values()) == {None}
        if m != "atropos":
            (curve,) = result["curves"][m]["mprage-id"]
            assert np.allclose(curve["ti"], [0.6, 0.9, 1.2])
            v = np.array(curve["volumes"], dtype=np.float64)
            row = result["per_subject"][m]["mprage-id"][0]
            assert np.allclose([row["cov_x1e3"][t] for t in ("GM", "WM", "CSF")],
                               1e3 * v.std(0) / v.mean(0))
            assert "soft_volume_error_pct" in row
    md = (out / "consistency.md").read_text()
    # one row per metric, one per SPGR condition in the split by contrast, and one per
    # contrast bin holding draws
    for m in (phys, base):
        n_bins = sum(len(result["by_contrast"][m][c]["head_b"]["bins"])
                     for c in ("spgr-id", "spgr-ood"))
        assert md.count(f"| {m} |") == 5 + 2 + n_bins
    assert set(result["by_contrast"][phys]) == {"spgr-id", "spgr-ood"}
    # no soft volume for a hard segmentation; a split only where two images segmented
    splits = sum(sum(np.isfinite(np.array(r["volumes"], dtype=float)[:, 0]).sum() >= 2
                     for r in result["curves"]["atropos"][c]) for c in ("spgr-id", "spgr-ood"))
    atropos_bins = sum(len(r["bins"]) for per in result["by_contrast"].get("atropos", {}).values()
                       for r in per.values())
    assert md.count("| atropos |") == 4 + splits + atropos_bins
    assert (out / "volume_vs_ti.png").stat().st_size > 0
    import matplotlib.pyplot as plt
    assert not plt.get_fignums()  # the plot's figure is closed once written
    # an image whose k-means Atropos started again is segmented, not a failure, and named
    restarted = {(f["condition"], f["image"]) for f in result["meta"]["atropos_restarts"]}
    assert not restarted & {(f["condition"], f["image"]) for f in failed}
    assert ("started again" in md) == bool(restarted)
    before, wall = result["per_subject"], result["meta"]["wall_s"]
    only_b = tmp_path / "only_b"
    shutil.copytree(out, only_b)
    first = json.loads((only_b / "consistency.json").read_text())
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(args + ["--subjects", "head_b,head_a", "--resume"])
    result = json.loads((out / "consistency.json").read_text(), parse_constant=_no_nan)
    assert result["meta"]["subjects"] == ["head_b", "head_a"]
    assert result["meta"]["wall_s"] > wall  # the time of both runs
    assert "head_b already measured" in caplog.text
    assert "head_b mprage-id" not in caplog.text and "head_a mprage-id 3/3" in caplog.text
    for m in methods:
        rows = result["per_subject"][m]["spgr-ood"]
        assert [r["subject"] for r in rows] == ["head_b", "head_a"]
        assert rows[0] == before[m]["spgr-ood"][0]
    # resuming under other settings would average unlike images: refused, file untouched
    kept = (out / "consistency.json").read_bytes()
    with pytest.raises(SystemExit, match="flip_tta none"):
        bench.main(args + ["--subjects", "head_b,head_a,head_c", "--resume",
                           "--flip-tta", "lr"])
    with pytest.raises(SystemExit, match="n_images 3"):
        bench.main(args[:4] + ["--n-images", "5"] + args[6:] + ["--resume"])
    # other conditions would find no list to add the new subject's rows to
    with pytest.raises(SystemExit, match="conditions mprage-id,mprage-ood,spgr-id,spgr-ood"):
        bench.main(args + ["--subjects", "head_b,head_a,head_c", "--resume",
                           "--conditions", "spgr-id"])
    assert (out / "consistency.json").read_bytes() == kept
    # --merge: the two runs' subjects make one table without measuring anything again
    merged = tmp_path / "merged"
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(args[:-1] + [str(merged), "--subjects", "head_b,head_a",
                                "--merge", str(only_b), "--merge", str(out)])
    assert "mprage-id 1/3" not in caplog.text
    both = json.loads((out / "consistency.json").read_text(), parse_constant=_no_nan)
    again = json.loads((merged / "consistency.json").read_text(), parse_constant=_no_nan)
    for key in ("per_subject", "curves", "summary", "by_contrast"):
        assert again[key] == both[key]
    assert again["meta"]["wall_s"] > both["meta"]["wall_s"]  # only_b's run counted twice
    # refused, nothing written: a subject not asked for, other methods, another phantom
    with pytest.raises(SystemExit, match="holds head_b, not in --subjects"):
        bench.main(args[:-1] + [str(tmp_path / "x"), "--subjects", "head_a",
                                "--merge", str(only_b)])
    with pytest.raises(SystemExit, match="methods"):
        bench.main(args[:-1] + [str(tmp_path / "x"), "--subjects", "head_b", "--no-atropos",
                                "--merge", str(only_b)])
    forged = json.loads((only_b / "consistency.json").read_text())
    for per in forged["per_subject"].values():
        for rows in per.values():
            rows[0]["phantom_seed"] = 2031
    (only_b / "consistency.json").write_text(json.dumps(forged))
    with pytest.raises(SystemExit, match="phantom of head_b was seeded 2031, this run's is 2024"):
        bench.main(args[:-1] + [str(tmp_path / "x"), "--subjects", "head_b",
                                "--merge", str(only_b)])
    assert not (tmp_path / "x").exists()
    # Atropos alone (--models '') and the networks alone, merged, make the table a run of
    # all three makes: the methods measure the same images whichever run they are in, and
    # the network settings (here the window) do not bind a file that holds no network
    atropos_only, nets_only = tmp_path / "atropos_only", tmp_path / "nets_only"
    bench.main(["--data", str(label_dir), "--models", "", "--n-images", "3", "--window", "32",
                "--threads", "1", "--subjects", "head_b", "--out", str(atropos_only)])
    alone = json.loads((atropos_only / "consistency.json").read_text())
    assert list(alone["per_subject"]) == ["atropos"] and alone["meta"]["models"] == {}
    bench.main(args[:-1] + [str(nets_only), "--subjects", "head_b", "--no-atropos"])
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(args[:-1] + [str(tmp_path / "joined"), "--subjects", "head_b",
                                "--merge", str(atropos_only), "--merge", str(nets_only)])
    assert "head_b already measured (atropos)" in caplog.text
    assert "mprage-id 1/3" not in caplog.text
    joined = json.loads((tmp_path / "joined" / "consistency.json").read_text())
    for key in ("per_subject", "curves", "summary", "by_contrast"):
        assert joined[key] == first[key]
    for key in ("atropos_failures", "atropos_restarts"):
        assert joined["meta"][key] == first["meta"][key]
    # a run with the networks measures only what the Atropos file lacks, and the
    # window does bind a file that holds a network
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(args[:-1] + [str(tmp_path / "nets_added"), "--subjects", "head_b",
                                "--merge", str(atropos_only)])
    assert "head_b mprage-id 3/3" in caplog.text
    added = json.loads((tmp_path / "nets_added" / "consistency.json").read_text())
    assert added["per_subject"] == first["per_subject"]
    with pytest.raises(SystemExit, match="window 16"):
        bench.main(args[:-1] + [str(tmp_path / "y"), "--subjects", "head_b", "--window", "32",
                                "--merge", str(nets_only)])
    with pytest.raises(SystemExit, match="nothing to measure"):
        bench.main(args[:-1] + [str(tmp_path / "y"), "--models", "", "--no-atropos"])
    assert not (tmp_path / "y").exists()


def test_consistency_benchmark_n_image_run_holds_the_7_image_run(label_dir, tmp_path):
    """A 13-image run reports, as cov7_x1e3, exactly the CoV that a 7-image run with the
    same seed measures (MPRAGE: every 2nd TI; SPGR has no such subset), and --subjects
    with one test subject measures the images of that subject in a run of the whole
    test split (its phantom is seeded by its place in the split)."""
    bench = bench_script("bench_consistency")
    train(_tiny_cfg(max_steps=2, test_subjects=("head_a", "head_b")), label_dir,
          tmp_path / "phys")
    common = ["--data", str(label_dir), "--models", str(tmp_path / "phys"), "--no-atropos",
              "--conditions", "mprage-id,spgr-id", "--window", "16", "--threads", "1"]
    runs = {}
    for name, extra in (("n13", ["--n-images", "13", "--subjects", "head_b"]),
                        ("n7", ["--n-images", "7"])):
        bench.main(common + extra + ["--out", str(tmp_path / name)])
        runs[name] = json.loads((tmp_path / name / "consistency.json").read_text())
    phys = str(tmp_path / "phys")
    assert runs["n7"]["meta"]["subjects"] == ["head_a", "head_b"]
    for c in ("mprage-id", "spgr-id"):
        (row13,) = runs["n13"]["per_subject"][phys][c]
        row7 = runs["n7"]["per_subject"][phys][c][1]
        assert row13["subject"] == row7["subject"] == "head_b"
        assert "cov7_x1e3" not in row7  # a 7-image run has nothing to subsample
    row13 = runs["n13"]["per_subject"][phys]["mprage-id"][0]
    row7 = runs["n7"]["per_subject"][phys]["mprage-id"][1]
    for t in ("GM", "WM", "CSF"):
        assert row13["cov7_x1e3"][t] == pytest.approx(row7["cov_x1e3"][t], rel=1e-9)
        assert row13["cov7_x1e3"][t] != pytest.approx(row13["cov_x1e3"][t], rel=1e-6)
    assert "cov7_x1e3" not in runs["n13"]["per_subject"][phys]["spgr-id"][0]
    (c13,) = runs["n13"]["curves"][phys]["mprage-id"]
    c7 = runs["n7"]["curves"][phys]["mprage-id"][1]
    assert np.allclose(np.array(c13["ti"])[::2], c7["ti"])
    assert np.array_equal(np.array(c13["volumes"])[::2], c7["volumes"])
    assert bench.seven_of("mprage-id", 121).tolist() == list(range(0, 121, 20))
    assert bench.seven_of("mprage-id", 7) is None and bench.seven_of("mprage-ood", 10) is None
    assert bench.seven_of("spgr-ood", 121) is None
    assert "CoV of volume (x10^3) over the 7" in (tmp_path / "n13" / "consistency.md").read_text()
    # SPGR keeps every draw's parameters beside its volumes, the same draws a run of
    # every condition makes; an SPGR-only run writes no TI plot and does not fail on it
    (s13,) = runs["n13"]["curves"][phys]["spgr-id"]
    draws = bench.conditions(13, 2024)["spgr-id"][1]
    assert {"tr", "te", "fa"} <= set(s13) and len(s13["volumes"]) == 13
    assert np.allclose(s13["fa"], draws["fa"].tolist())
    bench.main(common[:5] + ["--conditions", "spgr-id", "--window", "16", "--threads", "1",
                              "--n-images", "3", "--subjects", "head_b",
                              "--out", str(tmp_path / "spgr")])
    assert (tmp_path / "spgr" / "consistency.json").exists()
    assert not (tmp_path / "spgr" / "volume_vs_ti.png").exists()
    # the SPGR draws split by contrast, from the same curves
    split = runs["n13"]["by_contrast"][phys]["spgr-id"]["head_b"]
    assert split["images"] == 13 and set(runs["n13"]["by_contrast"][phys]) == {"spgr-id"}
    spgr13 = runs["n13"]["per_subject"][phys]["spgr-id"][0]
    assert split["cov_x1e3"] == pytest.approx(spgr13["cov_x1e3"], rel=1e-9)
    assert "by WM-GM contrast" in (tmp_path / "n13" / "consistency.md").read_text()


def _one_model_consistency_args(label_dir, tmp_path, conditions: str):
    """The consistency bench, a tiny physics model trained 2 steps, and the arguments of
    a 3-image run of it on head_b under ``conditions`` (no Atropos)."""
    bench = bench_script("bench_consistency")
    train(_tiny_cfg(max_steps=2), label_dir, tmp_path / "phys")
    phys = str(tmp_path / "phys")
    return bench, phys, ["--data", str(label_dir), "--models", phys, "--no-atropos",
                         "--n-images", "3", "--conditions", conditions, "--window", "16",
                         "--threads", "1", "--subjects", "head_b"]


def test_consistency_benchmark_physics_clamp_tells_the_training_space(label_dir, tmp_path):
    """--physics-clamp tells the physics branch an acquisition of its training space:
    inside it nothing changes (MPRAGE TI 0.6-1.2 s gives the same volumes with either
    clamp), outside it the network hears other parameters (TI 0.1 and 2.0 s are told
    0.6 and 1.2 s by ``training``, the TI of nearest tissue contrast by ``contrast``:
    other soft volumes); the setting is recorded, and a file measured without it is not
    resumed with it."""
    bench, phys, common = _one_model_consistency_args(label_dir, tmp_path,
                                                      "mprage-id,mprage-ood")
    runs = {}
    for clamp in ("none", "training", "contrast"):
        bench.main(common + ["--physics-clamp", clamp, "--out", str(tmp_path / clamp)])
        runs[clamp] = json.loads((tmp_path / clamp / "consistency.json").read_text())
        assert runs[clamp]["meta"]["physics_clamp"] == clamp
    rows = {k: r["per_subject"][phys] for k, r in runs.items()}
    soft = {k: r["mprage-ood"][0]["soft_volume_error_pct"] for k, r in rows.items()}
    for clamp in ("training", "contrast"):
        assert rows[clamp]["mprage-id"] == rows["none"]["mprage-id"]
        assert soft[clamp] != soft["none"]
    assert soft["training"] != soft["contrast"]
    assert "clipped to the training space" in (tmp_path / "training" / "consistency.md").read_text()
    assert bench.told_acquisition("training", "MPRAGE", {"ti": [0.1]})["ti"] == [0.6]
    assert bench.told_acquisition("none", "MPRAGE", {"ti": [0.1]})["ti"] == [0.1]
    with pytest.raises(SystemExit, match="physics_clamp none"):
        bench.main(common + ["--physics-clamp", "training", "--resume",
                             "--out", str(tmp_path / "none")])
    # the networks' device is recorded, and subjects measured on another are not merged
    # (other rounding); a file from before it was recorded ran on the CPU
    assert runs["none"]["meta"]["device"] == "cpu"
    forged = json.loads((tmp_path / "none" / "consistency.json").read_text())
    forged["meta"]["device"] = "cuda"
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "consistency.json").write_text(json.dumps(forged))
    with pytest.raises(SystemExit, match="device cuda"):
        bench.main(common + ["--merge", str(tmp_path / "gpu"), "--out", str(tmp_path / "y")])
    # merging GPU runs measures nothing, so it needs no GPU
    bench.main(common + ["--device", "cuda", "--merge", str(tmp_path / "gpu"),
                         "--out", str(tmp_path / "z")])
    merged = json.loads((tmp_path / "z" / "consistency.json").read_text())
    assert merged["meta"]["device"] == "cuda"
    assert merged["per_subject"] == runs["none"]["per_subject"]
    assert "networks on cuda" in (tmp_path / "z" / "consistency.md").read_text()
    del forged["meta"]["device"]
    (tmp_path / "gpu" / "consistency.json").write_text(json.dumps(forged))
    bench.main(common + ["--merge", str(tmp_path / "gpu"), "--out", str(tmp_path / "y")])
    merged = json.loads((tmp_path / "y" / "consistency.json").read_text())
    assert merged["per_subject"] == runs["none"]["per_subject"]


def test_consistency_benchmark_harmonise_re_renders_what_it_can(label_dir, tmp_path):
    """--harmonise re-renders every image whose tissue curve can be inverted at the
    reference protocol and tells the network that protocol (other volumes than the run
    without it); the MPRAGE TI where tissues fold (0.42 s of 7 OOD images) is segmented
    as acquired and flagged per image; the share is recorded and printed, and a run
    without --harmonise, or with the landmark step, is not resumed with it."""
    bench, phys, common = _one_model_consistency_args(label_dir, tmp_path,
                                                      "mprage-id,mprage-ood")
    common = [a if a != "3" else "7" for a in common]  # 7 images: TI 0.1, 0.42, ..., 2.0
    runs = {}
    for name, extra in (("off", []), ("on", ["--harmonise"])):
        bench.main(common + extra + ["--out", str(tmp_path / name)])
        runs[name] = json.loads((tmp_path / name / "consistency.json").read_text())
    assert runs["off"]["meta"]["harmonise"] is False
    assert runs["off"]["meta"]["harmonised_share"] == {}
    meta = runs["on"]["meta"]
    (ood,) = runs["on"]["curves"][phys]["mprage-ood"]
    assert ood["harmonised"] == [
        bench.harmoniser_for("MPRAGE", {"ti": torch.tensor([t])}) is not None for t in ood["ti"]]
    assert ood["harmonised"][1] is False and sum(ood["harmonised"]) >= 4
    assert meta["harmonise"] == "curve" and meta["harmonised_share"] == {
        "mprage-id": 1.0, "mprage-ood": round(sum(ood["harmonised"]) / 7, 4)}
    soft = {k: r["per_subject"][phys]["mprage-id"][0]["soft_volume_error_pct"]
            for k, r in runs.items()}
    assert soft["on"] != soft["off"]
    assert "re-rendered at MPRAGE TI 0.9 s" in (tmp_path / "on" / "consistency.md").read_text()
    with pytest.raises(SystemExit, match="harmonise False"):
        bench.main(common + ["--harmonise", "--resume", "--out", str(tmp_path / "off")])
    # the opt-in landmark step is another setting: not resumed from a run without it
    with pytest.raises(SystemExit, match="harmonise curve"):
        bench.main(common + ["--harmonise", "landmarks", "--resume", "--out",
                             str(tmp_path / "on")])
    # bench/compare_harmonise.py: the CoV over the re-rendered images of each run
    compare = bench_script("compare_harmonise")
    compare.main(["--control", str(tmp_path / "off"), "--harmonised", str(tmp_path / "on"),
                  "--out", str(tmp_path / "cmp")])
    cmp = json.loads((tmp_path / "cmp" / "harmonise_vs_control.json").read_text())[phys]
    flags = np.array(ood["harmonised"])
    for run, doc in (("control", runs["off"]), ("harmonised", runs["on"])):
        (curve,) = doc["curves"][phys]["mprage-ood"]
        want = compare.cov(np.array(curve["volumes"], dtype=np.float64)[flags])
        got = cmp["mprage-ood"]["rendered"][run]["mean"]
        assert [got[t] for t in ("GM", "WM", "CSF")] == pytest.approx(want, abs=0.006)
    assert cmp["mprage-id"]["rendered"] == cmp["mprage-id"]["all"]
    assert cmp["mprage-ood"]["rendered_share"] == pytest.approx(flags.mean(), abs=1e-3)
    with pytest.raises(SystemExit, match="without --harmonise"):
        compare.main(["--control", str(tmp_path / "on"), "--harmonised", str(tmp_path / "on"),
                      "--out", str(tmp_path / "cmp")])


def test_consistency_benchmark_resume_continues_an_interrupted_subject(label_dir, tmp_path,
                                                                      monkeypatch, caplog):
    """A run stopped in the middle of a subject (Atropos: a minute per image, hours per
    subject) keeps the images it measured; --resume measures only the rest and writes
    what an uninterrupted run writes, then drops the partial file. Without --resume the
    subject is measured again; under other settings the partial file is refused."""
    bench, phys, common = _one_model_consistency_args(label_dir, tmp_path, "mprage-id")
    common = [a for a in common if a != "--no-atropos"]
    bench.main(common + ["--out", str(tmp_path / "whole")])
    whole = json.loads((tmp_path / "whole" / "consistency.json").read_text())
    assert not list((tmp_path / "whole").glob(".partial-*"))
    real, calls = bench.sliding_window_logits, []

    def stopped_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench, "sliding_window_logits", stopped_at_third)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        bench.main(common + ["--out", str(out)])
    monkeypatch.setattr(bench, "sliding_window_logits", real)
    part = json.loads((out / ".partial-head_b-mprage-id.json").read_text())
    assert [len(part["vols"][m]) for m in (phys, "atropos")] == [2, 2]
    assert not (out / "consistency.json").exists()
    kept = (out / ".partial-head_b-mprage-id.json").read_bytes()
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(common + ["--out", str(out), "--resume", "--window", "32"])
    assert (out / ".partial-head_b-mprage-id.json").read_bytes() == kept
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(common + ["--out", str(out), "--resume"])
    assert "2 of 3 images already measured" in caplog.text
    assert "head_b mprage-id 2/3" not in caplog.text and "head_b mprage-id 3/3" in caplog.text
    resumed = json.loads((out / "consistency.json").read_text())
    for key in ("per_subject", "curves", "summary"):
        assert resumed[key] == whole[key]
    for key in ("atropos_failures", "atropos_restarts"):
        assert resumed["meta"][key] == whole["meta"][key]
    assert resumed["meta"]["wall_s"] > 0
    assert not list(out.glob(".partial-*"))
    # without --resume the images are measured again (and the same)
    shutil.rmtree(out)
    monkeypatch.setattr(bench, "sliding_window_logits", stopped_at_third)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        bench.main(common + ["--out", str(out)])
    monkeypatch.setattr(bench, "sliding_window_logits", real)
    caplog.clear()
    with caplog.at_level("INFO"):
        bench.main(common + ["--out", str(out)])
    assert "measured again" in caplog.text and "head_b mprage-id 1/3" in caplog.text
    assert json.loads((out / "consistency.json").read_text())["per_subject"] == whole["per_subject"]


@pytest.mark.gpu
def test_consistency_benchmark_on_cuda_measures_what_the_cpu_does(label_dir, tmp_path):
    """--device cuda runs the networks on the GPU over the same CPU-made images: the
    volumes equal the CPU run's up to the voxels that floating-point rounding tips over
    (a tenth of a percent), and the file says where the networks ran."""
    bench, phys, common = _one_model_consistency_args(label_dir, tmp_path,
                                                      "mprage-ood,spgr-ood")
    runs = {}
    for dev in ("cpu", "cuda"):
        bench.main(common + ["--device", dev, "--out", str(tmp_path / dev)])
        runs[dev] = json.loads((tmp_path / dev / "consistency.json").read_text())
    assert runs["cuda"]["meta"]["device"] == "cuda"
    assert "networks on cuda" in (tmp_path / "cuda" / "consistency.md").read_text()
    for c in ("mprage-ood", "spgr-ood"):
        (cpu,), (gpu,) = (runs[d]["curves"][phys][c] for d in ("cpu", "cuda"))
        a, b = np.array(cpu["volumes"], float), np.array(gpu["volumes"], float)
        assert a.sum() > 0 and np.abs(a - b).max() <= max(3.0, 1e-3 * a.max())


def test_spgr_draws_are_split_by_their_wm_gm_contrast():
    """The benchmark's contrast split: the WM-GM contrast of an SPGR draw falls with the
    flip angle (PD weighting: GM, with more water, catches up with WM), and the CoV
    without the lowest-contrast quarter is that of the other draws, so volumes that move
    only in low-contrast draws give a small CoV there and a large one within the quarter."""
    bench = bench_script("bench_consistency")
    fa = np.linspace(15.0, 75.0, 8)
    c = wm_gm_contrast("SPGR", {"tr": [0.05] * 8, "te": [0.005] * 8, "fa": fa.tolist()})
    assert np.all(np.diff(c) > 0) and c[0] < 0.05 < 0.15 < c[-1]
    vols = np.tile([600e3, 400e3, 350e3], (8, 1))
    vols[:2] *= [[1.3, 0.8, 0.7], [1.2, 0.85, 0.8]]  # the two lowest flip angles move
    vols[2:] *= 1 + 0.001 * np.arange(6)[:, None]
    curves = {"m": {"spgr-id": [{"tr": [0.05] * 8, "te": [0.005] * 8, "fa": fa.tolist(),
                                 "volumes": vols.tolist(), "subject": "s"}],
                    "mprage-id": [{"ti": [0.9], "volumes": [[1, 1, 1]], "subject": "s"}]}}
    r = bench.contrast_split(curves)["m"]["spgr-id"]["s"]
    assert list(bench.contrast_split(curves)["m"]) == ["spgr-id"]
    rest = vols[2:]
    gm = rest[:, 0]
    assert r["cov_without_low_x1e3"]["GM"] == pytest.approx(1e3 * gm.std() / gm.mean())
    assert r["cov_without_low_x1e3"]["WM"] < 3 < 50 < r["cov_x1e3"]["WM"]
    low = np.array([0.8, 0.85])
    assert r["cov_low_x1e3"]["WM"] == pytest.approx(1e3 * low.std() / low.mean())
    assert r["low_contrast_range"] == pytest.approx([c[0], c[1]])
    # the draws the application does not flag
    from phys_bids.workflows.acquisition import LOW_CONTRAST_SPGR

    kept = vols[c >= LOW_CONTRAST_SPGR]
    assert r["unflagged"] == len(kept) and 2 <= len(kept) < 8
    assert r["cov_unflagged_x1e3"]["WM"] == pytest.approx(1e3 * kept[:, 1].std()
                                                          / kept[:, 1].mean())
    md = bench.contrast_markdown(bench.contrast_split(curves))
    assert "| m | spgr-id | s |" in md
    # the deviation from the median by contrast bin: the evidence for the application's flag
    bins = r["bins"]
    assert sum(b["images"] for b in bins) == 8
    dev = 100 * (vols / np.median(vols, 0) - 1)
    for b in bins:
        lo, hi = (-np.inf if b["contrast"][0] is None else b["contrast"][0],
                  np.inf if b["contrast"][1] is None else b["contrast"][1])
        k = (c >= lo) & (c < hi)
        assert b["images"] == k.sum() >= 1
        assert b["max_abs_dev_pct"]["GM"] == pytest.approx(np.abs(dev[k, 0]).max())
        assert b["mean_dev_pct"]["CSF"] == pytest.approx(dev[k, 2].mean())
    assert bins[0]["contrast"][1] <= 0.05 and bins[0]["max_abs_dev_pct"]["GM"] > 15
    assert bins[-1]["contrast"][1] is None and bins[-1]["max_abs_dev_pct"]["WM"] < 1.0
    assert md.count("| m | spgr-id | s | ") == 1 + len(bins)


def test_a_log_contrast_model_trains_and_loads_with_its_input_transform(label_dir, tmp_path):
    m = train(_tiny_cfg(max_steps=2, norm="none", input_transform="log-contrast"), label_dir,
              tmp_path / "lc")
    assert m["architecture"]["args"]["input_transform"] == "log-contrast"
    model = load_model(tmp_path / "lc")
    assert model.network.log_input
    # the application's mask is the network's brain even where the image is not positive
    from phys_bids.models.segment import network_input

    rng = np.random.default_rng(1)
    image = rng.uniform(0.5, 1.5, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[4:16, 4:16, 4:16] = True
    image[8, 8, 8], image[9, 9, 9] = 0.0, -0.2
    box, x, m, _ = network_input(model, image, mask, "MPRAGE", {"ti": 0.9, "tr": 2.3,
                                                                 "te": 0.003, "fa": 9.0})
    assert torch.equal(x[0, 0] > 0, m) and int(m.sum()) == 12 ** 3


def test_a_contrast_encoded_model_trains_and_loads_with_its_encoder(label_dir, tmp_path):
    m = train(_tiny_cfg(physics_encoding="contrast", max_steps=2), label_dir, tmp_path / "k")
    assert m["physics_encoder"]["mode"] == "contrast"
    loaded = load_model(tmp_path / "k")
    assert loaded.encoder.mode == "contrast" and loaded.encoder.dim == 3
    assert loaded.network.config["physics_dim"] == 3
    # the physics reaches the output: two acquisitions, two answers
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = loaded.network(x, loaded.encoder.encode("MPRAGE", {"ti": [0.7]}))[0]
        b = loaded.network(x, loaded.encoder.encode("SPGR", {"tr": [0.2], "te": [0.02],
                                                             "fa": [5.0]}))[0]
    assert float((a - b).abs().max()) > 1e-4


def test_monte_carlo_sampling_never_blanks_the_image():
    # Dropout3d on a one-channel input (the shipped models' input dropout) zeroes the
    # whole image: in Monte-Carlo sampling it stays off, the feature dropouts stay on
    net = tiny(10, dropout=0.0, input_dropout=0.9)
    assert net.input_dropout_blanks and isinstance(net.input_dropout, torch.nn.Dropout3d)
    x, p = torch.rand(1, 1, 16, 16, 16) + 0.5, torch.zeros(1, 10)
    with torch.no_grad():
        ref = net.eval()(x, p)[0]
        enable_mc_dropout(net)
        assert not net.input_dropout.training
        torch.manual_seed(0)
        assert all(torch.equal(net(x, p)[0], ref) for _ in range(5))
        # voxel mode (the papers' input-layer dropout): drops ~p of the voxels, never all
        vnet = tiny(10, dropout=0.0, input_dropout=0.3, input_dropout_mode="voxel")
        assert not vnet.input_dropout_blanks and vnet.config["input_dropout_mode"] == "voxel"
        enable_mc_dropout(vnet)
        assert vnet.input_dropout.training
        kept = [float((vnet.input_dropout(x) > 0).float().mean()) for _ in range(5)]
        assert all(0.6 < k < 0.8 for k in kept), kept
        assert not torch.equal(vnet(x, p)[0], vnet(x, p)[0])
    # the shipped models' manifests do not name the mode: they load as "channel"
    assert "input_dropout_mode" not in tiny(10).config
    with pytest.raises(ValueError, match="input_dropout_mode"):
        tiny(10, input_dropout_mode="pixel")


def test_channels_last_training_is_deterministic_and_loads_as_usual(label_dir, tmp_path):
    cfg = _tiny_cfg(channels_last=True, input_dropout_mode="voxel")
    m = train(cfg, label_dir, tmp_path / "cl")
    assert m["architecture"]["args"]["input_dropout_mode"] == "voxel"
    assert m["train_config"]["channels_last"] is True
    # the weights on disk are in the ordinary layout and load into an ordinary network
    state = torch.load(tmp_path / "cl" / "weights.pt", weights_only=True)
    assert all(v.is_contiguous() for v in state.values())
    loaded = load_model(tmp_path / "cl")
    assert isinstance(loaded.network.input_dropout, torch.nn.Dropout)
    # same seed, same weights; resuming continues the same run
    assert train(cfg, label_dir, tmp_path / "again")["weights_sha256"] == m["weights_sha256"]
    train(_tiny_cfg(channels_last=True, input_dropout_mode="voxel", max_steps=2), label_dir,
          tmp_path / "split")
    resumed = train(cfg, label_dir, tmp_path / "split")
    assert resumed["history"]["resumed_at"] == [2]
    assert resumed["history"]["loss"] == m["history"]["loss"]


def test_weight_averaging_ships_the_average_and_leaves_training_unchanged(label_dir, tmp_path):
    # the same run with and without the moving average: the trajectory (losses, last
    # weights) is identical, and weights.pt holds the average of the last weights.
    # A constant learning rate makes a shorter run the first steps of a longer one.
    def cfg_(**kw):
        return _tiny_cfg(lr=1e-3, min_lr=1e-3, warmup=0, **kw)

    plain = train(cfg_(max_steps=5), label_dir, tmp_path / "plain")
    cfg = cfg_(max_steps=5, ema_decay=0.5, ema_from_step=3)
    m = train(cfg, label_dir, tmp_path / "ema")
    assert m["history"]["loss"] == plain["history"]["loss"]
    ck = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=False)
    last = torch.load(tmp_path / "plain" / "weights.pt", weights_only=True)
    assert all(torch.equal(ck["model"][k], last[k]) for k in last)
    # the average by hand from the weights after steps 3, 4, 5 (runs stopped there)
    w = {}
    for s in (3, 4):
        train(cfg_(max_steps=s), label_dir, tmp_path / f"s{s}")
        w[s] = torch.load(tmp_path / f"s{s}" / "weights.pt", weights_only=True)
    w[5] = last
    shipped = torch.load(tmp_path / "ema" / "weights.pt", weights_only=True)
    k = next(k for k, v in shipped.items() if v.is_floating_point() and v.numel() > 1)
    expected = 0.25 * w[3][k] + 0.25 * w[4][k] + 0.5 * w[5][k]
    assert torch.allclose(shipped[k], expected, atol=1e-6)
    assert not torch.equal(shipped[k], w[5][k])
    assert m["weights_sha256"] != plain["weights_sha256"]
    assert m["weight_averaging"]["decay"] == 0.5
    # validation scores the average; the last weights' scores are kept beside it
    assert [v["step"] for v in m["history"]["val_raw"]] == [4, 5]
    assert m["history"]["val_raw"][-1]["dice_mean"] == plain["history"]["val"][-1]["dice_mean"]
    assert m["validation"] == m["history"]["val"][-1]
    loaded = load_model(tmp_path / "ema")
    assert loaded.manifest["weights_sha256"] == m["weights_sha256"]
    # resuming (at step 2, before the average starts, and at 4, inside it) is bit for bit
    for stop in (2, 4):
        train(cfg_(max_steps=stop, ema_decay=0.5, ema_from_step=3), label_dir,
              tmp_path / f"r{stop}")
        r = train(cfg, label_dir, tmp_path / f"r{stop}")
        assert r["weights_sha256"] == m["weights_sha256"] and r["history"]["resumed_at"] == [stop]
    with pytest.raises(ValueError, match="ema_decay"):
        _tiny_cfg(ema_decay=1.0)


def test_resuming_on_other_label_maps_warns(label_dir, tmp_path, caplog):
    train(_tiny_cfg(max_steps=2), label_dir, tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(label_dir / "head_a.nii.gz", other / "head_a.nii.gz")
    write_phantom(other / "head_b.nii.gz", 40, 7)  # not the map the run started on
    with caplog.at_level(logging.WARNING, logger="phys_bids.train"):
        train(_tiny_cfg(max_steps=3), other, tmp_path / "run")
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("head_b" in m and "head_a" not in m for m in msgs), msgs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phys_bids.train"):
        train(_tiny_cfg(max_steps=4), other, tmp_path / "run")  # same maps as last time
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_config_extends_another_and_names_only_what_it_changes(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(
        {"name": "base", "max_steps": 10, "aligned_from_step": 5,
         "synth": {"pv_sigma": 1.5, "snr": [15, 80]}}))
    (tmp_path / "arm.json").write_text(json.dumps(
        {"extends": "base.json", "name": "arm", "aligned_from_step": None,
         "synth": {"pv_sigma": 3.0}}))
    cfg = TrainConfig.from_json(tmp_path / "arm.json")
    assert cfg.name == "arm" and cfg.max_steps == 10 and cfg.aligned_from_step is None
    assert cfg.synth == {"pv_sigma": 3.0, "snr": [15, 80]}  # synth merged key by key
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(ValueError, match="cycle"):
        TrainConfig.from_json(tmp_path / "a.json")


def test_every_training_config_resolves():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "training" / "configs"
    if not folder.is_dir():
        pytest.skip(f"{folder} not in this checkout (installed package only)")
    names = set()
    for path in sorted(folder.glob("*.json")):
        cfg = TrainConfig.from_json(path)
        assert cfg.name == path.stem, path  # the documented commands find it by name
        names.add(cfg.name)
    # training/ holds the configurations of the shipped models, and only those
    shipped = {d.name for d in (folder.parents[1] / "phys_bids" / "data" / "models").iterdir()
               if (d / "manifest.json").is_file()}
    assert names == shipped

