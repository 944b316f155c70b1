import hashlib

import nibabel as nib
import numpy as np
import pytest

from phys_bids.bids.checks import InputImageError, check_anatomical


def save(tmp_path, data, affine=None, name="sub-01_T1w.nii.gz"):
    f = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(f))
    return f


def good():
    return np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)


def test_good_image_passes_and_is_not_modified(tmp_path):
    f = save(tmp_path, good())
    before = hashlib.sha256(f.read_bytes()).hexdigest()
    img = check_anatomical(f)
    assert img.shape == (24, 24, 24)
    assert hashlib.sha256(f.read_bytes()).hexdigest() == before
    f4 = save(tmp_path, good()[..., None], name="sub-02_T1w.nii.gz")
    assert check_anatomical(f4).shape == (24, 24, 24)  # singleton 4th dim accepted


@pytest.mark.parametrize("make,msg", [
    (lambda t: save(t, np.stack([good()] * 3, -1)), "must be 3D"),
    (lambda t: save(t, good()[:, :, :1]), "too small"),
    (lambda t: save(t, np.where(good() > 0.99, np.nan, good()).astype(np.float32)), "NaN or Inf"),
    (lambda t: save(t, np.where(good() > 0.99, np.inf, good()).astype(np.float32)), "NaN or Inf"),
    (lambda t: save(t, np.zeros((24, 24, 24), np.float32)), "all zeros"),
    (lambda t: save(t, np.full((24, 24, 24), 5, np.float32)), "constant"),
    (lambda t: save(t, good(), np.diag([6, 6, 6, 1.0])), "too coarse"),
])
def test_bad_images_give_one_actionable_line(tmp_path, make, msg):
    with pytest.raises(InputImageError, match=msg) as err:
        check_anatomical(make(tmp_path))
    assert "\n" not in str(err.value) and "sub-01_T1w.nii.gz" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a nifti at all", None])
def test_corrupted_files(tmp_path, content):
    f = save(tmp_path, good())
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if content is None else content)
    with pytest.raises(InputImageError, match="sub-01_T1w.nii.gz") as err:
        check_anatomical(f)
    assert "\n" not in str(err.value)


def test_singular_affine(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((24, 24, 24))
    hdr.set_data_dtype("f4")
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    img = nib.Nifti1Image(good(), None, hdr)
    f = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(img, str(f))
    with pytest.raises(InputImageError, match="singular"):
        check_anatomical(f)
