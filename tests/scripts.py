"""Loading the repository's bench/ scripts in tests."""

import importlib.util
from pathlib import Path

import pytest


def bench_script(name: str):
    """A script of bench/ as a module (skips where the checkout has no bench/)."""
    script = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    if not script.is_file():
        pytest.skip(f"{script} not in this checkout (installed package only)")
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
