from pathlib import Path

import pytest


def data_dir() -> Path:
    from phys_bids.models.evaluation import development_data

    return development_data()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow to run"))
        if "realdata" in item.keywords and not data_dir().is_dir():
            item.add_marker(pytest.mark.skip(
                reason=f"needs the development data at {data_dir()} (set PHYS_BIDS_DATA)"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def shared_data() -> Path:
    return data_dir()
