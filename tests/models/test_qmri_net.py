"""The qMRI estimator: output transform, losses (incl. physics consistency), metrics,
training through the common workflow, and the registry's separation of model kinds."""

import pytest
import torch

from phys_bids.models.qmri_net import (
    MAP_REF,
    MT_MAX,
    qmri_loss,
    qmri_metrics,
    raw_to_maps,
    resimulate,
)
from phys_bids.models.registry import available_models, load_model
from phys_bids.models.training import train
from phys_bids.physics.tissues import label_to_class
from phys_bids.synth import SynthConfig, SynthGenerator
from phys_bids.synth.generator import Head
from phys_bids.synth.phantom import phantom_labels

from .test_network import _tiny_cfg, label_dir  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def batch():
    heads = [Head("p0", label_to_class(phantom_labels(48, 0)))]
    gen = SynthGenerator(heads, SynthConfig(patch=24, realisations=3, blur_probability=0.0))
    return gen.sample(torch.Generator().manual_seed(3), sequence="SPGR")


def _inverse(maps: torch.Tensor) -> torch.Tensor:
    """Raw outputs that reproduce ``maps`` exactly (inverse of raw_to_maps)."""
    ref = torch.tensor(MAP_REF).reshape(1, 3, 1, 1, 1)
    pos = torch.log(maps[:, :3].clamp_min(1e-6) / ref)
    mt = torch.logit((maps[:, 3:] / MT_MAX).clamp(1e-6, 1 - 1e-6))
    return torch.cat([pos, mt], 1)


def test_output_transform_is_positive_and_bounded():
    raw = torch.randn(2, 4, 5, 5, 5) * 10
    maps = raw_to_maps(raw)
    assert (maps[:, :3] > 0).all() and (maps[:, 3] >= 0).all() and (maps[:, 3] <= MT_MAX).all()
    assert torch.allclose(raw_to_maps(torch.zeros(1, 4, 1, 1, 1)).flatten(),
                          torch.tensor([*MAP_REF, MT_MAX / 2]))


def test_generator_gives_true_maps_in_the_priors_range(batch):
    maps, mask = batch["maps"], batch["mask"]
    assert maps.shape == (4, 24, 24, 24)
    r1 = maps[1][mask]
    assert 0.2 < float(r1.min()) and float(r1.max()) < 1.5  # brain R1 at 3 T, 1/s
    assert torch.equal(batch["r1"], maps[1])
    pd = maps[0][mask]
    assert 0.6 < float(pd.mean()) < 1.0


def test_true_maps_give_zero_map_loss_and_small_consistency(batch):
    n = batch["image"].shape[0]
    raw = _inverse(batch["maps"][None].expand(n, -1, -1, -1, -1))
    loss, parts = qmri_loss(raw, batch["maps"], batch["mask"], batch["image"], batch["sequence"],
                            batch["params"])
    assert parts["l1"] < 1e-4 and parts["l2"] < 1e-6 and parts["grad"] < 1e-4
    # the input has noise, bias and transmit fields: consistency is small, not zero
    assert parts["consistency"] < 0.25
    # wrong maps (R1 without its contrast: one value in the brain) cost more in every term
    # (a global R1 scale barely changes a mean-normalised image: the maps term guards that)
    wrong = batch["maps"].clone()
    wrong[1] = wrong[1][batch["mask"]].mean()
    raw_w = _inverse(wrong[None].expand(n, -1, -1, -1, -1))
    _, pw = qmri_loss(raw_w, batch["maps"], batch["mask"], batch["image"], batch["sequence"],
                      batch["params"])
    assert pw["l1"] > 10 * parts["l1"] + 0.05 and pw["consistency"] > parts["consistency"]


def test_resimulation_follows_the_signal_equation(batch):
    from phys_bids.physics.simulate import SEQUENCES

    maps = batch["maps"][None].expand(3, -1, -1, -1, -1)
    sim = resimulate(maps, "SPGR", batch["params"])
    p = {k: v[0].item() for k, v in batch["params"].items()}
    direct = SEQUENCES["SPGR"].function(*(batch["maps"][i] for i in range(4)), **p).abs()
    assert torch.allclose(sim[0], direct, rtol=1e-5, atol=1e-7)


def test_metrics_perfect_and_degraded(batch):
    m = batch["maps"][None]
    perfect = qmri_metrics(m, batch["maps"], batch["mask"])
    assert all(v["nrmse"] < 1e-6 and v["ssim"] > 0.999 for v in perfect.values())
    noisy = qmri_metrics(m * 1.1, batch["maps"], batch["mask"])
    assert all(v["nrmse"] > 0.01 and v["psnr_db"] < perfect[k]["psnr_db"]
               for k, v in noisy.items())


def test_qmri_training_writes_a_qmri_manifest_kept_apart_from_segmentation(
        label_dir, tmp_path):  # noqa: F811
    cfg = _tiny_cfg(name="tiny-qmri", task="qmri", dropout=0.0, input_dropout=0.0)
    m = train(cfg, label_dir, tmp_path / "tiny-qmri")
    assert m["kind"] == "qmri" and m["steps"] == 4 and "labels" not in m
    assert list(m["maps"]) == ["PD", "R1", "R2star", "MT"]
    assert m["validation"]["maps"]["R1"]["nrmse"] > 0 and "r1_cov_x1e3" in m["validation"]
    assert not m["architecture"]["args"]["aleatoric"]
    assert all(k in m["history"] for k in ("l1", "l2", "grad", "consistency", "strat"))
    train(_tiny_cfg(max_steps=2), label_dir, tmp_path / "tiny-seg")
    assert available_models(tmp_path) == ["tiny-seg"]
    assert available_models(tmp_path, kind="qmri") == ["tiny-qmri"]
    assert available_models(tmp_path, kind=None) == ["tiny-qmri", "tiny-seg"]
    net = load_model(tmp_path / "tiny-qmri").network
    assert net.config["n_classes"] == 4 and net.sigma_head is None
