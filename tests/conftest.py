import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)

# Property-based tests: "ci" (the default) is small and derandomized, so CI runs the same examples every time and
# cannot flake; `pytest --hypothesis-profile long` draws many fresh examples for a local hunt (failures are kept in
# .hypothesis/ and replayed first on the next run). Tests that set max_examples themselves keep their own count.
settings.register_profile("ci", max_examples=12, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")  # before pytest_configure, so --hypothesis-profile still wins


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def short_load_samples(monkeypatch):
    """Sampling the machine's busy cores sleeps half a second per measurement; tests need no accurate load."""
    monkeypatch.setattr("hwbcnet.hardware.machine.BUSY_SAMPLE_SECONDS", 0.01)
