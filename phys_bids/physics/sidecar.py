"""From a BIDS sidecar (after inheritance) to a sequence and its parameters.

This is the units boundary of phys-bids: values are checked here, once, and every
later step can assume SI units (s, degrees, T).

Field meanings and vendor differences
-------------------------------------
* ``RepetitionTimeExcitation``: time between excitations (SPGR TR; MPRAGE echo
  spacing). ``RepetitionTimePreparation``: time between preparation (inversion)
  pulses of MPRAGE/MP2RAGE.
* ``RepetitionTime`` (classic field): Siemens writes the inversion repetition time
  for MPRAGE (e.g. 2.3 s); Philips (3D TFE) and GE (BRAVO/IR-FSPGR) usually write the
  read-out TR (e.g. 0.0081 s). For an MPRAGE with no ``RepetitionTimePreparation``,
  a ``RepetitionTime`` below 0.1 s is therefore taken as the echo spacing and the
  inversion repetition time is reported missing.
* ``InversionTime``: Siemens and GE give the time from inversion to the k-space
  centre; some Philips exports give the time to the first read-out pulse
  (a "shot interval" convention) - supply the right value through a protocol
  file if in doubt.
* ``EchoTime`` may be a list (one per echo); ``FlipAngle`` may be a list in qMRI
  derivatives (one per contrast). Strings holding numbers are accepted.

Errors
------
Every problem raises a subclass of :class:`ParameterError` whose message is one
actionable line: which field, what is wrong, how to fix it (usually through a
protocol override file, see ``docs/protocol-file.md``).

>>> acq = acquisition_from_sidecar({"PulseSequenceType": "SPGR", "RepetitionTimeExcitation": 0.02,
...                                 "EchoTime": 0.005, "FlipAngle": 20})
>>> acq.sequence, acq.params["tr"], acq.params["fa"]
('SPGR', 0.02, 20.0)
>>> acquisition_from_sidecar({"ScanningSequence": "GR\\\\IR", "SequenceVariant": "SK\\\\SP\\\\MP",
...                           "RepetitionTime": 2300, "InversionTime": 0.9})
Traceback (most recent call last):
...
phys_bids.physics.sidecar.UnitsError: RepetitionTime=2300 is not plausible in seconds ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Acquisition",
    "ParameterError",
    "MissingParameterError",
    "UnitsError",
    "UnsupportedSequenceError",
    "acquisition_from_sidecar",
    "MODEL_PARAMETERS",
    "SIDECAR_FIELDS",
]


class ParameterError(ValueError):
    """Acquisition parameters cannot be used as given (one actionable line)."""


class MissingParameterError(ParameterError):
    """A field the processing needs is absent."""


class UnitsError(ParameterError):
    """A value is not in the unit BIDS prescribes."""


class UnsupportedSequenceError(ParameterError):
    """The sequence cannot be identified or is not modelled."""


#: BIDS field -> (parameter key, unit, plausible (low, high) in that unit).
SIDECAR_FIELDS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "RepetitionTime": ("tr", "s", (1e-3, 30.0)),
    "RepetitionTimeExcitation": ("echo_spacing|tr", "s", (1e-3, 30.0)),
    "RepetitionTimePreparation": ("tr", "s", (0.1, 30.0)),
    "InversionTime": ("ti", "s", (1e-3, 10.0)),
    "EchoTime": ("te", "s", (1e-5, 1.0)),
    "FlipAngle": ("fa", "deg", (1.0, 180.0)),
    "MagneticFieldStrength": ("field_strength", "T", (0.01, 14.0)),
    "NumberShots": ("n_excitations", "", (1, 100000)),
}

#: Parameters each sequence's network/model needs (see :mod:`.spaces`).
MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "MPRAGE": ("ti",),
    "SPGR": ("tr", "te", "fa"),
}

_HOW_TO_OVERRIDE = "supply it in a protocol file (--protocol-file, see docs/protocol-file.md)"

_FIELDMAP_SUFFIXES = {"phasediff", "phase1", "phase2", "magnitude", "magnitude1", "magnitude2",
                      "fieldmap", "epi"}

_SUFFIX_SEQUENCE = {
    "MP2RAGE": "MP2RAGE", "UNIT1": "MP2RAGE", "IRT1": "IR", "VFA": "SPGR", "MTS": "SPGR",
    "MPM": "SPGR", "MEGRE": "SPGR", "MESE": "FSE", "FLAIR": "FLAIR", "T2W": "FSE",
    "PDW": "FSE",
}


@dataclass
class Acquisition:
    """A sequence and its parameters in SI units, with where each value came from."""

    sequence: str
    params: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def require(self, *names: str) -> None:
        """Raise :class:`MissingParameterError` naming every absent parameter."""
        missing = [n for n in names if self.params.get(n) is None]
        if missing:
            fields = ", ".join(_field_for(self.sequence, n) for n in missing)
            raise MissingParameterError(
                f"{self.sequence} acquisition is missing {fields}: add it to the sidecar or "
                f"{_HOW_TO_OVERRIDE}")

    def model_params(self) -> dict:
        """The parameters the segmentation network is told (checked present)."""
        if self.sequence not in MODEL_PARAMETERS:
            raise UnsupportedSequenceError(
                f"the segmentation model knows {sorted(MODEL_PARAMETERS)} images, not "
                f"{self.sequence}; set PulseSequenceType in a protocol file if this is wrong")
        names = MODEL_PARAMETERS[self.sequence]
        self.require(*names)
        out = {}
        for n in names:
            v = self.params[n]
            if isinstance(v, list):  # multi-echo: the first echo is the anatomical image
                v = v[0]
            out[n] = float(v)
        return out

    def to_json(self) -> dict:
        return {"sequence": self.sequence, "parameters": self.params, "sources": self.sources,
                "warnings": self.warnings}


def _field_for(sequence: str, name: str) -> str:
    table = {"ti": "InversionTime", "te": "EchoTime", "fa": "FlipAngle",
             "echo_spacing": "RepetitionTimeExcitation", "n_excitations": "NumberShots",
             "field_strength": "MagneticFieldStrength"}
    if name == "tr":
        return ("RepetitionTimePreparation" if sequence in ("MPRAGE", "MP2RAGE")
                else "RepetitionTimeExcitation (or RepetitionTime)")
    return table.get(name, name)


def _number(name: str, value):
    if isinstance(value, bool):
        raise ParameterError(f"{name}={value!r} must be a number")
    if isinstance(value, list | tuple):
        if not value:
            raise ParameterError(f"{name} is an empty list; give a number")
        return [_number(name, v) for v in value]
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ParameterError(f"{name}={value!r} is not a number") from None
    if isinstance(value, int | float):
        return float(value)
    raise ParameterError(f"{name}={value!r} must be a number")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _check_units(name: str, value) -> None:
    if isinstance(value, list):
        for v in value:
            _check_units(name, v)
        return
    _, unit, (lo, hi) = SIDECAR_FIELDS[name]
    if value <= 0 and name != "NumberShots":
        raise UnitsError(f"{name}={_fmt(value)} must be positive (unit: {unit})")
    if unit == "s" and value > hi:
        raise UnitsError(f"{name}={_fmt(value)} is not plausible in seconds (BIDS uses seconds);"
                         f" it looks like milliseconds: write {_fmt(value / 1000)}")
    if unit == "s" and value < lo:
        raise UnitsError(f"{name}={_fmt(value)} s is implausibly short; check the unit (BIDS "
                         "uses seconds)")
    if name == "FlipAngle":
        if value > hi:
            raise UnitsError(f"FlipAngle={_fmt(value)} is above 180; BIDS flip angles are in "
                             "degrees")
        if value < lo:
            raise UnitsError(f"FlipAngle={_fmt(value)} looks like radians; BIDS uses degrees: "
                             f"write {_fmt(value * 57.29577951308232)}")
    if name == "MagneticFieldStrength" and not lo <= value <= hi:
        raise UnitsError(f"MagneticFieldStrength={_fmt(value)} is not plausible in tesla")


def _detect(sc: dict, suffix: str | None) -> str:
    text = " ".join(str(sc.get(k, "")) for k in ("PulseSequenceType", "ScanningSequence",
                                                 "SequenceVariant", "SequenceName",
                                                 "PulseSequenceDetails")).upper()
    if "B1" in str(sc.get("SequenceName", "")).upper() or (suffix or "").upper().startswith(
            ("TB1", "RB1")):
        raise UnsupportedSequenceError("this is a B1 field-map acquisition, not an anatomical "
                                       "image phys-bids models")
    if (suffix or "").lower() in _FIELDMAP_SUFFIXES:
        raise UnsupportedSequenceError(f"{suffix} is a field-map image, not an anatomical image "
                                       "phys-bids models")
    if suffix and suffix.upper() in _SUFFIX_SEQUENCE:
        return _SUFFIX_SEQUENCE[suffix.upper()]
    has_ti = sc.get("InversionTime") is not None
    if "MP2RAGE" in text:
        return "MP2RAGE"
    tokens = set(text.replace("\\", " ").replace("_", " ").replace("-", " ").split())
    mprage_words = ("MPRAGE", "MP-RAGE", "MP_RAGE", "BRAVO", "IR-FSPGR", "IRFSPGR", "TFL3D",
                    "*TFL3D", "MPRAGE_GRAPPA")
    if any(w in text for w in mprage_words) or (
            has_ti and (("IR" in tokens and "GR" in tokens) or "MP" in tokens or "TFE" in tokens
                        or "TFL" in text)):
        return "MPRAGE"
    if "FLAIR" in text:
        return "FLAIR"
    if has_ti and ("IR" in tokens or "SE" in tokens):
        return "IR"
    if any(w in text for w in ("SPGR", "FLASH", "FL3D", "FFE", "GRE")) or "GR" in tokens:
        return "SPGR"
    if any(w in text for w in ("TSE", "FSE", "SPACE", "SPC")) or "SE" in tokens:
        return "FSE"
    if (suffix or "").upper() == "T1W":
        if has_ti:
            return "MPRAGE"
        if sc.get("FlipAngle") is not None:
            return "SPGR"
    raise UnsupportedSequenceError(
        "cannot tell the sequence from PulseSequenceType/ScanningSequence/SequenceVariant; set "
        "\"PulseSequenceType\" (MPRAGE, SPGR, ...) in a protocol file (--protocol-file)")


def acquisition_from_sidecar(sidecar: dict, *, suffix: str | None = None,
                             overrides: dict | None = None) -> Acquisition:
    """Map a sidecar dictionary (inheritance already applied) to an :class:`Acquisition`.

    Parameters
    ----------
    sidecar : dict
        The JSON sidecar of the image.
    suffix : str, optional
        The BIDS suffix of the image (``T1w``, ``MP2RAGE``, ``VFA`` ...); helps identify
        the sequence.
    overrides : dict, optional
        Fields from a protocol file; they replace the sidecar's (recorded as source
        ``protocol``).

    Raises
    ------
    UnitsError, UnsupportedSequenceError, ParameterError
    """
    merged = dict(sidecar)
    origin = {k: "sidecar" for k in sidecar}
    for k, v in (overrides or {}).items():
        merged[k] = v
        origin[k] = "protocol"
    values = {}
    for name in SIDECAR_FIELDS:
        if merged.get(name) is None:
            continue
        v = _number(name, merged[name])
        _check_units(name, v)
        values[name] = v
    sequence = _detect(merged, suffix)
    acq = Acquisition(sequence)

    def put(key, bids_name):
        acq.params[key] = values[bids_name]
        acq.sources[key] = f"{origin[bids_name]}:{bids_name}"

    if "MagneticFieldStrength" in values:
        put("field_strength", "MagneticFieldStrength")
    if "EchoTime" in values:
        put("te", "EchoTime")
    if "FlipAngle" in values:
        put("fa", "FlipAngle")
    if "InversionTime" in values:
        put("ti", "InversionTime")
    if "NumberShots" in values:
        put("n_excitations", "NumberShots")
    rte = values.get("RepetitionTimeExcitation")
    if sequence in ("MPRAGE", "MP2RAGE"):
        if "RepetitionTimePreparation" in values:
            put("tr", "RepetitionTimePreparation")
        if rte is not None:
            if (isinstance(rte, float) and rte > 0.1) or (
                    isinstance(rte, list) and max(rte) > 0.1):
                raise UnitsError(f"RepetitionTimeExcitation={rte} s is too long for an "
                                 f"{sequence} echo spacing; check the unit (seconds) or the "
                                 "field (the inversion repetition time is "
                                 "RepetitionTimePreparation)")
            put("echo_spacing", "RepetitionTimeExcitation")
        if "RepetitionTime" in values and "tr" not in acq.params:
            tr = values["RepetitionTime"]
            if isinstance(tr, float) and tr < 0.1:
                if "echo_spacing" not in acq.params:
                    put("echo_spacing", "RepetitionTime")
                acq.warnings.append(
                    f"RepetitionTime={_fmt(tr)} s is the read-out TR (Philips/GE convention); "
                    "the inversion repetition time is unknown (RepetitionTimePreparation)")
            else:
                put("tr", "RepetitionTime")
    else:
        if rte is not None:
            put("tr", "RepetitionTimeExcitation")
        elif "RepetitionTime" in values:
            put("tr", "RepetitionTime")
    if sequence == "SPGR" and "MTState" in merged:
        mt = merged["MTState"]
        if isinstance(mt, list):
            acq.params["mt_on"] = [bool(x) for x in mt]
        else:
            acq.params["mt_on"] = bool(mt)
        acq.sources["mt_on"] = f"{origin['MTState']}:MTState"
    if sequence == "SPGR" and isinstance(acq.params.get("tr"), float) and acq.params["tr"] > 5.0:
        raise UnitsError(f"{acq.sources['tr'].split(':')[1]}={_fmt(acq.params['tr'])} s is too "
                         "long for a spoiled gradient echo; check the unit (seconds)")
    return acq
