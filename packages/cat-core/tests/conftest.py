"""Fixtures shared by the cat-core tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: its tensors are tiny and the cores shared, so a second
    OpenMP thread only adds contention stalls. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
