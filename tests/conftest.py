"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors, then restore. On a busy 2-core machine the
    intra-op sync between two threads costs 20-80x the work (measured: 39 s against 0.5 s for
    the Hutchinson test, 6.4 s against 0.1 s for one adaptive run); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
