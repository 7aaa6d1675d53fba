"""Fixtures shared by several test modules (none is autouse: a module asks for what it needs)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, the count before restored after it: the networks in these
    tests are tiny, and thread hand-offs on a busy machine would dominate their timing.

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
