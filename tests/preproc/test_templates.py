import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from phys_bids.preproc.templates import OFFLINE_TEMPLATE, ONLINE_TEMPLATE, get_template


def test_offline_template_is_seeded_labelled_and_found_by_templateflow(tmp_path):
    tpl = get_template(tmp_path)
    assert tpl.name == OFFLINE_TEMPLATE == "MNI152NLin2009aSym"
    t1 = nib.load(str(tpl.t1w_brain))
    mask = np.asarray(nib.load(str(tpl.mask)).dataobj)
    data = np.asarray(t1.dataobj)
    assert t1.shape == mask.shape and np.array_equal((data > 0), mask.astype(bool))
    assert 0 < data.max() <= 1.0 and 1.3e6 < mask.sum() < 2.2e6  # ~1.3-2.2 L brain at 1 mm
    gm = np.asarray(nib.load(str(tpl.gm)).dataobj)
    assert gm.min() >= 0 and gm.max() <= 1
    prov = json.loads((tpl.t1w_brain.parent / "phys-bids-provenance.json").read_text())
    assert prov["template"] == "MNI152NLin2009aSym" and "nilearn" in prov["source"]
    # TemplateFlow's own API finds the seeded file offline (fresh process, this home)
    code = ("from templateflow import api; print(api.get('MNI152NLin2009aSym', resolution=1, "
            "desc='brain', suffix='T1w'))")
    env = {"TEMPLATEFLOW_HOME": str(tmp_path), "TEMPLATEFLOW_AUTOUPDATE": "0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == str(tpl.t1w_brain)
    # seeding is idempotent and does not rewrite files
    mtime = tpl.t1w_brain.stat().st_mtime_ns
    assert get_template(tmp_path).t1w_brain.stat().st_mtime_ns == mtime


def test_fetched_templateflow_files_are_preferred(tmp_path):
    """TemplateFlow names the 2009c files res-01; a fetched set must be found and used."""
    seeded = get_template(tmp_path)
    folder = tmp_path / f"tpl-{ONLINE_TEMPLATE}"
    folder.mkdir()
    for key, src in (("desc-brain_T1w", seeded.t1w_brain), ("desc-brain_mask", seeded.mask),
                     ("label-GM_probseg", seeded.gm)):
        (folder / f"tpl-{ONLINE_TEMPLATE}_res-01_{key}.nii.gz").write_bytes(src.read_bytes())
    # an empty placeholder (what TemplateFlow leaves for an unfetched file) is not a file
    (folder / f"tpl-{ONLINE_TEMPLATE}_res-01_label-WM_probseg.nii.gz").touch()
    tpl = get_template(tmp_path)
    assert tpl.name == ONLINE_TEMPLATE and tpl.source == "templateflow"
    assert tpl.t1w_brain.name.endswith("res-01_desc-brain_T1w.nii.gz")
    assert tpl.gm is not None and tpl.wm is None


def test_bake_without_network_falls_back_and_says_so(tmp_path, monkeypatch):
    from phys_bids.preproc import templates

    monkeypatch.setattr(templates, "fetch_online", lambda home: None)
    assert templates.main([str(tmp_path), "--fetch"]) == 0
    note = (tmp_path / "phys-bids-templates.txt").read_text()
    assert OFFLINE_TEMPLATE in note and f"{ONLINE_TEMPLATE} could not be fetched" in note
