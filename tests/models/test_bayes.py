"""The physics-tied Bayesian segmentation on small phantoms whose tissue fractions are
known from their geometry (computed here, independently of the code under test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phys_bids.models.bayes import PURE, bayes_segment, tissue_signals
from phys_bids.physics import simulate
from phys_bids.physics.simulate import SEQUENCES
from phys_bids.physics.tissues import priors_at

SIZE = 36
SUPER = 4


def _fractions():
    """Concentric shells on a 36^3 grid: WM core (r < 7), GM shell (7-11), CSF beyond,
    inside a brain mask of the voxels whose centre lies within r = 14; each voxel's
    fractions by 4x super-sampling (partial volume at every tissue border). Returns
    (3, X, Y, Z) GM, WM, CSF fractions (zero outside the mask) and the mask."""
    n = SIZE * SUPER
    c = (np.arange(n) + 0.5) / SUPER - SIZE / 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    fine = np.stack([(r >= 7) & (r < 11), r < 7, r >= 11]).astype(np.float32)
    frac = fine.reshape(3, SIZE, SUPER, SIZE, SUPER, SIZE, SUPER).mean((2, 4, 6))
    cc = np.arange(SIZE) + 0.5 - SIZE / 2
    mask = np.sqrt(cc[:, None, None] ** 2 + cc[None, :, None] ** 2
                   + cc[None, None, :] ** 2) < 14
    return frac * mask, mask


FRAC, MASK = _fractions()
TRUE_ML = {t: float(FRAC[k].sum()) / 1000 for k, t in enumerate(("GM", "WM", "CSF"))}


def _image(sequence, params, gain=1000.0, snr=None, seed=0):
    """The phantom imaged by the signal equation at the prior tissue means: each voxel
    the fraction-weighted mix of the pure tissues' signals (cortical GM for GM)."""
    pri = priors_at(3.0)
    maps = {k: torch.tensor([pri[c][k].mean for c in ("gm_cortex", "wm", "csf")],
                            dtype=torch.float64) for k in ("pd", "r1", "r2s", "mt")}
    need = SEQUENCES[sequence].maps
    s = simulate(sequence, {k: v for k, v in maps.items() if k in need},
                 {k: torch.tensor([v], dtype=torch.float64) for k, v in params.items()})[0]
    img = gain * np.tensordot(s.numpy(), FRAC, axes=1)
    if snr:
        rng = np.random.default_rng(seed)
        img = img + rng.normal(0, gain * float(s.mean()) / snr, img.shape)
    return (img * MASK).astype(np.float32)


ACQ = [("MPRAGE", {"ti": 0.6}), ("MPRAGE", {"ti": 0.9}), ("MPRAGE", {"ti": 1.2}),
       ("SPGR", {"tr": 0.02, "te": 0.005, "fa": 25.0}),
       ("SPGR", {"tr": 0.03, "te": 0.004, "fa": 40.0})]


def test_tissue_signals_follow_the_sequence():
    s, sd = tissue_signals("MPRAGE", {"ti": 0.9})
    names = [p[0] for p in PURE]
    assert s[names.index("csf")] < s[names.index("gm")] < s[names.index("wm")]
    assert np.all(sd > 0) and np.all(sd < s)
    # a proton-density weighted SPGR (small flip angle) inverts GM and WM
    s, _ = tissue_signals("SPGR", {"tr": 0.02, "te": 0.005, "fa": 5.0})
    assert s[names.index("gm")] > s[names.index("wm")]


@pytest.mark.parametrize(("sequence", "params"), ACQ)
def test_volumes_of_a_partial_volume_phantom_without_spatial_prior(sequence, params):
    """Noise-free, flat prior: the unmixing in signal space alone reads each tissue
    within 3 % of the geometry's volume, whatever the contrast (measured: within 2.7 %)."""
    res = bayes_segment(_image(sequence, params), MASK, sequence, params, mrf_beta=0.0)
    for t, v in TRUE_ML.items():
        assert res.volumes_ml[t] == pytest.approx(v, rel=0.03), (t, res.volumes_ml)


def test_volumes_do_not_move_with_the_protocol():
    vols = np.array([[bayes_segment(_image(q, p, snr=40, seed=i), MASK, q, p,
                                    mrf_beta=0.0).volumes_ml[t] for t in TRUE_ML]
                     for i, (q, p) in enumerate(ACQ)])
    cov_x1e3 = 1000 * vols.std(0, ddof=1) / vols.mean(0)
    assert np.all(cov_x1e3 < 15), cov_x1e3


def test_a_half_and_half_voxel_is_read_as_half_and_half():
    s, _ = tissue_signals("MPRAGE", {"ti": 0.9})
    img = _image("MPRAGE", {"ti": 0.9})
    gain = 1000.0
    # a block of voxels whose signal is the mean of cortical GM and WM
    names = [p[0] for p in PURE]
    mid = gain * 0.5 * (s[names.index("gm")] + s[names.index("wm")])
    img[16:20, 16:20, 16:20] = mid
    res = bayes_segment(img, MASK, "MPRAGE", {"ti": 0.9}, mrf_beta=0.0)
    gm = res.fractions[0][16:20, 16:20, 16:20]
    assert float(gm.mean()) == pytest.approx(0.5, abs=0.1)


def test_where_the_acquisition_gives_no_contrast_the_spatial_prior_decides():
    """An SPGR protocol at which GM and WM have (nearly) the same signal: with a flat
    prior GM and WM cannot be told apart; with a spatial prior (the geometry blurred
    by 2 voxels, the same for every acquisition) they are read within 5 %."""
    from scipy.ndimage import gaussian_filter

    flat = None
    for fa in np.linspace(5, 40, 71):  # the flip angle where GM meets WM
        s, _ = tissue_signals("SPGR", {"tr": 0.02, "te": 0.005, "fa": float(fa)})
        if abs(s[1] - s[3]) / s[3] < 0.01:
            flat = float(fa)
            break
    assert flat is not None
    params = {"tr": 0.02, "te": 0.005, "fa": flat}
    img = _image("SPGR", params, snr=40)
    prior = np.stack([gaussian_filter(FRAC[k], 2.0) for k in range(3)])
    res = bayes_segment(img, MASK, "SPGR", params, prior=prior)
    assert res.cnr["GM-WM"] < 1.0
    for t in ("GM", "WM"):
        assert res.volumes_ml[t] == pytest.approx(TRUE_ML[t], rel=0.05), res.volumes_ml


def test_posterior_sd_grows_when_the_contrast_goes():
    high = bayes_segment(_image("MPRAGE", {"ti": 0.9}, snr=40), MASK, "MPRAGE",
                         {"ti": 0.9}, mrf_beta=0.0)
    assert high.cnr["GM-WM"] > 3
    params = {"tr": 0.02, "te": 0.005, "fa": 12.0}
    low = bayes_segment(_image("SPGR", params, snr=40), MASK, "SPGR", params, mrf_beta=0.0)
    assert low.cnr["GM-WM"] < high.cnr["GM-WM"]
    assert low.volume_sd_ml["GM"] > high.volume_sd_ml["GM"] > 0


def test_the_gain_is_found_and_the_result_is_deterministic():
    img = _image("MPRAGE", {"ti": 0.9}, gain=3217.0)
    a = bayes_segment(img, MASK, "MPRAGE", {"ti": 0.9})
    b = bayes_segment(img, MASK, "MPRAGE", {"ti": 0.9})
    assert np.array_equal(a.fractions, b.fractions)
    s, _ = tissue_signals("MPRAGE", {"ti": 0.9})
    # gain x fitted signals reproduces the image's pure-tissue intensity
    wm_core = float(img[SIZE // 2, SIZE // 2, SIZE // 2])
    assert a.gain * a.signals["wm"] == pytest.approx(wm_core, rel=0.01)


def test_bad_input_is_refused():
    img = _image("MPRAGE", {"ti": 0.9})
    img[SIZE // 2, SIZE // 2, SIZE // 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        bayes_segment(img, MASK, "MPRAGE", {"ti": 0.9})
    tiny = np.zeros_like(MASK)
    tiny[0, 0, :5] = True
    with pytest.raises(ValueError, match="too few"):
        bayes_segment(img, tiny, "MPRAGE", {"ti": 0.9})
