"""The study table: one row per processed T1w run, read from the participant outputs.

Column names and the participant-level fields they come from are defined here
(:data:`COLUMNS`); the ``*_morph.tsv`` columns and provenance keys are the
participant level's own definitions (:mod:`phys_bids.workflows.outputs`).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.sidecars import load_sidecar, parse_entities
from ..workflows.outputs import (
    CAL_COLUMNS,
    MC_COLUMNS,
    MORPH_TISSUES,
    POST_COLUMNS,
    PROVENANCE,
)

__all__ = ["COLUMNS", "TISSUES", "DESCRIPTORS", "collect_volumes", "classical_volumes",
           "site_of"]


log = logging.getLogger("phys_bids.group")

DESCRIPTORS = ("Manufacturer", "ManufacturersModelName", "InstitutionName", "StationName",
               "DeviceSerialNumber", "MagneticFieldStrength")
TISSUES = MORPH_TISSUES
#: the participant level's bounds carried into the study table
BOUND_COLUMNS = (MC_COLUMNS[1], CAL_COLUMNS[2], CAL_COLUMNS[3], POST_COLUMNS[1], POST_COLUMNS[2])

COLUMNS = {
    "participant_id": "subject label (sub-X)",
    "session_id": "session label (ses-Y) or n/a",
    "source": "the input T1w image, relative to BIDS_DIR",
    "site": "site (rule in the group module docs; participants.tsv 'site' column wins)",
    **{f"{t}_ml": f"{t} volume in mL (participant level, *_morph.tsv)" for t in TISSUES},
    **{f"{t}_{c}": f"{t}: {c} of *_morph.tsv (n/a without --mc-samples)" for t in TISSUES
       for c in BOUND_COLUMNS},
    "sequence": "sequence the model was told (MPRAGE or SPGR)",
    "in_training_space": "acquisition inside the model's training space",
    "outside_training_space": "parameters outside it",
    "wm_gm_contrast": "predicted WM-GM contrast of the protocol, (WM - GM) / GM of the prior "
                      "tissue means (n/a before phys-bids recorded it)",
    "low_contrast": "SPGR below the contrast where the networks' volumes start to move "
                    "(flagged in the participant report)",
    **{d: f"{d} from the input sidecar" for d in DESCRIPTORS},
    "parameters": "acquisition parameters used (JSON, SI units)",
    **{f"{t}_atropos_ml": f"{t} volume in mL of the classical segmentation (Atropos k-means, "
       "3 classes, in the same brain mask; n/a with --no-classical)" for t in TISSUES[:3]},
}


def site_of(sidecar: dict) -> str:
    parts = [str(sidecar[k]) for k in ("InstitutionName", "StationName",
                                       "ManufacturersModelName") if sidecar.get(k)]
    if parts:
        return "/".join(parts)
    return str(sidecar.get("Manufacturer", "n/a"))


def _participants(root: Path) -> dict[str, dict]:
    tsv = root / "participants.tsv"
    if not tsv.exists():
        return {}
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["participant_id"]: r for r in rows if "participant_id" in r}


def collect_volumes(bids_root: Path, out_dir: Path) -> list[dict]:
    """One row per participant-level volumes table found in ``out_dir``."""
    people = _participants(bids_root)
    sites = {k: r["site"] for k, r in people.items() if r.get("site") not in (None, "", "n/a")}
    rows = []
    for tsv in sorted(out_dir.glob("sub-*/**/*_morph.tsv")):
        side = json.loads(tsv.with_suffix(".json").read_text())
        src = side["Sources"][0].split(":", 2)[2]
        with open(tsv, newline="") as f:
            vols = {r["tissue"]: r for r in csv.DictReader(f, delimiter="\t")}
        ents, _ = parse_entities(src)
        sidecar = load_sidecar(bids_root / src, bids_root) if (bids_root / src).exists() else {}
        prov = side.get(PROVENANCE, {})
        acq = prov.get("Acquisition", {})
        row = {"participant_id": f"sub-{ents['sub']}",
               "session_id": f"ses-{ents['ses']}" if "ses" in ents else "n/a",
               "source": src,
               "site": sites.get(f"sub-{ents['sub']}", site_of(sidecar))}
        for t in TISSUES:
            row[f"{t}_ml"] = vols[t]["volume_ml"] if t in vols else "n/a"
        for t in TISSUES:
            for c in BOUND_COLUMNS:
                row[f"{t}_{c}"] = vols.get(t, {}).get(c) or "n/a"
        row["sequence"] = acq.get("Sequence", "n/a")
        row["in_training_space"] = str(prov.get("InTrainingSpace", "n/a")).lower()
        row["outside_training_space"] = ",".join(prov.get("OutsideTrainingSpace", [])) or "n/a"
        contrast = prov.get("PredictedContrast") or {}
        row["wm_gm_contrast"] = contrast.get("WMGM", "n/a")
        row["low_contrast"] = str(contrast.get("Low", "n/a")).lower()
        for d in DESCRIPTORS:
            row[d] = sidecar.get(d, "n/a")
        row["parameters"] = json.dumps(acq.get("Parameters", {}), sort_keys=True)
        for t in TISSUES[:3]:
            row[f"{t}_atropos_ml"] = "n/a"
        person = people.get(row["participant_id"], {})
        row["age"], row["sex"] = person.get("age", "n/a"), person.get("sex", "n/a")
        rows.append(row)
    return rows


def classical_volumes(out_dir: Path, rows: list[dict]) -> bool:
    """Fill the ``*_atropos_ml`` columns: Atropos k-means (:mod:`phys_bids.models.classical`) on
    each scan's preprocessed native T1w inside its brain mask - the same images and mask
    as the network's. Returns False (columns left n/a) when a scan lacks them."""
    import time

    from ..bids.outputs import derivative_path
    from ..models.classical import ClassicalSegmentationError, atropos_volumes

    t0 = time.time()
    for i, r in enumerate(rows):
        name = Path(r["source"]).name
        img_p = out_dir / derivative_path(name, suffix="T1w", desc="preproc")
        mask_p = out_dir / derivative_path(name, suffix="mask", desc="brain")
        if not (img_p.exists() and mask_p.exists()):
            log.info("classical segmentation skipped: %s has no preprocessed T1w", name)
            return False
        img = nib.load(str(img_p))
        mask = np.asanyarray(nib.load(str(mask_p)).dataobj) > 0
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        try:
            vols = atropos_volumes(img.get_fdata(dtype=np.float32), mask, voxel_ml)
        except ClassicalSegmentationError as err:
            log.warning("classical segmentation of %s: %s; its *_atropos_ml stay n/a", name,
                        err)
            continue
        for t, v in vols.items():
            r[f"{t}_atropos_ml"] = f"{v:.4f}"
        log.info("classical segmentation %d/%d (%s): GM %.1f WM %.1f CSF %.1f mL (%.0f s)",
                 i + 1, len(rows), name, vols["GM"], vols["WM"], vols["CSF"],
                 time.time() - t0)
    return True
