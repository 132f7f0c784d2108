"""Test-suite hooks: tests marked ``cuda`` are skipped, with the reason, where no GPU is present."""

import pytest
import torch

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
