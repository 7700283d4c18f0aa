"""CUDA: the fast path equals naive ISM on the CPU, launches no host synchronisation in its batch loop, keeps
results on the GPU, follows the TF32 policy, and the command-line tool runs on one GPU.

Every test here is marked ``gpu`` and skips without CUDA; ``bash scripts/gpu_check.sh part1`` runs them (then the
GPU benchmark) on a GPU machine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastism_torch as ft
from fastism_torch import models
from fastism_torch.execute import Edits
from helpers import assert_close_to_naive as _close, random_onehot
from fastism_torch.precision import GPU_FLOAT32_RTOL



def assert_close_to_naive(a, b, rtol=GPU_FLOAT32_RTOL):
    _close(a, b, rtol)


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CASES = {"basset": lambda L: models.basset(seq_len=L, num_outputs=3),
         "bpnet": lambda L: models.bpnet(seq_len=L, n_dilated=4),
         "factorized_basset": lambda L: models.factorized_basset(seq_len=L, num_outputs=2)}


@pytest.fixture(scope="module")
def cpu_naive():
    cache = {}

    def get(name, L, n=2):
        if (name, L) not in cache:
            m = CASES[name](L)
            x = random_onehot(n, L)
            cache[name, L] = m, x, ft.NaiveISM(m, L).saturation_mutagenesis(x)
        return cache[name, L]
    return get


@pytest.mark.parametrize("name, compile_", [(n, False) for n in CASES] + [
    ("basset", True), ("bpnet", "reduce-overhead")])          # compiling takes 30-45 s per model on an H100
def test_cuda_matches_cpu_naive(cpu_naive, name, compile_):
    m, x, want = cpu_naive(name, 200)
    fast = ft.FastISM(m, 200, device="cuda", compile=compile_, batch_size=256)   # self-check on the GPU
    got = fast.saturation_mutagenesis(x.cuda())
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert all(g.device.type == "cuda" for g in got)
    assert_close_to_naive(tuple(g.cpu() for g in got), want)
    if compile_:
        first = fast.compiled_graphs
        assert 1 <= first <= 3, first
        fast.saturation_mutagenesis(x.cuda())
        assert fast.compiled_graphs == first


def test_numpy_in_numpy_out_and_cpu_tensor_in_cpu_out(cpu_naive):
    m, x, want = cpu_naive("basset", 200)
    fast = ft.FastISM(m, 200, device="cuda")
    a, t = fast.saturation_mutagenesis(x.numpy()), fast.saturation_mutagenesis(x)
    assert isinstance(a, np.ndarray) and t.device.type == "cpu"
    assert_close_to_naive(t, want)


@pytest.mark.parametrize("name", ["basset", "bpnet"])
def test_batch_loop_never_synchronises(name):
    """``torch.cuda.set_sync_debug_mode("error")`` raises on any host synchronisation in the edit loop."""
    L = 200
    m = CASES[name](L)
    fast = ft.FastISM(m, L, device="cuda", batch_size=300)
    x = random_onehot(2, L).cuda()
    ex = fast._engine(tuple((i, i + 1) for i in range(L)))
    ref = ex.reference([x])
    s_idx, p_idx = np.repeat([0, 1], L), np.tile(np.arange(L), 2)
    values = torch.eye(4, device="cuda")[torch.arange(2 * L, device="cuda") % 4][:, None, :]
    sinks = [torch.empty((2 * L, *o.shape[1:]), device="cuda") for o in ft.execute.as_output_list(ref.outputs)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ex.run(ref, Edits(s_idx, p_idx, values, np.arange(2 * L)), sinks, ft.execute.Batching(300))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_tf32_policy():
    """IEEE float32 by default whatever the caller's TF32 setting (restored after); tf32=True checks at 5e-3."""
    L = 200
    m = CASES["basset"](L)
    x = random_onehot(2, L)
    want = ft.NaiveISM(m, L).saturation_mutagenesis(x)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        got = ft.FastISM(m, L, device="cuda").saturation_mutagenesis(x.cuda()).cpu()
        assert torch.backends.cudnn.allow_tf32                            # the caller's setting, restored
        assert_close_to_naive(got, want)
        loose = ft.FastISM(m, L, device="cuda", tf32=True).saturation_mutagenesis(x.cuda()).cpu()
        assert_close_to_naive(loose, want, rtol=5e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("setting", ["legacy", "new_global", "new_per_backend"])
def test_callers_precision_settings_on_cuda(cpu_naive, setting):
    """Whatever precision API the caller used (issue 22: the new one crashed FastISM), FastISM on CUDA runs IEEE
    float32 (exact), eager and compiled, and the caller's settings read the same after it."""
    import warnings
    from fastism_torch.precision import precision_state, restore_precision
    m, x, want = cpu_naive("basset", 200)
    saved = precision_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if setting == "legacy":
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
        elif setting == "new_global":
            torch.backends.fp32_precision = "tf32"
        else:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        before = precision_state()
        for compile_ in (False, True) if setting == "new_global" else (False,):    # compiling: ~35 s
            fast = ft.FastISM(m, 200, device="cuda", compile=compile_, batch_size=256)
            assert_close_to_naive(fast.saturation_mutagenesis(x.cuda()).cpu(), want)
            after = precision_state()
            assert after[1:] == before[1:]
            # cuDNN's start-up "default" conv/RNN settings come back as the TF32 they resolved to
            assert after[0] == {k: ("tf32" if v == "default" else v) for k, v in before[0].items()}
    finally:
        restore_precision(saved)


def test_deterministic_mode_on_cuda():
    """torch.use_deterministic_algorithms(True) on CUDA (cuBLAS needs its workspace setting, read once per
    process: a fresh process): FastISM runs (falling back to naive ISM for any op without a deterministic
    kernel), equals naive ISM, and two runs give identical results."""
    import os
    import subprocess
    import sys
    code = ("import torch, fastism_torch as ft\nfrom fastism_torch import models\n"
            "torch.use_deterministic_algorithms(True)\n"
            "m = models.bpnet(seq_len=200, n_dilated=4)\n"
            "x = torch.eye(4)[torch.randint(0, 4, (2, 200), generator=torch.Generator().manual_seed(0))].mT.contiguous()\n"
            "want = ft.NaiveISM(m, 200).saturation_mutagenesis(x)\n"
            "fast = ft.FastISM(m, 200, device='cuda', batch_size=256)\n"
            "a, b = (fast.saturation_mutagenesis(x.cuda()) for _ in range(2))\n"
            "a, b = (t if isinstance(t, tuple) else (t,) for t in (a, b))\n"
            "w = want if isinstance(want, tuple) else (want,)\n"
            "assert all(torch.equal(p, q) for p, q in zip(a, b))\n"
            "assert all(float((p.cpu() - q).abs().max()) <= 5e-5 * float(q.abs().max()) for p, q in zip(a, w))\n"
            "print('ok')\n")
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_bfloat16_on_cuda_close_to_float32(cpu_naive):
    m, x, want = cpu_naive("basset", 200)
    low = ft.FastISM(m, 200, device="cuda", dtype=torch.bfloat16).saturation_mutagenesis(x.cuda())
    assert low.dtype == torch.float32
    assert float((low.cpu() - want).abs().max() / want.abs().max()) < 0.05


def test_cli_single_gpu(tmp_path):
    from _cli_helpers import EXAMPLE_FA, EXAMPLE_MODEL, run_cli
    r = run_cli("ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", tmp_path / "gpu", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    r = run_cli("ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", tmp_path / "cpu", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    import h5py
    with h5py.File(tmp_path / "gpu.h5") as g, h5py.File(tmp_path / "cpu.h5") as c:
        a, b = g["ism"][:], c["ism"][:]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_results_written_in_place_on_the_gpu(monkeypatch):
    """A CUDA input's results are the tensors the edits were written into (no copy through the host)."""
    m = CASES["basset"](200)
    fast = ft.FastISM(m, 200, device="cuda")
    assert fast.device == torch.device("cuda", torch.cuda.current_device())
    copies = []
    real = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: copies.append(t.numel()) or real(t, *a, **k))
    out = fast.saturation_mutagenesis(random_onehot(2, 200).cuda())
    assert out.device.type == "cuda"
    assert max(copies, default=0) <= 2 * 200 * 4        # only the sequences, to pick the edits
