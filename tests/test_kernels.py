"""The custom ops (``torch.ops.fastism.*``) pass PyTorch's own checks (schema, fake/meta implementations,
autograd registration, torch.compile's view of them) on the arguments a real edit graph hands them."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastism_torch as ft
from fastism_torch.kernels import ops  # noqa: F401  (registers the ops)

from helpers import random_onehot, scale_weights


def edit_graph_targets(fast) -> list:
    """The targets of every node of ``fast``'s edit graph for its change ranges (all segments)."""
    module = fast._engine(fast.change_ranges).edit.module
    return [n.target for m in module.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes]


class _Record(TorchDispatchMode):
    """Keeps the first call of each fastism op (its arguments cloned)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastism" and func not in self.calls:
            clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a    # noqa: E731
            self.calls[func] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


class Net(nn.Module):
    """A residual conv block (gather_window, gather_window_add) before a flatten + dense (inc_linear)."""

    def __init__(self, L=40):
        super().__init__()
        self.c0, self.c1 = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * L, 3)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        h = torch.relu(self.c1(h)) + h
        return self.head(self.c2(h).flatten(1))


class ProfileCounts(nn.Module):
    """A dilated residual block whose sum feeds a profile head and a global mean (gather_window_add_mean)."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.profile, self.counts = nn.Conv1d(8, 2, 7, padding=3), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        h = h + torch.relu(self.c1(h))
        return self.profile(h), self.counts(h.mean(-1))


def _recorded_calls():
    from fastism_torch import rewrite
    direct, rewrite.DIRECT_KERNELS = rewrite.DIRECT_KERNELS, False     # the custom ops, not their functions
    try:
        return _record_calls()
    finally:
        rewrite.DIRECT_KERNELS = direct


def _record_calls():
    with _Record() as rec:
        for model in (Net(), ProfileCounts()):
            for delta in (False, True):        # recomputed residual sums are fused into gathers; convs by delta
                fast = ft.FastISM(scale_weights(model), 40, delta=delta)
                fast.saturation_mutagenesis(random_onehot(2, 40))
    return rec.calls


OPS = ["gather_window", "gather_window_add", "gather_window_add_mean", "inc_linear", "gather_window_delta"]


def test_the_edit_graph_uses_the_custom_ops():
    names = {f.__name__.split(".")[0] for f in _recorded_calls()}
    assert set(OPS) <= names, names


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    calls = {f.__name__.split(".")[0]: c for f, c in _recorded_calls().items()}
    args, kwargs = calls[name]
    torch.library.opcheck(getattr(torch.ops.fastism, name).default, args, kwargs)


def _inc_linear_case(starts, channels_last, n_feat=16, length=12, width=3, n_out=300, dtype=torch.float32):
    """Reference inputs ``x`` (B, F, L) (or (B, L, F)), edits that replace ``x[b]``'s window at ``starts[b]``,
    and the dense layer's output on the edited inputs computed in full."""
    g = torch.Generator().manual_seed(len(starts) + 7 * channels_last)
    starts = torch.tensor(starts, dtype=torch.int64)
    B = len(starts)
    x = torch.randn(B, n_feat, length, generator=g, dtype=dtype)
    new = torch.randn(B, n_feat, width, generator=g, dtype=dtype)
    weight = torch.randn(n_out, n_feat * length, generator=g, dtype=dtype)
    bias = torch.randn(n_out, generator=g, dtype=dtype)
    idx = starts[:, None] + torch.arange(width)                                    # (B, width)
    ref_window = x.gather(2, idx[:, None, :].expand(-1, n_feat, -1))
    edited = x.scatter(2, idx[:, None, :].expand(-1, n_feat, -1), new)
    if channels_last:                                                              # flatten of (B, L, F)
        x, new, ref_window, edited = (t.transpose(1, 2).contiguous() for t in (x, new, ref_window, edited))
    in_shape, laxis = tuple(x.shape[1:]), (1 if channels_last else 2)
    ref_out = torch.nn.functional.linear(x.flatten(1), weight, bias)
    expected = torch.nn.functional.linear(edited.flatten(1), weight, bias)
    return (new, ref_window, ref_out, weight, starts, in_shape, laxis), expected


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("starts", [
    [0, 0, 0, 2, 2, 5, 9, 9],            # ordered by position (what the executor hands over)
    [5, 0, 9, 2, 0, 9, 2, 0],            # unordered, repeated
    [9, 7, 5, 3, 1, 0],                  # decreasing
    [4, 4, 4, 4],                        # one start
    [6],                                 # one edit
])
@pytest.mark.parametrize("n_out", [300, 2])   # oneDNN (weight of 300 x 192) and F.linear (2 x 192)
def test_inc_linear_matches_a_full_recompute(starts, channels_last, n_out):
    from fastism_torch import kernels
    args, expected = _inc_linear_case(starts, channels_last, n_out=n_out)
    got = kernels.inc_linear(*args)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.ops.fastism.inc_linear(*args[:5], list(args[5]), args[6]), got)
    if sorted(starts) == starts:             # the static form, on the executor's ordered groups
        span = max(starts) - min(starts) + args[0].shape[args[6]]
        torch.testing.assert_close(kernels.inc_linear_static(*args, span), expected, rtol=1e-4, atol=1e-4)


def test_inc_linear_float64_is_exact_to_rounding():
    from fastism_torch import kernels
    args, expected = _inc_linear_case([3, 1, 1, 8, 0], False, dtype=torch.float64)
    torch.testing.assert_close(kernels.inc_linear(*args), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 192), (1, 192), (3, 5, 192), (0, 192)])
def test_linear_matches_f_linear(shape):
    from fastism_torch import kernels
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*shape, generator=g), torch.randn(300, 192, generator=g), torch.randn(300, generator=g)
    for weight, bias in ((w, b), (w, None), (w.t().contiguous().t(), b)):           # contiguous, no bias, strided
        torch.testing.assert_close(kernels.linear(x, weight, bias),
                                   torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
    wp = nn.Parameter(w)
    y = kernels.linear(x, wp, b)                       # with autograd on, the differentiable path
    assert y.requires_grad


class _Head(nn.Module):
    """A conv, a flatten + dense (inc_linear), then two dense layers run in full (one F.linear)."""

    def __init__(self, L=40):
        super().__init__()
        self.c0 = nn.Conv1d(4, 8, 5, padding=2)
        self.d0, self.d1, self.d2 = nn.Linear(8 * L, 96), nn.Linear(96, 96), nn.Linear(96, 2)

    def forward(self, x):
        h = torch.relu(self.d0(torch.relu(self.c0(x)).flatten(1)))
        h = torch.relu(torch.nn.functional.linear(h, self.d1.weight, self.d1.bias))
        return self.d2(h)


@pytest.mark.parametrize("static", [False, True])
def test_dense_layers_of_the_edit_graph_use_the_kernel_linear(static, monkeypatch):
    from fastism_torch import kernels
    monkeypatch.setattr(ft.FastISM, "static_kernels", static)
    model = scale_weights(_Head())
    fast = ft.FastISM(model, 40)
    targets = edit_graph_targets(fast)
    n_kernel = sum(t is kernels.linear for t in targets)
    assert n_kernel == (0 if static else 2), targets
    x = random_onehot(2, 40)
    naive = ft.NaiveISM(model, 40).saturation_mutagenesis(x)
    torch.testing.assert_close(fast.saturation_mutagenesis(x), naive, rtol=1e-4, atol=1e-5)


def test_naive_ism_runs_dense_layers_through_the_same_kernel(monkeypatch):
    """NaiveISM's forward passes (CPU) use kernels.linear too: the fast path is timed against the same products."""
    from fastism_torch.kernels import dense
    calls = []
    real = dense.linear
    monkeypatch.setattr(dense, "linear", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    model = _Head()
    x = random_onehot(2, 40)
    got = ft.NaiveISM(model, 40).predict(x)
    assert sorted(calls) == sorted([model.d0.weight.shape, model.d1.weight.shape, model.d2.weight.shape])
    torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)


def _assign_reference(out, new, shift):
    out = out.clone()
    for b, t in enumerate(shift.tolist()):
        for j in range(new.shape[-1]):
            if 0 <= t + j < out.shape[-1]:
                out[b, :, t + j] = new[b, :, j]
    return out


@pytest.mark.parametrize("shift", [
    [2] * 6,                                   # one shift (interior)
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],      # runs moving with the position (an edge)
    [0, 1, 2, 0, 1, 2, 0, 1, 2],               # alternating (after a pooling layer), runs of 1
    [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0],      # alternating in runs of 3 (alternative bases)
    [-3, -3, 9, 9, 12, 12, -1, 4],             # partly / wholly outside the window
])
@pytest.mark.parametrize("many_runs", [False, True])
def test_assign_shifted_matches_a_loop(shift, many_runs, monkeypatch):
    from fastism_torch.kernels import gather
    if many_runs:                               # the grouped (index_copy_) path too
        monkeypatch.setattr(gather, "RUNS_AS_SLICES", 0)
    g = torch.Generator().manual_seed(len(shift))
    shift = torch.tensor(shift)
    out = torch.randn(len(shift), 3, 10, generator=g)
    new = torch.randn(len(shift), 3, 4, generator=g)
    want = _assign_reference(out, new, shift)
    gather.assign_shifted(out, new, shift)
    assert torch.equal(out, want)


@pytest.mark.parametrize("shift", [[3] * 6, [-2] * 4, [5] * 4, [0, 0, 1, 1, 2, 2], [20] * 3,
                                   [-3, -3, 0, 0, 0, 2, 6, 6, 9]])
@pytest.mark.parametrize("halo_min", [1, 10 ** 9])          # halo columns only / the whole window
@pytest.mark.parametrize("add", [False, True])
def test_gather_window_matches_a_loop(shift, halo_min, add, monkeypatch):
    """``cache`` windows with the recomputed values written over them, whether the window is read whole or
    only around the recomputed middle (also when that middle is clipped by the window or misses it, and per
    run of rows where the shifts differ: an edge)."""
    from fastism_torch.kernels import gather
    monkeypatch.setattr(gather, "HALO_MIN", halo_min)
    monkeypatch.setattr(gather, "HALO_RUN_BYTES", 0)           # halos per run of shifts, however small
    g = torch.Generator().manual_seed(len(shift) + shift[0])
    n_edits, width, win = len(shift), 11, 7
    cache = torch.randn(3, 5, 30, generator=g)
    seq, start = torch.randint(0, 3, (n_edits,), generator=g), torch.randint(0, 30 - width, (n_edits,), generator=g)
    a, b = torch.randn(2, n_edits, 5, win, generator=g)
    shift = torch.tensor(shift)
    whole = torch.stack([cache[s, :, r:r + width] for s, r in zip(seq.tolist(), start.tolist())])
    want = _assign_reference(whole, a + b if add else a, shift)
    if add:
        got = gather.gather_window_add(cache, a, b, seq, start, shift, width, 2, (5,), 2)
    else:
        got = gather.gather_window(cache, a, seq, start, shift, width, 2, (5,), 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", [[3] * 6, [0] * 3, [4] * 3, [-2] * 4, [5] * 4, [0, 0, 1, 1, 2, 2], [20] * 3,
                                   [0, 0, 1, 3, 3, 4], [0, 0, 2, 5, 5]])
@pytest.mark.parametrize("halo_min", [1, 10 ** 9])
def test_gather_window_add_mean_matches_its_two_readers(shift, halo_min, monkeypatch):
    """The window and the mean that the fused kernel returns equal a gather of the sum and the incremental
    mean of the sum, whether every edit's sum lands whole inside the window (fused, in one or several runs of
    shifts) or not (clipped)."""
    from fastism_torch.kernels import gather
    monkeypatch.setattr(gather, "HALO_MIN", halo_min)
    monkeypatch.setattr(gather, "HALO_RUN_BYTES", 0)
    g = torch.Generator().manual_seed(len(shift) + shift[0])
    n_edits, width, win = len(shift), 11, 7
    cache, ref = torch.randn(3, 5, 30, generator=g), torch.randn(n_edits, 5, generator=g)
    prefix = gather.to_prefix_sums(torch.randn(3, 5, 25, generator=g), 2)
    seq, start = torch.randint(0, 3, (n_edits,), generator=g), torch.randint(0, 30 - width, (n_edits,), generator=g)
    m_start = torch.randint(0, 25 - win, (n_edits,), generator=g)
    a, b = torch.randn(2, n_edits, 5, win, generator=g)
    shift = torch.tensor(shift)
    window, mean = gather.gather_window_add_mean(cache, a, b, seq, start, shift, width, 2, (5,), 2, prefix, seq,
                                                 m_start, ref, 0.5)
    torch.testing.assert_close(window, gather.gather_window(cache, a + b, seq, start, shift, width, 2, (5,), 2),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(mean, gather.inc_mean_prefix(a + b, prefix, seq, m_start, ref, 2, 0.5),
                               rtol=0, atol=1e-5)


class _ConvRelu(nn.Module):
    """``relu(conv(x))`` twice; the second convolution's output is also read by a residual add."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.c0(x))
        g = self.c1(h)
        return torch.relu(g) + g


@pytest.mark.parametrize("static", [False, True])
def test_relu_runs_in_place_only_on_a_convolution_output_nobody_else_reads(static, monkeypatch):
    monkeypatch.setattr(ft.FastISM, "static_kernels", static)
    model = scale_weights(_ConvRelu())
    fast = ft.FastISM(model, 30)
    targets = edit_graph_targets(fast)
    assert targets.count(torch.relu_) == (0 if static else 1), targets
    x = random_onehot(3, 30)
    torch.testing.assert_close(fast.saturation_mutagenesis(x), ft.NaiveISM(model, 30).saturation_mutagenesis(x),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("many_runs", [False, True])
def test_gather_window_delta_adds_the_change_where_it_lands(many_runs):
    """Delta propagation's write against a loop: the reference window plus the change at its shift, clipped;
    eager (runs of equal shifts, and one index_add_ per shift when the runs are many) and static forms."""
    from fastism_torch.kernels import gather_window_delta, gather_window_delta_static
    g = torch.Generator().manual_seed(3)
    n, f, length, width, win, B = 3, 5, 30, 9, 6, 70
    cache = torch.randn(n, f, length, generator=g)
    change = torch.randn(B, f, win, generator=g)
    seq = torch.randint(0, n, (B,), generator=g)
    start = torch.randint(0, length - width + 1, (B,), generator=g)
    shift = (torch.randint(-win, width + 1, (B,), generator=g) if many_runs
             else torch.tensor([-2] * 30 + [1] * 30 + [7] * 10))
    expected = torch.stack([cache[seq[b], :, start[b]:start[b] + width] for b in range(B)]).clone()
    for b in range(B):
        for j in range(win):
            p = int(shift[b]) + j
            if 0 <= p < width:
                expected[b, :, p] += change[b, :, j]
    for fn in (gather_window_delta, gather_window_delta_static):
        got = fn(cache, change, seq, start, shift, width, 2, (f,), 2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
