import pytest
import torch

from phys_bids.physics import SPACES, PhysicsEncoder, in_training_space, simulate
from phys_bids.physics.noise import bias_field, noise_sigma, rician_noise


def test_samplers_are_seeded_and_inside_their_bounds():
    for name, space in SPACES.items():
        a = space.sample(500, generator=torch.Generator().manual_seed(3))
        b = space.sample(500, generator=torch.Generator().manual_seed(3))
        for k in a:
            assert torch.equal(a[k], b[k]), name
        if space.name.startswith(("mprage", "spgr")):
            assert space.contains(a), name


def test_training_space_query_names_the_offending_parameter():
    assert in_training_space("SPGR", {"tr": 0.05, "te": 0.005, "fa": 30}) == (True, [])
    assert in_training_space("SPGR", {"tr": 0.05, "te": 0.005, "fa": 85}) == (False, ["fa"])
    assert in_training_space("MPRAGE", {"ti": 0.5}) == (False, ["ti"])
    assert in_training_space("FLAIR", {"ti": 2.5}) == (False, ["sequence"])
    # out-of-distribution spaces contain the training spaces
    idd = SPACES["spgr-id"].sample(100, generator=torch.Generator().manual_seed(0))
    assert SPACES["spgr-ood"].contains(idd)
    assert SPACES["spgr-id"].within(SPACES["spgr-ood"])
    assert SPACES["spgr-id-lowfa"].within(SPACES["spgr-id"])
    assert not SPACES["spgr-ood"].within(SPACES["spgr-id"])
    assert not SPACES["mprage-id"].within(SPACES["spgr-ood"])  # other parameters


def test_encoder_standardises_in_distribution_features():
    enc = PhysicsEncoder()
    for seq in ("MPRAGE", "SPGR"):
        p = SPACES[enc.spaces[seq]].sample(20000, generator=torch.Generator().manual_seed(1))
        x = enc.encode(seq, p, dtype=torch.float64)
        o = enc.offsets[seq]
        k = o + (2 if seq == "MPRAGE" else 6)
        assert torch.allclose(x[:, o:k].mean(0), torch.zeros(k - o, dtype=torch.float64), atol=0.03)
        assert torch.allclose(x[:, o:k].std(0), torch.ones(k - o, dtype=torch.float64), atol=0.03)
        assert bool((x[:, enc.sequences.index(seq)] == 1).all())
        others = [i for i in range(enc.dim) if not (o <= i < k) and i != enc.sequences.index(seq)]
        assert bool((x[:, others] == 0).all())


def test_simulate_chunked_equals_single_pass():
    g = torch.Generator().manual_seed(0)
    shape = (40, 40, 50)
    maps = {"pd": torch.rand(shape, generator=g), "r1": torch.rand(shape, generator=g) + 0.2,
            "r2s": torch.rand(shape, generator=g) * 30}
    p = SPACES["spgr-ood"].sample(3, generator=g)
    a = simulate("SPGR", maps, p, chunk=10**9)
    b = simulate("SPGR", maps, p, chunk=4096)
    assert a.shape == (3, 40, 40, 50)
    assert torch.equal(a, b)


def test_rician_noise_has_requested_snr_and_is_seeded():
    s = torch.full((200000,), 10.0)
    sigma = noise_sigma(s, 20.0)
    n1 = rician_noise(s, sigma, generator=torch.Generator().manual_seed(5))
    n2 = rician_noise(s, sigma, generator=torch.Generator().manual_seed(5))
    assert torch.equal(n1, n2)
    assert abs(float(n1.std()) - 0.5) < 0.01  # high SNR: Rician ~ Gaussian with sigma = 10/20
    zero = rician_noise(torch.zeros(200000), 1.0, generator=torch.Generator().manual_seed(6))
    assert abs(float(zero.mean()) - (torch.pi / 2) ** 0.5) < 0.01  # Rayleigh mean


def test_bias_field_is_smooth_positive_and_seeded():
    f = bias_field((32, 32, 32), strength=0.3, generator=torch.Generator().manual_seed(2))
    assert f.shape == (1, 32, 32, 32) and bool((f > 0).all())
    assert float((f[:, 1:] / f[:, :-1]).log().abs().max()) < 0.15  # ~10 voxels between nodes
    g = bias_field((32, 32, 32), strength=0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(f, g)


def test_physics_layer_imports_nothing_above_it():
    import ast
    import pathlib

    import phys_bids.physics as ph

    for f in pathlib.Path(ph.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                raise AssertionError(f"{f.name} imports from a higher layer: {node.module}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                mod = getattr(node, "module", None) or ""
                names = [a.name for a in node.names]
                assert not any(n.startswith("phys_bids.") and not n.startswith(
                    "phys_bids.physics") for n in [mod, *names]), f.name


@pytest.mark.slow
def test_compiled_backend_matches_eager():
    g = torch.Generator().manual_seed(0)
    maps = {"pd": torch.rand(32, 32, 32, generator=g), "r1": torch.rand(32, 32, 32, generator=g)
            + 0.2, "r2s": torch.rand(32, 32, 32, generator=g) * 30}
    p = SPACES["spgr-ood"].sample(3, generator=g, dtype=torch.float32)
    eager = simulate("SPGR", maps, p)
    compiled = simulate("SPGR", maps, p, backend="compile")
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-7)


def _contrast_encoder():
    from phys_bids.physics.tissues import reference_tissues

    return PhysicsEncoder(mode="contrast", tissues=reference_tissues(3.0))


def test_contrast_encoding_gives_the_tissue_levels_an_acquisition_produces():
    enc = _contrast_encoder()
    assert enc.dim == 3
    # static MPRAGE inside the training TI range: T1-weighted, WM > GM > CSF
    lv = enc.levels("MPRAGE", {"ti": torch.tensor([0.6, 0.9, 1.2])})
    assert bool((lv[:, 1] > lv[:, 0]).all() and (lv[:, 0] > lv[:, 2]).all())
    # a long-TR, low-angle, long-TE SPGR is PD/T2*-weighted: CSF > GM > WM
    pd = enc.levels("SPGR", {"tr": 0.2, "te": 0.02, "fa": 5.0})[0]
    assert float(pd[2]) > float(pd[0]) > float(pd[1])
    # the levels are relative to their brain-weighted mean
    w = torch.tensor([0.45, 0.35, 0.20], dtype=torch.float64)
    assert torch.allclose((lv * w).sum(1), torch.ones(3, dtype=torch.float64))
    # the fixed parameters of the training space fill in; parameters the sequence
    # does not take are ignored
    full = enc.encode("MPRAGE", {"ti": [0.9], "td": [0.6], "tau": [0.010], "tr": [2.3]})
    assert torch.equal(full, enc.encode("MPRAGE", {"ti": [0.9]}))
    assert not torch.equal(full, enc.encode("MPRAGE", {"ti": [0.9], "td": [0.3]}))
    with pytest.raises(KeyError, match="'te'"):
        enc.encode("SPGR", {"tr": 0.02, "fa": 20.0})


def test_contrast_encoding_is_centred_and_scaled_over_the_training_spaces_and_frozen():
    enc = _contrast_encoder()
    g = torch.Generator().manual_seed(4)
    feats = [enc.encode(s, SPACES[enc.spaces[s]].sample(20000, generator=g),
                        dtype=torch.float64) for s in ("MPRAGE", "SPGR")]
    mean = (feats[0].mean(0) + feats[1].mean(0)) / 2
    msq = ((feats[0] ** 2).mean(0) + (feats[1] ** 2).mean(0)) / 2
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=0.03)
    var = msq - mean ** 2  # one scale shared by the three levels: mean variance 1
    assert abs(float(var.mean()) - 1.0) < 0.05 and float(var[0]) < 0.3 < float(var[1])
    # a manifest's description rebuilds the same encoder; the default one is unchanged
    again = PhysicsEncoder.from_dict(enc.to_dict())
    p = {"tr": [0.03], "te": [0.005], "fa": [30.0]}
    assert torch.equal(again.encode("SPGR", p), enc.encode("SPGR", p))
    assert PhysicsEncoder.from_dict(PhysicsEncoder().to_dict()).dim == 10
    with pytest.raises(ValueError, match="tissues"):
        PhysicsEncoder(mode="contrast")
    with pytest.raises(ValueError, match="unknown physics encoding"):
        PhysicsEncoder(mode="sequence")


def test_encoding_benchmark_reports_both_encodings(tmp_path):
    import json

    from ..scripts import bench_script

    bench = bench_script("bench_encoding")
    bench.main(["--out", str(tmp_path), "--n-train", "300", "--n-test", "200"])
    res = json.loads((tmp_path / "encoding.json").read_text())["distances"]
    assert set(res) == {"parameters", "contrast"}
    for enc in res.values():
        assert enc["mprage-id"]["p90"] < 0.05  # the training space is (nearly) its own
        assert enc["mprage-ood"]["median"] <= enc["mprage-ood"]["p90"] <= enc["mprage-ood"]["max"]
    # SPGR out of distribution mostly produces contrasts the training already holds
    assert res["contrast"]["spgr-ood"]["median"] < 0.25 * res["parameters"]["spgr-ood"]["median"]
    assert "| contrast |" in (tmp_path / "encoding.md").read_text()


def test_out_of_distribution_acquisitions_are_told_a_training_one():
    """The two ways to tell a physics branch a training acquisition instead of an
    out-of-distribution one. Clipping (``ParameterSpace.clamp``) leaves in-space values
    and lands every parameter on its range; the nearest-contrast acquisition lies inside
    the training space, leaves in-space sets unchanged, and its reference-tissue levels
    are at least as close to the drawn acquisition's as the clipped one's (up to the
    grid's resolution)."""
    from phys_bids.models.evaluation import conditions
    from phys_bids.physics.tissues import nearest_training_acquisition, reference_tissues

    space = SPACES["spgr-id"]
    _, drawn = conditions(7, 2024)["spgr-ood"]
    drawn = {k: v.tolist() for k, v in drawn.items()}
    clipped = space.clamp(drawn)
    near = nearest_training_acquisition("SPGR", drawn)
    for i in range(7):
        for told in (clipped, near):
            assert space.contains({k: told[k][i] for k in ("tr", "te", "fa")})
        for k in ("tr", "te", "fa"):
            lo, hi = space.params[k].bounds
            if lo <= drawn[k][i] <= hi:
                assert clipped[k][i] == drawn[k][i]
    enc = PhysicsEncoder(("SPGR",), mode="contrast", tissues=reference_tissues(3.0))
    lv = {n: enc.levels("SPGR", p) for n, p in (("drawn", drawn), ("clipped", clipped),
                                                 ("near", near))}
    d_near = (lv["near"] - lv["drawn"]).norm(dim=1)
    d_clip = (lv["clipped"] - lv["drawn"]).norm(dim=1)
    assert bool((d_near <= d_clip + 0.02).all()) and float(d_near.sum()) < float(d_clip.sum())
    inside = space.sample(5, generator=torch.Generator().manual_seed(1))
    inside = {k: inside[k].tolist() for k in ("tr", "te", "fa")}
    assert nearest_training_acquisition("SPGR", inside) == inside
    assert space.clamp(inside) == inside
