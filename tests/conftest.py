import os

import pyro
import pytest
import torch

# The whole suite runs in verify mode: every run is analysed afresh and an estimator raises
# where its cached plan would differ from the run's own data flow (design.md §3.4).
os.environ.setdefault("SCG_VERIFY", "1")


@pytest.fixture(autouse=True)
def _float64_and_seed():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    yield
    torch.set_default_dtype(old)
