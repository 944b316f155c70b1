import nibabel as nib
import numpy as np
from pydra.engine.submitter import Submitter

from phys_bids.preproc.register import ants_to_nib, nib_to_ants
from phys_bids.preproc.templates import get_template
from phys_bids.tasks.preproc import PreprocT1w


def test_preproc_workflow_runs_and_is_cached(tmp_path):
    import ants

    tpl = get_template(tmp_path / "tf")
    small = ants.resample_image(nib_to_ants(nib.load(str(tpl.t1w_brain))), (3, 3, 3),
                                use_voxels=False, interp_type=0)
    tpl_file = tmp_path / "tpl.nii.gz"
    nib.save(ants_to_nib(small), str(tpl_file))
    # a "native" brain: the template with a smooth bias field, already skull-stripped
    data = small.numpy()
    x = np.linspace(-1, 1, data.shape[0])[:, None, None]
    native = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image((data * np.exp(0.3 * x)).astype(np.float32),
                             ants_to_nib(small).affine), str(native))
    wf = PreprocT1w(in_file=native, template=tpl_file, skull_strip="none", threads=2)
    with Submitter(worker="debug", cache_root=tmp_path / "cache") as sub:
        res = sub(wf)
    assert not res.errored
    out = res.outputs
    n4 = np.asarray(nib.load(str(out.n4)).dataobj)
    assert n4.shape == data.shape
    assert str(out.transform).endswith(".mat")
    warped = np.asarray(nib.load(str(out.in_template)).dataobj)
    assert np.corrcoef(warped.ravel(), data.ravel())[0, 1] > 0.95
    # a second run with the same inputs is served from the cache
    with Submitter(worker="debug", cache_root=tmp_path / "cache") as sub:
        res2 = sub(PreprocT1w(in_file=native, template=tpl_file, skull_strip="none", threads=2))
    assert str(res2.outputs.transform) == str(out.transform)
