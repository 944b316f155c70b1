"""Writing the BIDS-Derivatives dataset: atomic files, shared files under a lock.

Every file goes through :func:`phys_bids.io.atomic_write` (temporary file, then
rename), so an interrupted run never leaves a half-written derivative. Files shared
by all subjects (``dataset_description.json``, ``dseg.tsv``, ``.bidsignore``) are
written under an exclusive lock on ``OUTPUT_DIR/.phys-bids.lock`` and have the same
content whichever process writes them, so several participant runs can share one
output directory. A file whose content would not change is not rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from ..io import atomic_write, sha256
from ..physics.tissues import TARGETS

__all__ = ["DerivativesWriter", "BIDSIGNORE", "dataset_description", "json_text",
           "holds_other_dataset"]

#: Outputs the BIDS specification does not describe yet (reports, logs, transforms,
#: morphometry tables of BEP011); listed so that the validator does not reject them.
#: (bids-validator-deno 2.x matches bare folder names at any depth, not "figures/".)
BIDSIGNORE = ("*.html", "logs", "figures", "*_xfm.*", "*_morph.tsv", "*_morph.json", "group")


def json_text(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def dataset_description(bids_dir: Path, version: str, container: dict | None) -> dict:
    gen = {"Name": "phys-bids", "Version": version,
           "Description": "physics-aware segmentation and tissue volumes",
           "CodeURL": "https://github.com/phys-bids/phys-bids"}
    if container:
        gen["Container"] = container
    return {
        "Name": "phys-bids derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [gen],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
    }


def holds_other_dataset(out_dir) -> bool:
    """Does ``out_dir`` hold a dataset that phys-bids did not write (by its description)?"""
    path = Path(out_dir) / "dataset_description.json"
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
        return not (old["DatasetType"] == "derivative"
                    and old["GeneratedBy"][0]["Name"] == "phys-bids")
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return True


def dseg_tsv() -> str:
    rows = ["index\tname\tabbreviation", "0\tbackground\tBG"]
    full = {"GM": "gray matter", "WM": "white matter", "CSF": "cerebrospinal fluid"}
    rows += [f"{k}\t{full[v]}\t{v}" for k, v in enumerate(TARGETS) if k]
    return "\n".join(rows) + "\n"


class DerivativesWriter:
    """Writes into one derivatives folder."""

    def __init__(self, out_dir, bids_dir, *, version: str, container: dict | None = None):
        self.root = Path(out_dir)
        self.bids_dir = Path(bids_dir)
        self.version = version
        self.container = container

    @contextlib.contextmanager
    def lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".phys-bids.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def init_dataset(self) -> None:
        """The dataset-level files (idempotent, safe under concurrency)."""
        desc = dataset_description(self.bids_dir, self.version, self.container)
        with self.lock():
            if holds_other_dataset(self.root):
                raise FileExistsError(f"OUTPUT_DIR {self.root} holds another dataset (its "
                                      "dataset_description.json is not phys-bids'); choose "
                                      "an empty folder")
            self.write_text("dataset_description.json", json_text(desc))
            self.write_text("dseg.tsv", dseg_tsv())
            self.write_text(".bidsignore", "\n".join(BIDSIGNORE) + "\n")
            readme = self.root / "README.md"
            if not readme.exists():
                self.write_text("README.md", "# phys-bids derivatives\n\nWritten by phys-bids "
                                f"{self.version}; every output is described in its docs "
                                "(docs/outputs.md).\n")

    def _target(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, rel: str, data: bytes) -> Path:
        p = self._target(rel)
        if p.exists() and p.read_bytes() == data:
            return p
        atomic_write(p, lambda tmp: Path(tmp).write_bytes(data))
        return p

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, data) -> Path:
        return self.write_text(rel, json_text(data))

    def copy_file(self, rel: str, src) -> Path:
        p = self._target(rel)
        if p.exists() and os.path.getsize(p) == os.path.getsize(src) and sha256(p) == sha256(src):
            return p
        atomic_write(p, lambda tmp: shutil.copyfile(src, tmp))
        return p

    def save_image(self, rel: str, img) -> Path:
        """Save a nibabel image (through a temporary file in the output folder)."""
        import nibabel as nib

        p = self._target(rel)
        tmp = p.with_name(f".{p.name.split('.')[0]}.stage{os.getpid()}.nii.gz")
        try:
            nib.save(img, str(tmp))
            return self.copy_file(rel, tmp)
        finally:
            tmp.unlink(missing_ok=True)
