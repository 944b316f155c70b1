"""Small file helpers shared by every layer: content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["sha256", "atomic_write", "read_json"]


def sha256(path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` then rename: readers never see a partial file.

    The temporary file sits next to ``path`` and keeps its suffixes (so that writers
    choosing the format from the name, like nibabel, still work).
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(suffix)]}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path, what: str, error: type[Exception]):
    """Parse a JSON file named ``what`` in messages; problems raise ``error`` (one line)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON: {err}") from None
