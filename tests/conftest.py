import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def short_load_samples(monkeypatch):
    """Sampling the machine's busy cores sleeps half a second per measurement; tests need no accurate load."""
    monkeypatch.setattr("hwbcnet.hardware.machine.BUSY_SAMPLE_SECONDS", 0.01)
