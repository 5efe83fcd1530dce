from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests compare floats bitwise in places; one intra-op thread keeps reductions in
    # one order and leaves the second core to the other test process.
    torch.set_num_threads(1)
    yield
