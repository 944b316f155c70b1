import math
import time

import nibabel as nib
import numpy as np
import pytest

from phys_bids.preproc.register import (
    ants_to_nib,
    nib_to_ants,
    register_to_template,
    to_native,
    to_template,
)
from phys_bids.preproc.templates import get_template


def test_nibabel_ants_round_trip_keeps_world_geometry():
    aff = np.array([[-0.9, 0.1, 0, 40], [0.1, 0.9, 0, -30], [0, 0, 1.2, 12], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(np.random.default_rng(0).random((10, 12, 14)).astype(np.float32), aff)
    back = ants_to_nib(nib_to_ants(img))
    assert np.allclose(back.affine, aff, atol=1e-5)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))


def _surface_points(mask: np.ndarray, affine: np.ndarray, n=400) -> np.ndarray:
    from scipy import ndimage

    surf = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(surf)
    idx = idx[np.random.default_rng(0).choice(len(idx), n, replace=False)]
    return (affine @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]


def test_known_rigid_motion_of_the_template_is_recovered(tmp_path):
    import ants

    tpl = get_template(tmp_path / "tf")
    full = nib_to_ants(nib.load(str(tpl.t1w_brain)))
    fixed_a = ants.resample_image(full, (2, 2, 2), use_voxels=False, interp_type=0)
    # a known rigid motion about the brain centre: 6, -4, 8 degrees and (5, -3, 4) mm (LPS)
    tx = ants.create_ants_transform(transform_type="Euler3DTransform", dimension=3,
                                    center=list(ants.get_center_of_mass(fixed_a)),
                                    parameters=[math.radians(6), math.radians(-4),
                                                math.radians(8), 5.0, -3.0, 4.0])
    moved_a = ants.apply_ants_transform_to_image(tx, fixed_a, fixed_a, interpolation="linear")
    template, moving = ants_to_nib(moved_a), ants_to_nib(fixed_a)
    t0 = time.time()
    # fixed = moved template, moving = template: the result must equal the known motion
    res = register_to_template(moving, template, tmp_path / "xfm.mat", threads=2)
    elapsed = time.time() - t0
    found = ants.read_transform(str(res.transform))
    mask = np.asarray(template.dataobj) > 0.05
    pts = _surface_points(mask, template.affine)
    lps = pts * np.array([-1, -1, 1])
    err = [np.linalg.norm(np.array(ants.apply_ants_transform_to_point(found, tuple(p)))
                          - np.array(ants.apply_ants_transform_to_point(tx, tuple(p))))
           for p in lps]
    print(f"\nrigid: surface error median {np.median(err):.2f} max {max(err):.2f} mm, "
          f"{elapsed:.1f} s at 2 mm")
    assert max(err) <= 1.0
    # resampling both ways keeps grids and header
    back = to_native(res.in_template, moving, res.transform)
    assert back.shape == moving.shape and np.array_equal(back.affine, moving.affine)
    lab = to_native(res.in_template, moving, res.transform, interpolation="nearestNeighbor")
    assert lab.get_data_dtype() == np.uint8
    again = to_template(moving, template, res.transform)
    assert again.shape == template.shape


@pytest.mark.realdata
def test_colin27_random_rigid_motion(shared_data, tmp_path):
    pytest.importorskip("deepbet")
    import ants

    from phys_bids.preproc import skull_strip

    head = nib.load(str(shared_data / "heads" / "colin27_T1w.nii.gz"))
    brain = skull_strip(head, threads=2).brain
    a = nib_to_ants(brain)
    rng = np.random.default_rng(42)
    params = list(np.radians(rng.uniform(-10, 10, 3))) + list(rng.uniform(-8, 8, 3))
    tx = ants.create_ants_transform(transform_type="Euler3DTransform", dimension=3,
                                    center=list(ants.get_center_of_mass(a)), parameters=params)
    moved = ants_to_nib(ants.apply_ants_transform_to_image(tx, a, a, interpolation="linear"))
    res = register_to_template(brain, moved, tmp_path / "x.mat", threads=2)
    found = ants.read_transform(str(res.transform))
    pts = _surface_points(np.asarray(moved.dataobj) > 0, moved.affine) * np.array([-1, -1, 1])
    err = [np.linalg.norm(np.array(ants.apply_ants_transform_to_point(found, tuple(p)))
                          - np.array(ants.apply_ants_transform_to_point(tx, tuple(p))))
           for p in pts]
    assert max(err) <= 1.0


def test_registration_repeats_bit_for_bit_with_two_threads(tmp_path):
    """Seeded sampling and the GC metric make multi-threaded runs identical."""
    from phys_bids.io import sha256

    rng = np.random.default_rng(1)
    data = np.zeros((40, 44, 36), np.float32)
    data[8:32, 8:36, 8:28] = 1.0
    data[14:26, 14:30, 12:24] = 2.0
    data += rng.normal(0, 0.05, data.shape).astype(np.float32)
    fixed = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [3.0, -2.0, 1.5]
    moving = nib.Nifti1Image(data, aff)
    digests = set()
    for i in range(2):
        res = register_to_template(moving, fixed, tmp_path / f"x{i}.mat", threads=2, seed=0)
        digests.add(sha256(res.transform))
    assert len(digests) == 1
