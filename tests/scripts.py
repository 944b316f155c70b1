"""Loading the repository's bench/ and training/ scripts in tests."""

import importlib.util
import sys
from pathlib import Path

import pytest


def bench_script(name: str, folder: str = "bench"):
    """A script of bench/ (or ``folder``) as a module (skips where the checkout has no
    such folder, e.g. an installed package only). Its folder is on ``sys.path`` while it
    loads, as when it runs as a script, so that it imports its sibling scripts."""
    script = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    if not script.is_file():
        pytest.skip(f"{script} not in this checkout (installed package only)")
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module


def training_script(name: str):
    """A script of training/ as a module."""
    return bench_script(name, folder="training")
