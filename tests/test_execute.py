"""The executor's hot path, without a GPU: the static (GPU) kernels never read tensor values on the host and
never mix devices, the CPU eager kernels do (so the check can fail), and results land where they are wanted.

The check runs the executor and the edit graph on the ``meta`` device (no data: any host read of a value
raises) under a dispatch mode that rejects every op with a tensor on another device than the engine's and
every op that synchronises a GPU with its host (``.item()``, ``nonzero``, ``unique``, boolean masks).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fastism_torch as ft
from fastism_torch.base import Inputs
from fastism_torch.execute import Batching, Edits, Executor, Reference
from helpers import random_onehot, scale_weights

aten = torch.ops.aten
HOST_SYNC = {aten._local_scalar_dense.default, aten.nonzero.default, aten._unique2.default,
             aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default,
             aten.is_nonzero.default}
TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten.lift_fresh.default}


class DeviceAndSyncGuard(TorchDispatchMode):
    """Raise on host synchronisation and on any op that mixes ``device`` with another device (copies onto it
    allowed; host-only ops, e.g. preparing index arrays, are the host's business)."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if func in HOST_SYNC:
            raise AssertionError(f"{func} reads tensor values on the host (a GPU synchronisation)")
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if func not in TRANSFERS and self.device in devices and len(devices) > 1:
            raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}; the engine runs on {self.device}")
        return func(*args, **kwargs)


class GlobalMeanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3, dilation=2, padding=2))
        self.out = nn.Linear(8, 2)

    def forward(self, x, extra):
        return self.out(self.body(x).mean(-1)) * extra


def models():
    basset_like = nn.Sequential(nn.Conv1d(4, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
                                nn.Conv1d(16, 16, 5, padding=4, dilation=2), nn.ReLU(), nn.Flatten(),
                                nn.Linear(16 * 32, 3))                  # gathers + incremental dense
    profile = nn.Sequential(nn.Conv1d(4, 8, 9, padding=4), nn.ReLU(), nn.Conv1d(8, 2, 5, padding=2))   # full output
    return {"basset_like": (scale_weights(basset_like), 64, False),
            "profile": (scale_weights(profile), 64, False),
            "global_mean_extra_input": (scale_weights(GlobalMeanHead()), 64, True)}


def _to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) else x


def run_on_meta(fast: ft.FastISM, args, static: bool):
    """Saturation-style edits of ``args`` through a copy of ``fast``'s executor and edit graph on ``meta``."""
    fast.static_kernels = static
    fast._engines.clear()
    ex = fast._engine(fast.change_ranges)
    ref = ex.reference(args)
    meta_ref = Reference(None, {k: _to_meta(v) for k, v in ref.caches.items()},
                         {k: _to_meta(v) for k, v in ref.refs.items()},
                         {k: _to_meta(v) for k, v in ref.statics.items()})
    edit = copy.copy(ex.edit)
    edit.module = copy.deepcopy(ex.edit.module).to("meta")
    meta_ex = Executor(ex.gm, ex.plan, edit, torch.device("meta"), ex.seq_laxis)
    n, L = args[0].shape[0], fast.seq_len
    s_idx, p_idx, b_idx = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(L), np.arange(3), indexing="ij"))
    values = torch.eye(4, device="meta")[torch.from_numpy(b_idx).to("meta")][:, None, :]
    edits = Edits(s_idx, p_idx, values, np.arange(len(s_idx)))
    sinks = [torch.empty((len(s_idx), *o.shape[1:]), device="meta") for o in ft.execute.as_output_list(ref.outputs)]
    guard = DeviceAndSyncGuard("meta")
    with guard:
        meta_ex.run(meta_ref, edits, sinks, Batching(40))
    assert guard.ops > 0
    return sinks


@pytest.mark.parametrize("name", list(models()))
def test_static_kernels_launch_device_work_only(name):
    model, L, extra = models()[name]
    fast = ft.FastISM(model, L, test_correctness=False)
    x = random_onehot(2, L)
    args = [x, torch.rand(2, 2) + 0.5] if extra else [x]
    inp = fast._inputs(args if extra else x)
    run_on_meta(fast, inp.args, static=True)


@pytest.mark.parametrize("form", ["eager", "static"])
def test_the_guard_tells_the_kernel_forms_apart(form):
    """The CPU eager kernels group edits with ``unique``/``tolist`` on the host: the guard must catch that, and
    pass the static forms of the same two kernels."""
    from fastism_torch import kernels
    m = lambda *shape: torch.zeros(*shape, device="meta")                       # noqa: E731
    idx = lambda *v: torch.tensor(v, device="meta")                             # noqa: E731
    gather = kernels.gather_window if form == "eager" else kernels.gather_window_static
    linear = (lambda *a: kernels.inc_linear(*a)) if form == "eager" else \
        (lambda *a: kernels.inc_linear_static(*a, 6))
    with DeviceAndSyncGuard("meta"):
        try:
            gather(m(2, 3, 20), m(2, 3, 4), idx(0, 1), idx(2, 5), idx(1, 0), 8, 2, (3,), 2)
            linear(m(2, 3, 4), m(2, 3, 4), m(2, 5), m(5, 3 * 10), idx(1, 3), (3, 10), 2)
        except (AssertionError, NotImplementedError, RuntimeError):
            assert form == "eager"
        else:
            assert form == "static"


def test_naive_ism_keeps_indices_on_the_engine_device():
    """NaiveISM's batch loop on ``meta`` (the self-check's oracle; it once indexed CUDA data with CPU indices)."""
    model, L, _ = models()["basset_like"]
    naive = ft.NaiveISM(model, L, device="meta")
    x = random_onehot(2, L).to("meta")
    inp = Inputs(x, [x], False, torch.device("meta"))
    s_idx, r_idx = np.repeat([0, 1], 5), np.tile([0, 1, 30, 62, 63], 2)
    values = torch.zeros(10, 1, 4, device="meta")
    sinks = [torch.empty(10, 3, device="meta")]
    with DeviceAndSyncGuard("meta"):
        naive._run_edits(inp, naive.change_ranges, Edits(s_idx, r_idx, values, np.arange(10)), sinks, None)


def test_results_stay_on_the_input_device_and_type():
    model, L, _ = models()["profile"]
    fast = ft.FastISM(model, L)
    x = random_onehot(2, L)
    t = fast.saturation_mutagenesis(x)
    a = fast.saturation_mutagenesis(x.numpy())
    assert isinstance(t, torch.Tensor) and t.device.type == "cpu" and isinstance(a, np.ndarray)
    np.testing.assert_array_equal(t.numpy(), a)


def test_static_batches_are_balanced_and_unpadded():
    """With static kernels a batch holds at most ``batch_size`` edits of one width class and, with an incremental
    dense layer, of one dense window start (:mod:`fastism_torch.static_batches`), unpadded; the results equal
    naive ISM's."""
    model, L, _ = models()["basset_like"]
    fast = ft.FastISM(model, L)
    fast.static_kernels = True
    fast._engines.clear()
    ex = fast._engine(fast.change_ranges)
    real, sizes = ex.edit.module, []

    def spy(**feed):
        sizes.append(feed["values"].shape[0])
        return real(**feed)
    ex.edit.module = spy
    fast.batch_size = 50
    x = random_onehot(3, L)
    out = fast.saturation_mutagenesis(x)
    assert max(sizes) <= 50 and sum(sizes) == 3 * L * 3, sizes                # every edit once, no padding
    assert len(set(sizes)) < len(sizes) // 2, sizes                            # balanced: few sizes
    ref = ft.NaiveISM(model, L).saturation_mutagenesis(x)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("tf32", [False, True])
def test_precision_policy_sets_and_restores_the_switches(tf32):
    """Inside: the engine's TF32 choice, readable through the legacy getters (torch.export reads them);
    after: the caller's settings, whatever they were."""
    from fastism_torch.precision import float32_precision
    before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = not tf32
    torch.set_float32_matmul_precision("medium")
    try:
        with float32_precision(tf32):
            assert torch.backends.cudnn.allow_tf32 == tf32
            assert torch.backends.cuda.matmul.allow_tf32 == tf32
        assert torch.backends.cudnn.allow_tf32 == (not tf32)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


class WideTail(nn.Module):
    """Dilated residual layers (windows widen layer by layer), a control track added in the tail (a gather of
    another input's rows), a profile head and a global-mean head; and a value computed from parameters alone
    before the tail and read in it, whose first axis has a batch's size (it must not be cut into chunks)."""

    def __init__(self, batch=50):
        super().__init__()
        self.offsets = nn.Parameter(torch.randn(batch, 8, 1))
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.dilated = nn.ModuleList(nn.Conv1d(8, 8, 3, padding=d, dilation=d) for d in (1, 2, 4, 8))
        self.ctrl = nn.Conv1d(2, 8, 3, padding=1)
        self.profile = nn.Conv1d(8, 2, 5, padding=2)
        self.counts = nn.Linear(8, 2)

    def forward(self, x, control):
        offsets = self.offsets * 2.0
        h = torch.relu(self.conv(x))
        for conv in self.dilated:
            h = h + torch.relu(conv(h))
        h = h + self.ctrl(control) + offsets.sum(0)
        return self.profile(h), self.counts(h.mean(-1))


def test_wide_tail_runs_in_chunks_of_rows_and_matches_naive(monkeypatch):
    """With one thread, the segments from the first wide window on run on chunks of each batch's rows (the
    head once per batch): per-edit inputs sliced, caches and values from parameters alone whole, a control
    track's row numbers counted from the chunk; the results equal naive ISM's."""
    import dataclasses

    from fastism_torch import execute
    monkeypatch.setattr(execute, "TAIL_MIN_BYTES", 1)
    L, threads = 48, torch.get_num_threads()
    model = scale_weights(WideTail())
    g = torch.Generator().manual_seed(5)
    x, control = random_onehot(3, L), torch.randn(3, 2, L, generator=g)
    fast = ft.FastISM(model, L, batch_size=50, test_correctness=False)
    fast([x, control])
    ex = fast._engine(fast.change_ranges)
    assert ex.tail is not None and ex.tail_nodes and ex.rebased
    assert set(ex.tail.carried) - ex.tail.rows                                  # the parameters' value
    monkeypatch.setattr(ft.fast, "TAIL_CHUNK_BYTES", 7 * ex.tail_window)      # 7 edits per chunk
    torch.set_num_threads(2)
    try:
        assert fast._batching(ex) == (50, fast._batching(ex).chunk) and fast._batching(ex).chunk >= 50
        torch.set_num_threads(1)
        chunk = fast._batching(ex).chunk
    finally:
        torch.set_num_threads(threads)
    assert chunk == 7
    rows = []

    def spy(**feed):
        rows.append(feed["values"].shape[0] if "values" in feed else len(next(
            v for k, v in feed.items() if k in ex.rebased)))
        return real(**feed)
    real = ex.tail.tail
    ex.tail = dataclasses.replace(ex.tail, tail=spy)
    torch.set_num_threads(1)
    try:
        out = fast.saturation_mutagenesis([x, control])
    finally:
        torch.set_num_threads(threads)
    assert rows and max(rows) <= chunk and len(rows) > 3 * L * 3 // 50
    from helpers import assert_close_to_naive
    assert_close_to_naive(out, ft.NaiveISM(model, L).saturation_mutagenesis([x, control]))


def test_static_batch_size_buckets():
    """A static run's batch size: at least its edits (up to the batch size), at most 1/8 of padding, and few
    distinct values (runs of different sizes share compiled graphs)."""
    from fastism_torch.execute import bucket
    sizes = [bucket(n) for n in range(1, 1 << 16)]
    assert all(n <= b <= n + n // 8 for n, b in enumerate(sizes, 1))
    assert len(set(sizes)) <= 8 * 16 and bucket(3000) == 3072 and bucket(4096) == 4096


def test_cost_model_runs_cheap_calls_as_naive_and_says_so_once(monkeypatch, caplog):
    """A tiny model's few edits: the plan's cost model runs them as naive ISM (logged once per engine), with the
    same results; a model with much to reuse and many edits stays on the fast path."""
    import logging
    from fastism_torch import models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    m, x = models.tiny(seq_len=60), models.random_onehot(2, 60)
    ranges = [(5, 6), (30, 31)]
    fast = ft.FastISM(m, 60, change_ranges=ranges, test_correctness=False)
    with caplog.at_level(logging.WARNING, logger="fastism_torch"):
        a, b = fast(x), fast(x)
    assert sum("run by naive ISM instead" in r.message for r in caplog.records) == 1
    assert fast._naive is not None
    torch.testing.assert_close(a, ft.NaiveISM(m, 60, change_ranges=ranges)(x)) and torch.testing.assert_close(a, b)
    big = ft.FastISM(models.basset(seq_len=300), 300, test_correctness=False)
    assert big.gm is None                                  # lazy: nothing built before a call needs it
    big.saturation_mutagenesis(models.random_onehot(1, 300))
    assert big.gm is not None and big._naive_ranges == set()


def test_lazy_engine_runs_small_calls_naive_and_builds_when_it_pays(monkeypatch):
    """Without the self-check the engine builds nothing until a call's naive ISM (timed on a first batch) would
    cost more than the estimated build: small calls run as naive ISM and never build; a call that pays builds
    mid-call and runs the rest in chunks of the engine's size.  Both equal naive ISM."""
    from fastism_torch import costs, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    m, x = models.tiny(seq_len=60), models.random_onehot(3, 60)
    want = ft.NaiveISM(m, 60).saturation_mutagenesis(x)
    monkeypatch.setattr(costs, "setup_estimate", lambda model: 1e6)       # building never pays
    lazy = ft.FastISM(m, 60, test_correctness=False)
    torch.testing.assert_close(lazy.saturation_mutagenesis(x), want)
    assert lazy.gm is None and lazy._naive_spent > 0
    monkeypatch.setattr(costs, "setup_estimate", lambda model: 1e-9)      # building pays after the probe
    monkeypatch.setattr(costs, "NAIVE_BATCH_GAIN", 0.0)
    monkeypatch.setattr(costs, "LAZY_PROBE", 10)
    monkeypatch.setattr(ft.FastISM, "_seq_chunk", lambda self: 1 if self.gm is not None else 99)   # then by one
    monkeypatch.setattr(ft.FastISM, "_naive_is_cheaper", lambda self, ex, n: False)   # ... on the fast path
    built = ft.FastISM(m, 60, test_correctness=False)
    torch.testing.assert_close(built.saturation_mutagenesis(x), want, rtol=1e-5, atol=1e-5)
    assert built.gm is not None and built._naive is not None              # probed, then built
    assert ft.FastISM(m, 60, test_correctness=False).plan is not None          # reading the plan builds


def test_lazy_engine_builds_without_probing_a_call_sure_to_pay(monkeypatch):
    """A call whose naive ISM would cost :data:`costs.LAZY_SURE` budgets even at the best batching gain (a large
    model's saturation) builds at once, without the naive probe (64 edits of bpnet-lite ChromBPNet cost 0.6 s, and
    the batches after them were cut where later calls' are not).  The result equals naive ISM; a call just under
    that line still probes."""
    from fastism_torch import costs, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    monkeypatch.setattr(ft.FastISM, "_naive_is_cheaper", lambda self, ex, n: False)
    m, x = models.tiny(seq_len=60), models.random_onehot(2, 60)
    want = ft.NaiveISM(m, 60).saturation_mutagenesis(x)
    runs = []
    real = ft.FastISM._run_naive
    monkeypatch.setattr(ft.FastISM, "_run_naive", lambda self, *a: runs.append(len(a[2].seq)) or real(self, *a))
    budgets = {}

    def setup(model):              # the budget: a set share of this call's cost at the best batching gain
        return budgets["share"] * 2 * 60 * 3 * costs.NAIVE_BATCH_GAIN * sure._ref_s_per_seq / costs.LAZY_MARGIN
    monkeypatch.setattr(costs, "setup_estimate", setup)
    for share, probes in ((0.95 / costs.LAZY_SURE, False), (1.05 / costs.LAZY_SURE, True)):
        budgets["share"] = share
        runs.clear()
        sure = ft.FastISM(m, 60, test_correctness=False)
        torch.testing.assert_close(sure.saturation_mutagenesis(x), want, rtol=1e-5, atol=1e-5)
        assert sure.gm is not None and bool(runs) == probes, (share, runs)


def test_warm_lazy_engine_runs_a_call_as_one_naive_call(monkeypatch):
    """Once a lazy engine has timed naive ISM, a later call that fits its budget runs as one naive call (naive
    ISM's own batches), not split into probe batches again: three batches cost 1.5-2x one on a small model."""
    from fastism_torch import costs, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    monkeypatch.setattr(costs, "setup_estimate", lambda model: 1e6)       # building never pays
    m, x = models.tiny(seq_len=60), models.random_onehot(2, 60)
    runs = []
    real = ft.FastISM._run_naive
    monkeypatch.setattr(ft.FastISM, "_run_naive", lambda self, *a: runs.append(len(a[2].seq)) or real(self, *a))
    lazy = ft.FastISM(m, 60, test_correctness=False)
    lazy.saturation_mutagenesis(x)
    assert runs[:2] == [costs.LAZY_PROBE // 2] * 2                 # the first call probes (then the rest)
    runs.clear()
    got = lazy.saturation_mutagenesis(x)
    assert runs == [2 * 60 * 3] and lazy.gm is None
    torch.testing.assert_close(got, ft.NaiveISM(m, 60).saturation_mutagenesis(x))


def test_lazy_engine_estimates_its_set_up_once(monkeypatch):
    """The set-up estimate walks the model's modules (0.26 ms per call on gReLU's dilated-conv model, 10% of a
    24-window call): a lazy engine computes it once, not on every call."""
    from fastism_torch import costs, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    calls = []
    monkeypatch.setattr(costs, "setup_estimate", lambda model: calls.append(1) or 1e6)
    m, x = models.tiny(seq_len=60), models.random_onehot(1, 60)
    lazy = ft.FastISM(m, 60, test_correctness=False)
    for _ in range(3):
        lazy(x)
    assert len(calls) == 1 and lazy.gm is None


def test_naive_batch_tuner_times_each_size_in_its_own_shape(monkeypatch):
    """A batch of a new shape pays first-use costs (new kernel set-ups, allocator misses): the tuner times the
    second of two batches of each size.  Timing sizes interleaved picked Basenji2's 128 (139-146 ms per full
    saturation at L=512) over 64 (108-115 ms).  Here a model costs 20 ms on each change of batch size and is
    fastest per edit at 16: the tuner must pick 16 (interleaved timing picks 128)."""
    import time as time_mod

    class Timed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.last = nn.Conv1d(4, 2, 3), None

        def forward(self, x):
            n = x.shape[0]
            wait = (0.02 if n != self.last else 0.0) + n * (1e-4 if n == 16 else 4e-4)
            self.last = n
            time_mod.sleep(wait)
            return self.conv(x).sum(-1)

    e = ft.NaiveISM(Timed(), 200, batch_size=None)          # 600 edits: enough to time every size
    e.saturation_mutagenesis(random_onehot(1, 200, seed=0))
    assert e._tuned[(4, 200)] == 16


def test_lazy_engine_refuses_batch_statistics_as_a_built_one_does(monkeypatch):
    """A BatchNorm without running statistics makes ISM undefined: a lazy engine (which runs naive ISM before any
    analysis) refuses it at construction with the built engine's error, instead of returning batch-dependent
    numbers."""
    from fastism_torch import errors
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    m = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4, track_running_stats=False), nn.Flatten(),
                      nn.Linear(4 * 20, 1))
    for check in (False, True):                               # lazy, then built (with the self-check)
        with pytest.raises(errors.ISMUndefinedError, match="1: normalises with the statistics of the batch"):
            ft.FastISM(m, 20, test_correctness=check)


def test_self_check_checks_the_fast_path_even_where_naive_is_cheaper(monkeypatch):
    """The cost model must not route the self-check's own edits to naive ISM (it would compare naive with
    itself): a fast path broken on purpose is caught on a model small enough for the cost model to prefer naive."""
    from fastism_torch import execute, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    real = execute.Executor._outputs

    def broken(self, feed, n, chunk):
        for r0, outs in real(self, feed, n, chunk):
            yield r0, [o + 1.0 for o in outs]
    monkeypatch.setattr(execute.Executor, "_outputs", broken)
    with pytest.raises(RuntimeError, match="FastISM differs from NaiveISM"):
        ft.FastISM(models.tiny(seq_len=60), 60)


def test_lazy_engine_builds_without_a_probe_where_naive_is_plainly_too_slow(monkeypatch):
    """A model whose one forward pass already exceeds the budget builds at once: no naive probe batch (64
    forward passes of a large model would cost more than the build); the results equal naive ISM."""
    from fastism_torch import costs, models
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    monkeypatch.setattr(costs, "setup_estimate", lambda model: 1e-9)
    m, x = models.tiny(seq_len=40), models.random_onehot(2, 40)
    runs = []
    real = ft.FastISM._run_naive
    monkeypatch.setattr(ft.FastISM, "_run_naive", lambda self, *a: runs.append(len(a[2].seq)) or real(self, *a))
    monkeypatch.setattr(ft.FastISM, "_naive_is_cheaper", lambda self, ex, n: False)
    fast = ft.FastISM(m, 40, test_correctness=False)
    got = fast.saturation_mutagenesis(x)
    assert fast.gm is not None and runs == []
    torch.testing.assert_close(got, ft.NaiveISM(m, 40).saturation_mutagenesis(x), rtol=1e-5, atol=1e-5)


def test_building_pauses_the_garbage_collector_and_restores_the_callers_setting():
    """The build runs with the cyclic collector off (a full collection over torch's heap cost a small model's first
    build 0.2 s) and leaves it as the caller had it: on stays on, off stays off."""
    import gc
    from fastism_torch import models
    seen = []
    real = ft.FastISM._analyse

    def spy(self, gm):
        seen.append(gc.isenabled())
        return real(self, gm)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ft.FastISM, "_analyse", spy)
                ft.FastISM(models.tiny(seq_len=40), 40, test_correctness=False).plan
            assert gc.isenabled() == enabled
        finally:
            gc.enable()
    assert seen == [False, False]
