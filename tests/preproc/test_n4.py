import nibabel as nib
import numpy as np

from phys_bids.preproc.n4 import n4_correct
from phys_bids.synth.phantom import phantom_labels


def test_n4_removes_a_smooth_multiplicative_field():
    lab = phantom_labels(64, 2)
    tissue = {2: 100.0, 3: 70.0, 10: 80.0, 4: 20.0, 24: 25.0}
    truth = np.zeros(lab.shape, np.float32)
    for k, v in tissue.items():
        truth[lab == k] = v
    x = np.linspace(-1, 1, 64)
    gx, gy, gz = np.meshgrid(x, x, x, indexing="ij")
    field = np.exp(0.35 * gx + 0.2 * gy * gz).astype(np.float32)
    mask = truth > 0
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(truth * field + rng.normal(0, 0.5, truth.shape).astype(np.float32)
                          * mask, np.eye(4))
    res = n4_correct(img, nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), threads=2)
    out = np.asarray(res.corrected.dataobj)
    wm = lab == 2

    def cov(a):
        return float(a[wm].std() / a[wm].mean())

    assert cov(out) < 0.5 * cov(truth * field)  # WM inhomogeneity at least halved
    assert res.corrected.shape == img.shape and np.array_equal(res.corrected.affine, img.affine)
    est = np.asarray(res.field.dataobj)[mask]
    true = field[mask]
    r = np.corrcoef(np.log(est), np.log(true))[0, 1]
    assert r > 0.9  # the recovered field has the true shape (up to a constant factor)
