"""The precision policy never crashes on, and never leaves changed, a caller's PyTorch settings (issue 22).

PyTorch has two float32 precision APIs (the legacy ``set_float32_matmul_precision`` / ``allow_tf32`` switches and
the per-backend ``fp32_precision`` settings); where they disagree its legacy getters raise.  Each scenario below
is a caller's setting through one API, the other, per backend, or a mix; FastISM must build, match naive ISM and
leave every setting as the caller made it -- also when tangermeme's ``torch.export`` runs in the same process
-- and inside its block set both APIs consistently.  Threads and deterministic mode likewise.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch import precision
from fastism_torch.precision import PRECISION_KEYS, float32_precision, precision_state
from helpers import assert_close_to_naive, random_onehot, scale_weights

pytestmark = pytest.mark.skipif(not precision.NEW_API, reason="PyTorch without the fp32_precision API")

L = 40


def _defaults():
    """PyTorch's start-up state as near as it can be set again: legacy matmul "highest", cuDNN TF32 on (which
    sets cuDNN's conv and RNN settings to TF32: their start-up value cannot be set from Python), every other
    per-op setting inheriting."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = True
        for key in PRECISION_KEYS:
            if key not in (("cuda", "conv"), ("cuda", "rnn")):
                torch._C._set_fp32_precision_setter(*key, "none")


def _legacy_high():
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = False


def _legacy_flags():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")


def _new_global():
    torch.backends.fp32_precision = "tf32"


def _new_cuda_matmul():                 # the reproduction
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def _new_per_backend():
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.mkldnn.conv.fp32_precision = "tf32"


def _mixed():
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


SCENARIOS = {"default": lambda: None, "legacy_high": _legacy_high, "legacy_flags": _legacy_flags,
             "new_global": _new_global, "new_cuda_matmul": _new_cuda_matmul, "new_per_backend": _new_per_backend,
             "mixed": _mixed}


def observe() -> dict:
    """What a caller can see, read the way a caller reads it (not through precision.py): every resolved per-op
    value, each legacy getter's value or the fact that it raises, and the resolved values after the generic
    setting is changed (so "set" and "inherited" are told apart), put back after."""
    def legacy():
        out = {}
        for name, get in [("matmul", torch.get_float32_matmul_precision),
                          ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                          ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32)]:
            try:
                out[name] = get()
            except RuntimeError:
                out[name] = "raises"
        return out

    def resolved():
        return {k: torch._C._get_fp32_precision_getter(*k) for k in PRECISION_KEYS}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = {"resolved": resolved(), "legacy": legacy()}
        generic = torch.backends.fp32_precision
        for probe in ("ieee", "tf32"):
            torch.backends.fp32_precision = probe
            seen[probe] = resolved()
        torch.backends.fp32_precision = generic
        assert resolved() == seen["resolved"]
    return seen


@pytest.fixture(params=list(SCENARIOS))
def user_setting(request):
    _defaults()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCENARIOS[request.param]()
    yield request.param
    _defaults()


@pytest.fixture(scope="module")
def model_and_want():
    _defaults()
    torch.manual_seed(0)
    m = scale_weights(nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1),
                                    nn.ReLU(), nn.Flatten(), nn.Linear(8 * L, 3)))
    x = random_onehot(2, L)
    return m, x, ft.NaiveISM(m, L).saturation_mutagenesis(x).double()


@pytest.mark.parametrize("tf32", [False, True])
def test_fastism_runs_exact_and_leaves_the_callers_settings(user_setting, model_and_want, tf32):
    m, x, want = model_and_want
    before, state = observe(), precision_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no deprecation warning from our use of the legacy API either
        fast = ft.FastISM(m, L, tf32=tf32)      # self-check against naive ISM on
        got = fast.saturation_mutagenesis(x)
        ft.NaiveISM(m, L, tf32=tf32).saturation_mutagenesis(x[:1])
    assert_close_to_naive(got.double(), want)    # oneDNN in IEEE float32 on the CPU even with tf32=True / bf16
    assert observe() == before
    assert precision_state() == state


@pytest.mark.parametrize("tf32", [False, True])
def test_inside_a_cuda_block_both_apis_agree(user_setting, tf32):
    """torch.compile, torch.export and inductor read the legacy getters: they must not raise inside the block;
    and after it, everything is as the caller set it."""
    mode = "tf32" if tf32 else "ieee"
    before, state = observe(), precision_state()
    with float32_precision(tf32, "cuda"):
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        assert torch.backends.cuda.matmul.allow_tf32 == tf32
        assert torch.backends.cudnn.allow_tf32 == tf32
        assert torch.backends.cuda.matmul.fp32_precision == mode
        assert torch.backends.cudnn.conv.fp32_precision == mode
        assert torch._C._get_fp32_precision_getter("cuda", "rnn") == mode
        assert all(torch._C._get_fp32_precision_getter("mkldnn", op) == "ieee" for op in ("matmul", "conv", "rnn"))
    assert observe() == before
    assert precision_state() == state


def test_a_cpu_block_sets_onednn_only(user_setting):
    """On the CPU: oneDNN in IEEE, the matmul getters consistent; cuDNN's settings untouched (resolved and set)."""
    before = observe()
    cudnn = {k: v for k, v in precision_state()[0].items() if k[0] == "cuda" and k[1] != "matmul"}
    with float32_precision(True, "cpu"):
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert all(torch._C._get_fp32_precision_getter("mkldnn", op) == "ieee" for op in ("matmul", "conv", "rnn"))
        assert {k: v for k, v in precision_state()[0].items() if k[0] == "cuda" and k[1] != "matmul"} == cudnn
        assert observe()["legacy"]["cudnn.allow_tf32"] == before["legacy"]["cudnn.allow_tf32"]
    assert observe() == before


def test_restored_after_an_exception(user_setting):
    before = observe()
    with pytest.raises(KeyError):
        with float32_precision(True):
            raise KeyError("inside")
    assert observe() == before


def test_nested_blocks_restore_each_level():
    _defaults()
    try:
        _new_per_backend()
        outer = observe()
        with float32_precision(True):
            inner = observe()
            with float32_precision(False):
                assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert observe() == inner
        assert observe() == outer
    finally:
        _defaults()


FRESH = """
import torch, warnings
from torch import nn
from fastism_torch.precision import float32_precision, precision_state
{setting}
before = precision_state()
from fastism_torch import FastISM
m = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 20, 2))
FastISM(m, 20).saturation_mutagenesis(torch.eye(4)[torch.randint(0, 4, (1, 20))].mT.contiguous())
assert precision_state() == before, (precision_state(), before)      # a CPU engine: exactly, start-up values too
{check}
with float32_precision(False, "cuda"):
    assert not torch.backends.cudnn.allow_tf32
after = precision_state()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.conv.fp32_precision == "tf32"
# a CUDA block: cuDNN's start-up "default" comes back as the TF32 it resolved to (PyTorch cannot set it)
expect = {{k: ("tf32" if v == "default" else v) for k, v in before[0].items()}}
assert after == (expect, *before[1:]), (after, before)
print("ok")
"""


@pytest.mark.parametrize("setting, check", [
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'",         # the reproduction
     "assert torch.backends.cuda.matmul.fp32_precision == 'tf32'"),
    ("", "assert torch.backends.cudnn.conv.fp32_precision == 'tf32'"),   # PyTorch's start-up state
])
def test_in_a_fresh_process(setting, check):
    """Setting the recommended API first, then FastISM(...), raised "mix of the legacy and new APIs" before.
    In a fresh process cuDNN's conv/RNN settings hold PyTorch's start-up default, which no other test sees."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", FRESH.format(setting=setting, check=check)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("scenario", ["new_global", "new_per_backend", "mixed"])
def test_with_tangermeme_export_in_the_same_process(scenario, model_and_want):
    """tangermeme's fast=True captures with torch.export, before and after FastISM, under the caller's setting:
    both run, FastISM exact, and FastISM's call changes nothing (exactly, set or inherited)."""
    tsm = pytest.importorskip("tangermeme.saturation_mutagenesis")
    m, x, want = model_and_want
    _defaults()
    SCENARIOS[scenario]()
    try:
        before = observe()
        slow = dict(fast=True, raw_outputs=True, device="cpu", verbose=False)
        old = tsm._FAST_MIN_SECONDS, tsm._FAST_MAX_RELATIVE_TIME
        tsm._FAST_MIN_SECONDS, tsm._FAST_MAX_RELATIVE_TIME = 0.0, float("inf")   # always its fast path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = tsm.saturation_mutagenesis(m, x, **slow).y_hat
                around = observe()
                fast = ft.FastISM(m, L).saturation_mutagenesis(x)
                assert observe() == around
                again = tsm.saturation_mutagenesis(m, x, **slow).y_hat
        finally:
            tsm._FAST_MIN_SECONDS, tsm._FAST_MAX_RELATIVE_TIME = old
        # torch.export's backend flag contexts write the *resolved* per-backend values back as set values (so a
        # later change of the generic setting no longer reaches them): PyTorch's doing, not ours; what the caller
        # reads is unchanged
        after = observe()
        assert (after["resolved"], after["legacy"]) == (before["resolved"], before["legacy"])
        assert_close_to_naive(fast.double(), want)
        # tangermeme runs under the caller's own setting (bf16 oneDNN matmuls in two scenarios): alike both times
        assert_close_to_naive(again.double(), first.double())
    finally:
        _defaults()


def test_threads_and_deterministic_mode_unchanged_and_exact(model_and_want, kernel_form):
    """With deterministic algorithms on (and fill of uninitialised memory, so a read of an unwritten buffer shows
    as NaN), FastISM runs, matches naive ISM, and leaves threads and the deterministic settings as they were."""
    m, x, want = model_and_want
    threads, interop = torch.get_num_threads(), torch.get_num_interop_threads()
    torch.use_deterministic_algorithms(True)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        got = ft.FastISM(m, L).saturation_mutagenesis(x)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    assert_close_to_naive(got.double(), want)
    assert (torch.get_num_threads(), torch.get_num_interop_threads()) == (threads, interop)


def test_cudnn_benchmark_restored():
    before = torch.backends.cudnn.benchmark
    for on in (True, False, None):
        with precision.cudnn_benchmark(on):
            assert torch.backends.cudnn.benchmark == (before if on is None else on)
        assert torch.backends.cudnn.benchmark == before


def test_deterministic_mode_falls_back_to_naive_for_an_op_without_a_deterministic_kernel(
        model_and_want, monkeypatch, caplog):
    """On a GPU some op of the fast path may have no deterministic kernel (none does on the CPU): PyTorch
    raises; the edits not yet written then run by naive ISM (the model's own ops), with a warning -- no crash, no
    edit lost or computed twice, and still equal to naive ISM."""
    import numpy as np
    from fastism_torch.execute import Executor
    m, x, want = model_and_want
    real, calls = Executor.batches, []

    def half_then_raise(self, ref, edits, sinks, batching):
        half = len(edits.seq) // 2
        yield from real(self, ref, edits.subset(np.arange(half)), sinks, batching)
        calls.append(len(edits.seq))
        raise RuntimeError("index_copy_cuda does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'.")

    fast = ft.FastISM(m, L, batch_size=16)
    monkeypatch.setattr(Executor, "batches", half_then_raise)
    with pytest.raises(RuntimeError, match="deterministic"):     # not in deterministic mode: PyTorch's error
        fast.saturation_mutagenesis(x)
    torch.use_deterministic_algorithms(True)
    try:
        got = fast.saturation_mutagenesis(x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(calls) == 2
    assert "run by naive ISM" in caplog.text
    assert_close_to_naive(got.double(), want)
