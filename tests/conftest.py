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


@pytest.fixture(autouse=True, scope="session")
def fast_path_always():
    """FastISM runs its own path in every test, and builds at construction: its cost model would otherwise run
    small models' calls as naive ISM (a test comparing FastISM with NaiveISM would compare naive ISM with itself),
    and without the self-check it would build nothing until a call pays for it (module-scoped fixtures included,
    hence the session scope).  The cost model and the lazy engine have their own tests, which turn it back on."""
    mp = pytest.MonkeyPatch()
    mp.setattr(ft.FastISM, "naive_when_cheaper", False)
    yield
    mp.undo()
