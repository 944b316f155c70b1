"""The input dataset: checks, a pybids index cached in the work dir, T1w selection.

Every problem raises :class:`DatasetError` with one actionable line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_json
from .derivatives import holds_other_dataset
from .sidecars import parse_entities

__all__ = ["DatasetError", "T1wRun", "check_dataset", "check_output_dirs", "index_dataset",
           "load_filter_file", "select_t1w", "strip_label", "ALLOWED_FILTER_QUERIES"]

#: Queries of a ``--bids-filter-file`` (fMRIPrep's format), and the entities each may use.
ALLOWED_FILTER_QUERIES = {"t1w"}
_FILTER_ENTITIES = {"session", "acquisition", "run", "reconstruction", "ceagent", "datatype",
                    "suffix", "extension", "part", "echo", "inv", "flip", "mt"}
_SKIP_DIRS = {"derivatives", "sourcedata", "code", "stimuli", ".git", ".datalad"}


class DatasetError(ValueError):
    """The input dataset or the requested selection cannot be processed."""


@dataclass(frozen=True)
class T1wRun:
    """One T1-weighted image to process."""

    path: Path
    subject: str
    session: str | None
    entities: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def relpath(self) -> str:
        """Path relative to the dataset root (``sub-X/[ses-Y/]anat/<name>``)."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        return "/".join([*parts, "anat", self.name])

    @property
    def label(self) -> str:
        """Short name for logs and progress: the file name without extension."""
        return self.name.split(".")[0]


def strip_label(value: str, prefix: str) -> str:
    """``sub-01`` or ``01`` -> ``01``."""
    value = value.strip()
    return value[len(prefix):] if value.startswith(prefix) else value


def check_dataset(bids_dir) -> Path:
    """The dataset root, resolved; it must exist and hold a valid dataset_description.json."""
    root = Path(bids_dir).expanduser()
    if not root.exists():
        raise DatasetError(f"BIDS_DIR {root} does not exist; give the path of a BIDS dataset")
    if not root.is_dir():
        raise DatasetError(f"BIDS_DIR {root} is a file, not a folder; give the dataset's root "
                           "folder")
    desc = root / "dataset_description.json"
    if not desc.is_file():
        raise DatasetError(f"BIDS_DIR {root} is not a BIDS dataset (no dataset_description.json)"
                           "; point to the dataset root")
    try:
        data = json.loads(desc.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{desc} is not valid JSON ({err}); fix the file") from None
    if not isinstance(data, dict) or "Name" not in data or "BIDSVersion" not in data:
        raise DatasetError(f"{desc} must be a JSON object with Name and BIDSVersion")
    return root.resolve()


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output_dirs(bids_dir: Path, output_dir, work_dir) -> tuple[Path, Path]:
    """OUTPUT_DIR and the work dir: outside BIDS_DIR, creatable and writable."""
    out = Path(output_dir).expanduser().resolve()
    work = Path(work_dir).expanduser().resolve()
    for what, p in (("OUTPUT_DIR", out), ("--work-dir", work)):
        if _inside(p, bids_dir):
            raise DatasetError(f"{what} {p} is inside BIDS_DIR {bids_dir}; the input dataset is "
                               "never written to - choose a folder outside it")
        if _inside(bids_dir, p):
            raise DatasetError(f"BIDS_DIR {bids_dir} is inside {what} {p}; choose a separate "
                               "folder")
        if p.exists() and not p.is_dir():
            raise DatasetError(f"{what} {p} exists and is not a folder")
        probe = p
        while not probe.exists():
            probe = probe.parent
        try:  # access() says yes to root even on read-only mounts: really try
            fd, tmp = tempfile.mkstemp(prefix=".phys-bids-probe", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise DatasetError(f"{what} {p} is not writable ({err.strerror} in {probe}); "
                               "choose another folder or fix its permissions") from None
    if holds_other_dataset(out):
        raise DatasetError(f"OUTPUT_DIR {out} holds another dataset (its "
                               "dataset_description.json is not from phys-bids); choose an "
                               "empty folder")
    return out, work


def load_filter_file(path) -> dict:
    """A ``--bids-filter-file``: ``{"t1w": {<pybids entity>: value | [values] | null}}``."""
    data = read_json(path, "--bids-filter-file", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"--bids-filter-file {path}: expected a JSON object like "
                           '{"t1w": {"acquisition": "mprage"}}')
    unknown = sorted(set(data) - ALLOWED_FILTER_QUERIES)
    if unknown:
        raise DatasetError(f"--bids-filter-file {path}: unknown query {unknown}; phys-bids "
                           f"reads {sorted(ALLOWED_FILTER_QUERIES)}")
    for query, ents in data.items():
        if not isinstance(ents, dict):
            raise DatasetError(f"--bids-filter-file {path}: \"{query}\" must be an object of "
                               "entity: value")
        bad = sorted(set(ents) - _FILTER_ENTITIES)
        if bad:
            raise DatasetError(f"--bids-filter-file {path}: \"{query}\" uses unknown entities "
                               f"{bad}; allowed: {sorted(_FILTER_ENTITIES)}")
    return data


def _fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime (not its content)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in sorted(filenames):
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def index_dataset(root: Path, work_dir: Path):
    """A pybids layout of ``root`` whose database lives in the work dir and is reused while
    the dataset's files are unchanged (a second run does not re-index)."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    db = Path(work_dir) / "bids_db"
    stamp = db / "phys-bids-fingerprint.txt"
    fp = _fingerprint(root)
    reuse = stamp.exists() and stamp.read_text() == f"{root}\n{fp}"
    db.mkdir(parents=True, exist_ok=True)
    try:
        layout = BIDSLayout(str(root), validate=False, database_path=str(db),
                            reset_database=not reuse,
                            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))
    except Exception as err:  # pybids raises many kinds for odd datasets
        raise DatasetError(f"cannot index BIDS_DIR {root} ({type(err).__name__}: {err})"
                           ) from None
    stamp.write_text(f"{root}\n{fp}")
    return layout


def select_t1w(layout, *, participants: list[str] | None = None,
               sessions: list[str] | None = None, bids_filter: dict | None = None
               ) -> dict[str, list[T1wRun]]:
    """T1w runs per subject. Raises for absent participants or sessions; a requested
    subject without any T1w keeps an empty list (reported as a failure of that subject)."""
    available = sorted(layout.get_subjects())
    if not available:
        raise DatasetError(f"no sub-* folders in {layout.root}; is this the dataset root?")
    if participants:
        wanted = sorted({strip_label(p, "sub-") for p in participants})
        missing = [p for p in wanted if p not in available]
        if missing:
            raise DatasetError(f"participant(s) {', '.join(missing)} not found in BIDS_DIR; "
                               f"available: {', '.join(available[:20])}"
                               + (" ..." if len(available) > 20 else ""))
    else:
        wanted = available
    query = {"suffix": "T1w", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
    query.update((bids_filter or {}).get("t1w", {}))
    if sessions:
        ses = sorted({strip_label(s, "ses-") for s in sessions})
        all_ses = set(layout.get_sessions())
        missing = [s for s in ses if s not in all_ses]
        if missing:
            raise DatasetError(f"session(s) {', '.join(missing)} not found in BIDS_DIR; "
                               f"available: {', '.join(sorted(all_ses)) or 'none'}")
        query["session"] = ses
    out: dict[str, list[T1wRun]] = {}
    for sub in wanted:
        files = layout.get(subject=sub, **query)
        runs = []
        for f in sorted(files, key=lambda f: f.path):
            ents, _ = parse_entities(Path(f.path).name)
            runs.append(T1wRun(Path(f.path), sub, ents.get("ses"), ents))
        out[sub] = runs
    return out


def ambiguous_runs(runs: list[T1wRun]) -> list[str]:
    """Names of images that share every entity with another (e.g. .nii and .nii.gz)."""
    seen: dict[str, str] = {}
    dup = []
    for r in runs:
        key = r.name.split(".")[0]
        if key in seen:
            dup += [seen[key], r.name]
        seen[key] = r.name
    return dup
