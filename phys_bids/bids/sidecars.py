"""Read a BIDS image's sidecar with the inheritance principle applied.

A JSON file applies to an image when it lies in the image's folder or one of its
parents inside the dataset, has the same suffix, and all its entities appear in the
image's name with the same values. Files are merged from the dataset root down (and,
in one folder, from fewer to more entities): deeper and more specific files win.

>>> parse_entities("sub-01_ses-pre_acq-mprage_run-2_T1w.nii.gz")
({'sub': '01', 'ses': 'pre', 'acq': 'mprage', 'run': '2'}, 'T1w')
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["parse_entities", "load_sidecar", "strip_extension", "SidecarError"]


class SidecarError(ValueError):
    """A sidecar cannot be read (one actionable line)."""


def strip_extension(name: str) -> str:
    """File name without its (possibly double) extension."""
    for ext in (".nii.gz", ".nii", ".json", ".tsv"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0]


def parse_entities(name: str) -> tuple[dict[str, str], str]:
    """Entities and suffix of a BIDS file name."""
    parts = strip_extension(Path(name).name).split("_")
    ents = {}
    for p in parts[:-1]:
        if "-" in p:
            k, v = p.split("-", 1)
            ents[k] = v
    return ents, parts[-1]


def load_sidecar(image: str | Path, root: str | Path) -> dict:
    """The merged sidecar of ``image`` inside the dataset ``root``."""
    image, root = Path(image).resolve(), Path(root).resolve()
    ents, suffix = parse_entities(image.name)
    folders = [image.parent]
    while folders[-1] != root and root in folders[-1].parents:
        folders.append(folders[-1].parent)
    merged: dict = {}
    for folder in reversed(folders):
        cands = []
        for js in folder.glob(f"*{suffix}.json"):
            e, s = parse_entities(js.name)
            if s == suffix and all(ents.get(k) == v for k, v in e.items()):
                cands.append((len(e), js))
        for _, js in sorted(cands):
            try:
                data = json.loads(js.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise SidecarError(f"{js}: not valid JSON ({err}); fix or remove the file"
                                   ) from None
            if not isinstance(data, dict):
                raise SidecarError(f"{js}: a sidecar must be a JSON object")
            merged.update(data)
    return merged
