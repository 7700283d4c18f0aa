"""Capture (shape-aware fx trace, defaults, functional graphs) and the wrong-answer repros of issue 8.

Every model here once gave a wrong answer with ``test_correctness=False`` or failed to build; each test
compares with naive ISM (exact to float32) and, where it matters, checks the plan (no stop point where the op
is analysable).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastism_torch as ft
from fastism_torch.analysis import UnsupportedOpWarning
from helpers import assert_close_to_naive, check_model, random_onehot, scale_weights


def build_quietly(model, L, **kw):
    """FastISM without the self-check, failing on any UnsupportedOpWarning (no hidden stop points)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        return ft.FastISM(model, L, test_correctness=False, **kw)


# ------------------------------------------------------------------ wrong answers once
class DenseThenInplaceRelu(nn.Module):          # selene DeeperDeepSEA-style head
    def __init__(self, L):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.fc = nn.Linear(6 * L, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.fc(torch.relu(self.conv(x)).flatten(1)))


class MeanThenInplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x).mean(-1) - 0.1)


class PoolAndConvShareAnInput(nn.Module):       # one tensor, two consumers padding with -inf and 0
    def __init__(self, L):
        super().__init__()
        self.c0 = nn.Conv1d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool1d(3, 1, 1)
        self.c1 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * L, 2)

    def forward(self, x):
        h = self.c0(x)
        return self.fc((self.pool(h) + self.c1(h)).flatten(1))


class BatchStatsNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)
        self.out = nn.Conv1d(6, 2, 3, padding=1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x))))


class BatchCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)

    def forward(self, x):
        h = torch.cat([self.conv(x), self.conv(x.flip(-1))], 0)
        n = x.shape[0]
        return (h[:n] * h[n:]).sum(1)           # each sequence with its own reverse complement


@pytest.mark.parametrize("make", [lambda L: DenseThenInplaceRelu(L), lambda L: MeanThenInplaceRelu(),
                                  lambda L: PoolAndConvShareAnInput(L), lambda L: BatchCat()],
                         ids=["dense_inplace_relu", "mean_inplace_relu", "shared_gather_pad_values",
                              "cat_on_batch_axis"])
def test_once_wrong_answers_are_exact_without_the_self_check(make):
    L = 30
    check_model(scale_weights(make(L)), L, n=3)


def test_batch_statistics_are_refused_by_name():
    """BatchNorm without running statistics in eval mode normalises over the batch: a prediction depends on its
    batch-mates, so neither fast nor naive ISM means anything. Once silently treated as pointwise."""
    with pytest.raises(ValueError, match=r"bn: normalises with the statistics of the batch"):
        ft.FastISM(BatchStatsNorm(), 30)


def test_inplace_ops_become_out_of_place_in_the_captured_graph():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 4, 3, padding=1)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.c(x)
            y = self.act(h)
            h += y                   # reads h after it was mutated: the functional graph reads act's output
            return F.relu(h, inplace=True).sum(1)
    m = scale_weights(M())
    fast = build_quietly(m, 20)
    g = fast.gm.graph
    assert not any(n.op == "call_module" and getattr(fast.gm.get_submodule(n.target), "inplace", False)
                   for n in g.nodes)
    assert not any(n.kwargs.get("inplace") for n in g.nodes)
    check_model(m, 20)


# ------------------------------------------------------------------ what fx could not trace without shapes
class BpnetLiteLike(nn.Module):
    """bpnet-lite's idioms: optional control track, residual crops by shape arithmetic, a shape check."""

    def __init__(self, n_layers=3):
        super().__init__()
        self.iconv = nn.Conv1d(4, 8, 7)
        self.rconvs = nn.ModuleList([nn.Conv1d(8, 8, 3, dilation=2 ** i) for i in range(1, n_layers + 1)])
        self.fconv = nn.Conv1d(8 + 1, 2, 5)
        self.linear = nn.Linear(8 + 1, 1)
        self.trimming = 10

    def forward(self, X, X_ctl=None):
        if X.shape[1] != 4:
            raise ValueError("expected one-hot DNA")
        start = self.trimming
        X = torch.relu(self.iconv(X))
        for conv in self.rconvs:
            X_conv = torch.relu(conv(X))
            crop = (X.shape[2] - X_conv.shape[2]) // 2
            X = X[:, :, crop:X.shape[2] - crop] + X_conv
        if X_ctl is None:
            X_w_ctl = F.pad(X, (0, 0, 0, 1))                   # a zero control channel
        else:
            X_w_ctl = torch.cat([X, X_ctl], dim=1)
        y_profile = self.fconv(X_w_ctl)
        y_profile = y_profile[:, :, start - 10 if start > 10 else 0: y_profile.shape[2]]
        X = X_w_ctl.mean(dim=2)
        return y_profile, self.linear(X)


def test_shape_arithmetic_and_optional_arguments_trace_without_stop_points():
    m = scale_weights(BpnetLiteLike())
    L = 60
    fast = build_quietly(m, L)
    assert [s for s, _ in fast.plan.stops] == [] or all("mean" in s for s, _ in fast.plan.stops)
    check_model(m, L)


def test_given_control_track_is_an_input():
    m = scale_weights(BpnetLiteLike())
    L = 60
    x, ctl = random_onehot(2, L), torch.rand(2, 1, L - 6 - 2 * (2 + 4 + 8))     # the control at the trunk's length
    fast, naive = ft.FastISM(m, L), ft.NaiveISM(m, L)
    assert_close_to_naive(fast([x, ctl]), naive([x, ctl]))


def test_batch_axis_stays_symbolic():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 6, 3, padding=1)

        def forward(self, x):
            b, c, L = x.shape
            h = self.c(x).reshape(b, 2, 3, L).sum(2)      # reshape with the batch size read from the input
            return h.view(x.size(0), -1, L).mean(1)
    m = scale_weights(M())
    check_model(m, 25)


def test_required_argument_missing_is_a_clear_error():
    class Two(nn.Module):
        def forward(self, x, y):
            return x.sum(1) + y
    fast = ft.FastISM(Two(), 10)                             # built on the first call, with all inputs
    with pytest.raises(ValueError, match=r"needs argument 'y'"):
        fast(random_onehot(1, 10))


def test_einops_rearrange_traces():
    einops = pytest.importorskip("einops")
    pytest.importorskip("einops.layers.torch")

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 6, 3, padding=1)
            self.lin = nn.Linear(6, 6)
            self.to_nlc = einops.layers.torch.Rearrange("b c l -> b l c")

        def forward(self, x):
            h = self.lin(self.to_nlc(self.c(x)))
            return einops.reduce(einops.rearrange(h, "b l c -> b c l"), "b c l -> b c", "mean")
    m = scale_weights(M())
    build_quietly(m, 20)
    check_model(m, 20)


def test_einops_keeps_working_on_tensors_after_a_trace():
    """The trace lends einops a backend for proxies, and gives it back: einops on real tensors still works,
    also when the first einops call of the process is inside a trace."""
    pytest.importorskip("einops")
    import subprocess
    import sys
    code = ("import torch, torch.nn as nn, einops, fastism_torch as ft\n"
            "class M(nn.Module):\n"
            "    def forward(self, x):\n"
            "        return einops.rearrange(torch.relu(x), 'b c l -> b l c').sum(-1)\n"
            "ft.FastISM(M(), 12)\n"
            "print(einops.rearrange(torch.zeros(2, 3, 4), 'b c l -> b l c').shape)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "torch.Size([2, 4, 3])" in r.stdout, r.stderr[-2000:]


def test_aliasing_the_trace_cannot_see_falls_back_to_exact():
    """``h = x; x += y; return x + h``: eager mutates both names. The graph reads the in-place add through
    both; if a trace ever disagrees with the model on the example, the model runs as one op (exact)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)
            self.r = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.c1(x)
            h = x
            x += self.c2(x)
            y = self.c2(self.r(x))
            return x + h + y
    m = scale_weights(M())
    x = random_onehot(2, 20)
    fast = ft.FastISM(m, 20, test_correctness=False)
    assert_close_to_naive(fast.predict(x), m(x).detach())
    assert_close_to_naive(fast.saturation_mutagenesis(x), ft.NaiveISM(m, 20).saturation_mutagenesis(x))


def test_batch_statistics_after_a_stop_point_are_refused():
    m = nn.Sequential(nn.Conv1d(4, 4, 3), nn.AvgPool1d(3, 1, 1, count_include_pad=False),
                      nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="statistics of the batch"):
        ft.FastISM(m, 30)


@pytest.mark.parametrize("case", ["param_scale", "crop_in_cat", "stop_in_cat"])
def test_segments_across_constants_crops_and_stops(case):
    """Once internal errors of the segment split (found by tests/test_fuzz.py)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)
            self.c3 = nn.Conv1d(4, 2, 2)
            self.p = nn.Parameter(torch.rand(4) + 0.5)

        def forward(self, x):
            if case == "param_scale":
                return self.c2(self.c1(x) * self.p[None, :, None]) * self.p.view(1, -1, 1)
            if case == "crop_in_cat":
                return self.c2(torch.cat([self.c3(x), x[:, :2, 1:]], 1))
            h = self.c1(x)
            return torch.cat([h.amax(1, keepdim=True), self.c2(h)], 1)
    check_model(scale_weights(M()), 20)


def test_identities_are_removed_so_branches_share_one_gather():
    """gReLU's blocks read one tensor through nn.Identity / eval-mode Dropout placeholders: once removed, a
    residual add reads a slice of its conv's gathered window instead of a gather of its own."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, padding=2, dilation=2)
            self.pool, self.drop, self.transform = nn.Identity(), nn.Dropout(0.1), nn.Identity()

        def forward(self, x):
            return self.drop(self.conv(self.pool(x))) + self.transform(x)

    m = nn.Sequential(nn.Conv1d(4, 4, 5, padding=2), Block(), Block())
    fast = build_quietly(scale_weights(m), 30, delta=False)     # (recomputed convs read windows; delta ones do not)
    assert not any(n.op == "call_module" and isinstance(fast.gm.get_submodule(n.target), (nn.Identity, nn.Dropout))
                   for n in fast.gm.graph.nodes)
    assert sum(g.reuse is None and g.kind == "window" for g in fast.plan.gathers) == 3   # per conv; adds: slices
    check_model(m, 30)


def test_dense_on_a_3d_flatten_runs_in_full():
    """gReLU's ConvMLP flattens to (N, 1, C*L) before its Linear: not the (N, F) -> (N, out) update the
    incremental dense assumes (it crashed once the Dropout in between was dropped)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 3, 5, padding=2)
            self.fc = nn.Linear(3 * 20, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.c(x)).reshape(x.shape[0], 1, -1))
    check_model(scale_weights(M()), 20)


@pytest.mark.parametrize("glu", [lambda h: F.glu(h, dim=1), nn.GLU(dim=1)], ids=["F.glu", "nn.GLU"])
def test_channel_gates_are_pointwise(glu):
    """A gated linear unit over channels (found as a stop point by the fuzzer) keeps the fast path."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(4, 2, 3, padding=1)
            self.glu = glu if isinstance(glu, nn.Module) else None

        def forward(self, x):
            h = self.c1(x)
            return self.c2(self.glu(h) if self.glu is not None else glu(h))
    m = scale_weights(M())
    assert len(build_quietly(m, 20).plan.stops) == 0
    check_model(m, 20)


def test_construction_builds_once(monkeypatch):
    from fastism_torch import capture
    calls = []
    real = capture.capture
    monkeypatch.setattr(capture, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    ft.FastISM(scale_weights(MeanThenInplaceRelu()), 20)
    assert len(calls) == 1


class _VmapMix(nn.Module):
    """Mixes positions with torch.vmap (as borzoi-pytorch's attention does): fx cannot trace its code."""

    def __init__(self, c):
        super().__init__()
        self.proj = nn.Linear(c, c)

    def forward(self, x):                                   # (N, C, L)
        mixed = torch.vmap(lambda t: t @ t.transpose(0, 1) @ t)(self.proj(x.transpose(1, 2)).transpose(1, 2) / 8)
        return x + mixed


class _TowerThenVmap(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 6, 5, padding=2), nn.Conv1d(6, 6, 3, padding=1)
        self.mix, self.mix2 = _VmapMix(6), _VmapMix(6)
        self.out = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        return self.out(self.mix2(self.mix(torch.relu(self.c2(torch.relu(self.c1(x)))))))


def test_untraceable_submodule_is_one_op_and_the_rest_is_windowed():
    """Submodules whose code fx cannot trace (torch.vmap) become one op each (every module of that class),
    named stops; the conv tower before them is windowed (the whole model no longer runs as one op), and the
    answers are exact."""
    model = scale_weights(_TowerThenVmap())
    with pytest.warns(UnsupportedOpWarning, match=r"mix \(_VmapMix\)"):
        fast = check_model(model, 24, saturation=False)
    assert [name for name, _ in fast.plan.stops] == ["mix"]
    assert {"c1", "c2"} <= set(fast.plan.nodes)


@pytest.mark.parametrize("make", [
    lambda: torch.nn.GRU(6, 5, num_layers=2, batch_first=True, bidirectional=True),
    lambda: torch.nn.LSTM(6, 5, num_layers=2, proj_size=3, bidirectional=True),
    lambda: torch.nn.LSTM(6, 5, batch_first=True),
    lambda: torch.nn.RNN(6, 4, nonlinearity="relu"),
])
@pytest.mark.parametrize("batched", [True, False])
def test_recurrent_layers_on_meta_give_their_real_shapes(make, batched):
    """A meta copy's recurrent layers return their outputs' shapes without running every time step (they
    ran as Python decompositions on meta: most of a ConvGRU's set-up); the shapes equal a real call's."""
    from fastism_torch.shapes import meta_copy
    rnn = make()
    x = torch.randn(*((3, 7) if batched else (7,)), 6)
    real = rnn(x)
    twin = meta_copy(rnn)
    fake = twin(x.to("meta"))
    flat = lambda o: [t for item in o for t in (item if isinstance(item, tuple) else (item,))]  # noqa: E731
    assert [t.shape for t in flat(fake)] == [t.shape for t in flat(real)]
    assert all(t.is_meta for t in flat(fake))
