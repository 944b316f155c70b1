"""The group level: one study table of every processed scan's volumes and acquisition.

``group/volumes.tsv`` has one row per T1w run: subject, session, the volumes of the
participant level, the out-of-training-space flag, and the site and protocol
descriptors read from the input sidecars; ``group/volumes.json`` is its data
dictionary. A scan's site is, by default, ``InstitutionName`` + ``StationName`` +
``ManufacturersModelName`` (the first present, joined by '/'), or ``Manufacturer``
when none is; a ``site`` column of ``participants.tsv`` overrides it.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from .bids.derivatives import DerivativesWriter
from .bids.sidecars import load_sidecar, parse_entities

__all__ = ["run_group", "collect_volumes", "site_of", "COLUMNS"]

log = logging.getLogger("phys_bids.group")

DESCRIPTORS = ("Manufacturer", "ManufacturersModelName", "InstitutionName", "StationName",
               "DeviceSerialNumber", "MagneticFieldStrength")
TISSUES = ("GM", "WM", "CSF", "ICV")

COLUMNS = {
    "participant_id": "subject label (sub-X)",
    "session_id": "session label (ses-Y) or n/a",
    "source": "the input T1w image, relative to BIDS_DIR",
    "site": "site (rule in the group module docs; participants.tsv 'site' column wins)",
    **{f"{t}_ml": f"{t} volume in mL (participant level, *_morph.tsv)" for t in TISSUES},
    "sequence": "sequence the model was told (MPRAGE or SPGR)",
    "in_training_space": "acquisition inside the model's training space",
    "outside_training_space": "parameters outside it",
    **{d: f"{d} from the input sidecar" for d in DESCRIPTORS},
    "parameters": "acquisition parameters used (JSON, SI units)",
}


def site_of(sidecar: dict) -> str:
    parts = [str(sidecar[k]) for k in ("InstitutionName", "StationName",
                                       "ManufacturersModelName") if sidecar.get(k)]
    if parts:
        return "/".join(parts)
    return str(sidecar.get("Manufacturer", "n/a"))


def _participant_sites(root: Path) -> dict[str, str]:
    tsv = root / "participants.tsv"
    if not tsv.exists():
        return {}
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["participant_id"]: r["site"] for r in rows
            if r.get("site") and r["site"] != "n/a" and "participant_id" in r}


def collect_volumes(bids_root: Path, out_dir: Path) -> list[dict]:
    """One row per participant-level volumes table found in ``out_dir``."""
    sites = _participant_sites(bids_root)
    rows = []
    for tsv in sorted(out_dir.glob("sub-*/**/*_morph.tsv")):
        side = json.loads(tsv.with_suffix(".json").read_text())
        src = side["Sources"][0].split(":", 2)[2]
        with open(tsv, newline="") as f:
            vols = {r["tissue"]: r for r in csv.DictReader(f, delimiter="\t")}
        ents, _ = parse_entities(src)
        sidecar = load_sidecar(bids_root / src, bids_root) if (bids_root / src).exists() else {}
        prov = side.get("PhysBIDS", {})
        acq = prov.get("Acquisition", {})
        row = {"participant_id": f"sub-{ents['sub']}",
               "session_id": f"ses-{ents['ses']}" if "ses" in ents else "n/a",
               "source": src,
               "site": sites.get(f"sub-{ents['sub']}", site_of(sidecar))}
        for t in TISSUES:
            row[f"{t}_ml"] = vols[t]["volume_ml"] if t in vols else "n/a"
        row["sequence"] = acq.get("Sequence", "n/a")
        row["in_training_space"] = str(prov.get("InTrainingSpace", "n/a")).lower()
        row["outside_training_space"] = ",".join(prov.get("OutsideTrainingSpace", [])) or "n/a"
        for d in DESCRIPTORS:
            row[d] = sidecar.get(d, "n/a")
        row["parameters"] = json.dumps(acq.get("Parameters", {}), sort_keys=True)
        rows.append(row)
    return rows


def run_group(bids_root: Path, out_dir: Path) -> int:
    from . import __version__
    from .cli import CliError

    if not (out_dir / "dataset_description.json").exists():
        raise CliError(f"OUTPUT_DIR {out_dir} has no participant-level outputs; run the "
                       "participant level first")
    rows = collect_volumes(bids_root, out_dir)
    if not rows:
        raise CliError(f"no volumes tables (*_morph.tsv) in {out_dir}; run the participant "
                       "level first")
    writer = DerivativesWriter(out_dir, bids_root, version=__version__)
    lines = ["\t".join(COLUMNS)] + ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
    writer.write_text("group/volumes.tsv", "\n".join(lines) + "\n")
    writer.write_json("group/volumes.json", {c: {"Description": d} for c, d in COLUMNS.items()})
    n_sites = len({r["site"] for r in rows})
    log.info("group/volumes.tsv: %d scan(s) of %d subject(s) at %d site(s)", len(rows),
             len({r["participant_id"] for r in rows}), n_sites)
    return 0
