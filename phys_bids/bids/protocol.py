"""Protocol override files: acquisition parameters the sidecars lack or get wrong.

Format (JSON; values in BIDS units - seconds, degrees)::

    {
      "PhysBIDSProtocol": 1,
      "runs": [
        {"match": "sub-*_acq-mprage*_T1w", "fields": {"InversionTime": 0.9}},
        {"match": "sub-07_*", "fields": {"PulseSequenceType": "MPRAGE"}}
      ]
    }

``match`` is a shell-style pattern tested against the image file name without its
extension; every matching entry applies, later entries winning. The fields are
checked exactly like sidecar fields (:mod:`phys_bids.physics.sidecar`).

>>> p = Protocol.from_dict({"PhysBIDSProtocol": 1, "runs": [
...     {"match": "sub-*_T1w", "fields": {"InversionTime": 0.9}}]})
>>> p.fields_for("sub-01_T1w.nii.gz")
{'InversionTime': 0.9}
>>> p.fields_for("sub-01_FLAIR.nii.gz")
{}
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json
from ..physics.sidecar import SIDECAR_FIELDS
from .sidecars import strip_extension

__all__ = ["Protocol", "ProtocolFileError", "ALLOWED_FIELDS", "load_reference_protocol"]

ALLOWED_FIELDS = frozenset(SIDECAR_FIELDS) | {
    "PulseSequenceType", "ScanningSequence", "SequenceVariant", "SequenceName", "MTState",
}


#: Named reference protocols for the harmonised image (BIDS sidecar fields, SI units);
#: ``--reference-protocol`` takes one of these names or a JSON file of the same form.
REFERENCE_PROTOCOLS = {
    "mprage-3t": {"PulseSequenceType": "MPRAGE", "InversionTime": 0.9,
                  "RepetitionTime": 2.3, "MagneticFieldStrength": 3},
    "spgr-3t": {"PulseSequenceType": "SPGR", "RepetitionTime": 0.02, "EchoTime": 0.005,
                "FlipAngle": 25, "MagneticFieldStrength": 3},
}


class ProtocolFileError(ValueError):
    """The protocol file is malformed (one actionable line)."""


@dataclass(frozen=True)
class Protocol:
    runs: tuple[tuple[str, dict], ...]
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> Protocol:
        where = f"protocol file {source}"
        if not isinstance(data, dict) or data.get("PhysBIDSProtocol") != 1:
            raise ProtocolFileError(f"{where}: expected a JSON object with \"PhysBIDSProtocol\": 1 "
                                    "(see docs/protocol-file.md)")
        runs = data.get("runs")
        if not isinstance(runs, list):
            raise ProtocolFileError(f"{where}: \"runs\" must be a list of {{match, fields}}")
        out = []
        for i, run in enumerate(runs):
            if not (isinstance(run, dict) and isinstance(run.get("match"), str)
                    and isinstance(run.get("fields"), dict)):
                raise ProtocolFileError(f"{where}: runs[{i}] needs a \"match\" string and a "
                                        "\"fields\" object")
            unknown = sorted(set(run["fields"]) - ALLOWED_FIELDS)
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(ALLOWED_FIELDS), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ProtocolFileError(f"{where}: runs[{i}] has unknown field(s) {unknown}"
                                        f"{hint}; allowed fields: docs/protocol-file.md")
            out.append((run["match"], dict(run["fields"])))
        return cls(tuple(out), source)

    @classmethod
    def load(cls, path) -> Protocol:
        return cls.from_dict(read_json(path, "protocol file", ProtocolFileError), str(path))

    def fields_for(self, filename: str) -> dict:
        name = strip_extension(Path(filename).name)
        merged: dict = {}
        for pattern, fields in self.runs:
            if fnmatch.fnmatchcase(name, pattern):
                merged.update(fields)
        return merged


def load_reference_protocol(value: str) -> dict:
    """The protocol of the harmonised image: a preset name or a JSON file of sidecar fields.

    Returns ``{"name", "sequence", "params", "fields"}`` (parameters in SI units, checked
    like any sidecar). Raises :class:`ProtocolFileError` with one actionable line.

    >>> ref = load_reference_protocol("mprage-3t")
    >>> ref["sequence"], ref["params"]
    ('MPRAGE', {'ti': 0.9})
    """
    from ..physics.sidecar import acquisition_from_sidecar

    if value in REFERENCE_PROTOCOLS:
        name, fields = value, dict(REFERENCE_PROTOCOLS[value])
    else:
        path = Path(value)
        if not path.is_file():
            raise ProtocolFileError(f"--reference-protocol {value}: neither a preset "
                                    f"({', '.join(REFERENCE_PROTOCOLS)}) nor a JSON file")
        fields = read_json(path, "--reference-protocol", ProtocolFileError)
        if not isinstance(fields, dict):
            raise ProtocolFileError(f"--reference-protocol {path}: expected a JSON object of "
                                    "sidecar fields, e.g. {\"PulseSequenceType\": \"MPRAGE\", "
                                    "\"InversionTime\": 0.9}")
        unknown = sorted(set(fields) - ALLOWED_FIELDS - {"MagneticFieldStrength"})
        if unknown:
            raise ProtocolFileError(f"--reference-protocol {path}: unknown field(s) {unknown}")
        name = strip_extension(path.name)
    try:
        acq = acquisition_from_sidecar(fields, suffix="T1w")
        params = acq.model_params()
    except ValueError as err:
        raise ProtocolFileError(f"--reference-protocol {value}: {err}") from None
    return {"name": name, "sequence": acq.sequence, "params": params, "fields": fields}
