"""torch.compile and device paths: results identical to the eager CPU path within float32 tolerance.

CUDA tests skip cleanly without a GPU; the CPU compile test runs everywhere (inductor on CPU).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastism_torch as ft
from conftest import assert_close_to_naive, random_onehot, scale_weights

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_model():
    return scale_weights(nn.Sequential(
        nn.Conv1d(4, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(16, 16, 5, padding=4, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32, 3)))


def test_compiled_cpu_matches_naive():
    m = small_model()
    x = random_onehot(2, 64)
    fast = ft.FastISM(m, 64, compile=True, batch_size=256)
    assert_close_to_naive(fast.saturation_mutagenesis(x), ft.NaiveISM(m, 64).saturation_mutagenesis(x))


def test_user_batch_size_that_does_not_fit_gets_a_message(monkeypatch):
    m = small_model()
    fast = ft.FastISM(m, 64, batch_size=64)
    from fastism_torch import execute

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(execute.Executor, "run", oom)
    with pytest.raises(ValueError, match=r"batch_size=64 does not fit .*batch_size=32"):
        fast(random_onehot(1, 64))


def test_auto_batch_halves_on_out_of_memory(monkeypatch):
    m = small_model()
    fast = ft.FastISM(m, 64)
    from fastism_torch import execute
    real, seen = execute.Executor.run, []

    def flaky(self, ref, s_idx, r_idx, values, batch, *rest):
        seen.append(batch)
        if len(seen) == 1:
            raise torch.OutOfMemoryError("simulated")
        return real(self, ref, s_idx, r_idx, values, batch, *rest)
    monkeypatch.setattr(execute.Executor, "run", flaky)
    x = random_onehot(1, 64)
    out = fast(x)
    assert seen[1] == seen[0] // 2
    assert_close_to_naive(out, ft.NaiveISM(m, 64)(x))


def test_bfloat16_autocast_close_to_float32():
    m = small_model()
    x = random_onehot(2, 64)
    ref = ft.NaiveISM(m, 64).saturation_mutagenesis(x)
    low = ft.FastISM(m, 64, dtype=torch.bfloat16, test_correctness=False).saturation_mutagenesis(x)
    rel = float((low - ref).abs().max() / ref.abs().max())
    assert rel < 0.05, rel                      # bfloat16 has ~3 significant digits
    assert low.dtype == torch.float32


@cuda
@pytest.mark.gpu
def test_cuda_eager_and_compiled_match_cpu():
    m = small_model()
    x = random_onehot(3, 64)
    cpu = ft.NaiveISM(m, 64).saturation_mutagenesis(x)
    for compile_ in (False, True):
        gpu = ft.FastISM(m, 64, device="cuda", compile=compile_).saturation_mutagenesis(x.cuda())
        assert gpu.device.type == "cuda"
        assert_close_to_naive(gpu.cpu(), cpu)
