"""Fixtures shared by the tests (helpers live in tests/helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest

import fastism_torch as ft


@pytest.fixture(params=["eager", "static"])
def kernel_form(request, monkeypatch):
    """Run a test with each kernel form of the edit graph: the CPU eager kernels and the static, sync-free ones
    that GPUs and torch.compile use (so the GPU's kernels are checked against naive ISM without a GPU)."""
    monkeypatch.setattr(ft.FastISM, "static_kernels", request.param == "static")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
