"""Helpers of the application tests: run the CLI, hash folders."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def tree_hashes(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(rel.startswith(e) for e in exclude):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run ``python -m phys_bids ARGS`` in a fresh process."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "phys_bids", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=e)


def make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~0o222)


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
