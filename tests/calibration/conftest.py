"""Tiny-model forwards are dominated by thread synchronisation on a busy 2-core box: run them single-threaded."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
