"""torch.compile and device paths: results identical to the eager CPU path within float32 tolerance.

The CPU compile test runs everywhere (inductor on CPU); the CUDA versions are in test_gpu.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastism_torch as ft
from helpers import assert_close_to_naive, random_onehot, scale_weights

def small_model():
    return scale_weights(nn.Sequential(
        nn.Conv1d(4, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(16, 16, 5, padding=4, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32, 3)))


def test_compiled_cpu_matches_naive_with_one_graph():
    """Inductor on the CPU, the static kernels GPUs use: many groups and batches of edits (edge groups, a padded
    last batch, pooling by 3 whose output length dynamo would guard on), one sequence and then three: one
    compiled graph in all, the self-check's included (edge windows of their own width or a one-row cache each
    compiled another, 20-40 s per graph on a GPU machine)."""
    m = scale_weights(nn.Sequential(
        nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(3),
        nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool1d(4), nn.Flatten(), nn.Linear(16 * 5, 3)))
    x = random_onehot(3, 64)
    fast = ft.FastISM(m, 64, compile=True, batch_size=40)
    ex = fast._engine(tuple((i, i + 1) for i in range(64)))
    assert ex.edit.static
    calls = []
    real = ex.edit.module
    ex.edit.module = lambda **feed: calls.append(feed["values"].shape[0]) or real(**feed)
    naive = ft.NaiveISM(m, 64).saturation_mutagenesis(x)
    assert_close_to_naive(fast.saturation_mutagenesis(x[:1]), naive[:1])
    assert_close_to_naive(fast.saturation_mutagenesis(x), naive)
    assert len(calls) >= 10 and fast.compiled_graphs == 1, (len(calls), fast.compiled_graphs)


def test_user_batch_size_that_does_not_fit_gets_a_message(monkeypatch):
    m = small_model()
    fast = ft.FastISM(m, 64, batch_size=64)
    from fastism_torch import execute

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(execute.Executor, "batches", oom)
    with pytest.raises(ValueError, match=r"batch_size=64 does not fit .*batch_size=32"):
        fast(random_onehot(1, 64))


def test_out_of_memory_halves_the_batch_and_keeps_what_is_done(monkeypatch):
    m = small_model()
    fast = ft.FastISM(m, 64)
    monkeypatch.setattr(fast, "_auto_batch", lambda ex: 48)
    ex = fast._engine(fast.change_ranges)
    real, calls = ex.edit.module, []

    def flaky(**feed):
        calls.append(feed["values"].shape[0])
        if len(calls) == 3:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED (simulated)")   # cuDNN's way of saying OOM
        return real(**feed)
    ex.edit.module = flaky
    x = random_onehot(1, 64)
    out = fast.saturation_mutagenesis(x)
    assert calls[:3] == [48, 48, 48] and set(calls[3:]) == {24}
    assert sum(calls) - calls[2] == 3 * 64          # every edit computed once: the two done batches are kept
    assert_close_to_naive(out, ft.NaiveISM(m, 64).saturation_mutagenesis(x))


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    fast = ft.FastISM(small_model(), 64)
    ex = fast._engine(fast.change_ranges)

    def broken(**feed):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    ex.edit.module = broken
    with pytest.raises(RuntimeError, match="illegal memory access"):
        fast(random_onehot(1, 64))


def test_bfloat16_autocast_close_to_float32():
    m = small_model()
    x = random_onehot(2, 64)
    ref = ft.NaiveISM(m, 64).saturation_mutagenesis(x)
    low = ft.FastISM(m, 64, dtype=torch.bfloat16, test_correctness=False).saturation_mutagenesis(x)
    rel = float((low - ref).abs().max() / ref.abs().max())
    assert rel < 0.05, rel                      # bfloat16 has ~3 significant digits
    assert low.dtype == torch.float32
