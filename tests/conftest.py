import os

import pytest
import torch

torch.set_num_threads(1)  # two threads collapse when the 2 cores are shared
os.environ.setdefault("INNERPROBE_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
