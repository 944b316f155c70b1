from pathlib import Path

import pytest

from phys_bids.bids.protocol import Protocol, ProtocolFileError
from phys_bids.bids.sidecars import load_sidecar, parse_entities
from phys_bids.physics.sidecar import (
    MissingParameterError,
    ParameterError,
    UnitsError,
    UnsupportedSequenceError,
    acquisition_from_sidecar,
)

SIEMENS_MPRAGE = {"ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
                  "SequenceName": "*tfl3d1_16ns", "RepetitionTime": 2.3, "InversionTime": 0.9,
                  "EchoTime": 0.00298, "FlipAngle": 9, "MagneticFieldStrength": 3}


def test_siemens_mprage():
    acq = acquisition_from_sidecar(SIEMENS_MPRAGE, suffix="T1w")
    assert acq.sequence == "MPRAGE"
    assert acq.params["tr"] == 2.3 and acq.sources["tr"] == "sidecar:RepetitionTime"
    assert acq.model_params() == {"ti": 0.9}


def test_philips_readout_tr_is_not_taken_as_inversion_tr():
    sc = {"PulseSequenceType": "3D TFE", "ScanningSequence": "GR\\IR", "RepetitionTime": 0.0081,
          "InversionTime": 1.0, "FlipAngle": 8}
    acq = acquisition_from_sidecar(sc, suffix="T1w")
    assert acq.sequence == "MPRAGE"
    assert acq.params["echo_spacing"] == 0.0081 and "tr" not in acq.params
    assert "Philips/GE" in acq.warnings[0]
    with pytest.raises(MissingParameterError, match="RepetitionTimePreparation.*protocol file"):
        acq.require("tr")


@pytest.mark.parametrize("field,value,fix", [
    ("RepetitionTime", 2300, "write 2.3"), ("InversionTime", 900, "write 0.9"),
    ("EchoTime", 2.98, "write 0.00298"), ("FlipAngle", 0.157, "radians"),
    ("FlipAngle", 270, "degrees"), ("EchoTime", -0.01, "positive"),
])
def test_wrong_units_are_errors_that_say_how_to_fix(field, value, fix):
    with pytest.raises(UnitsError, match=fix) as err:
        acquisition_from_sidecar({**SIEMENS_MPRAGE, field: value})
    assert "\n" not in str(err.value) and field in str(err.value)


def test_missing_model_parameter_names_the_field_and_the_protocol_file():
    acq = acquisition_from_sidecar({"PulseSequenceType": "SPGR", "RepetitionTime": 0.02,
                                    "FlipAngle": 20})
    with pytest.raises(MissingParameterError, match="EchoTime.*--protocol-file"):
        acq.model_params()


def test_protocol_overrides_win_and_are_recorded():
    p = Protocol.from_dict({"PhysBIDSProtocol": 1, "runs": [
        {"match": "sub-*_T1w", "fields": {"InversionTime": 1.1}}]})
    acq = acquisition_from_sidecar(SIEMENS_MPRAGE, suffix="T1w",
                                   overrides=p.fields_for("sub-01_T1w.nii.gz"))
    assert acq.params["ti"] == 1.1 and acq.sources["ti"] == "protocol:InversionTime"


def test_unknown_sequence_is_actionable():
    with pytest.raises(UnsupportedSequenceError, match="PulseSequenceType"):
        acquisition_from_sidecar({"EchoTime": 0.01})


@pytest.mark.parametrize("data,msg", [
    ([], "PhysBIDSProtocol"), ({"PhysBIDSProtocol": 1}, "runs"),
    ({"PhysBIDSProtocol": 1, "runs": [{"match": "x"}]}, "fields"),
    ({"PhysBIDSProtocol": 1, "runs": [{"match": "x", "fields": {"InversionTme": 1}}]},
     "unknown field"),
])
def test_malformed_protocol_files(data, msg):
    with pytest.raises(ProtocolFileError, match=msg):
        Protocol.from_dict(data)


def test_protocol_file_not_json(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{not json")
    with pytest.raises(ProtocolFileError, match="not valid JSON"):
        Protocol.load(f)


def test_sidecar_inheritance(tmp_path):
    (tmp_path / "T1w.json").write_text('{"FlipAngle": 8, "InversionTime": 1.0}')
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_T1w.json").write_text('{"InversionTime": 0.9}')
    (anat / "sub-01_acq-fast_T1w.json").write_text('{"InversionTime": 0.7}')
    img = anat / "sub-01_T1w.nii.gz"
    img.touch()
    assert load_sidecar(img, tmp_path) == {"FlipAngle": 8, "InversionTime": 0.9}


@pytest.mark.realdata
def test_every_sidecar_of_the_bids_qmri_examples(shared_data):
    root = shared_data / "bids-examples-qmri"
    seen = {"ok": 0, "error": 0}
    expected = {
        "sub-01_flip-1_VFA.nii.gz": ("SPGR", {"tr": 0.015, "fa": 3.0}),
        "sub-1_inv-2_part-mag_MP2RAGE.nii": ("MP2RAGE", {"ti": 2.7, "tr": 5.5, "fa": 7.0,
                                                         "n_excitations": 159.0}),
        "sub-01_acq-MTw_echo-1_flip-1_mt-on_MPM.nii": ("SPGR", {"mt_on": True, "tr": 0.025}),
        "sub-01_inv-02_IRT1.nii.gz": ("IR", {"ti": 0.4}),
    }
    errors = {"sub-01_acq-anat_TB1TFL.nii.gz": "EchoTime=1.97.*milliseconds",
              "sub-01_flip-1_inv-1_TB1SRGE.nii.gz": "InversionTime=45.*milliseconds"}
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in sorted(ds.rglob("*.nii*")):
            if "derivatives" in img.parts:
                continue
            _, suffix = parse_entities(img.name)
            try:
                acq = acquisition_from_sidecar(load_sidecar(img, ds), suffix=suffix)
            except ParameterError as err:
                seen["error"] += 1
                assert "\n" not in str(err)
                if img.name in errors:
                    assert isinstance(err, UnitsError)
                    import re
                    assert re.search(errors.pop(img.name), str(err))
                continue
            seen["ok"] += 1
            if img.name in expected:
                seq, params = expected.pop(img.name)
                assert acq.sequence == seq
                assert {k: acq.params[k] for k in params} == params
    # derivative sidecars (lists of strings as values) parse or fail cleanly too
    for js in sorted(root.rglob("derivatives/**/*.json")):
        if js.name == "dataset_description.json":
            continue
        import json
        try:
            acquisition_from_sidecar(json.loads(js.read_text()), suffix=parse_entities(js.name)[1])
        except ParameterError as err:
            assert "\n" not in str(err)
    assert not expected and not errors
    assert seen["ok"] > 80 and seen["error"] > 10
    assert Path(root).exists()
