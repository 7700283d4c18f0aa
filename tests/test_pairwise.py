"""Pairwise (double-mutant) ISM against an independent naive loop: plain forward passes of the model on
explicitly double-mutated sequences, for every family the engine handles (self-check off)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch.pairwise import diagonal

from helpers import NLC, Attention, profile_head, random_onehot, scale_weights, short_field

L, START, END = 32, 12, 18
W, C = END - START, 4


class Residual(nn.Module):
    """A dilated residual tower with a profile and a counts head (two outputs), like BPNet."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.dil = nn.ModuleList(nn.Conv1d(8, 8, 3, padding=d, dilation=d) for d in (1, 2, 4))
        self.profile = nn.Conv1d(8, 2, 5, padding=2)
        self.counts = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        for conv in self.dil:
            h = h + torch.relu(conv(h))
        return self.profile(h), self.counts(h.mean(-1))


def _conv():
    return nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * L, 3))


def _pooling():
    return nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


FAMILIES = {"conv": _conv, "dilated_residual": Residual, "pooling_dense": _pooling, "attention": Attention}


def _set(x: torch.Tensor, pos: int, base: int) -> None:
    x[:, pos] = 0
    x[base, pos] = 1


def naive_pairwise(model, x: torch.Tensor, start: int, end: int):
    """``(N, W, C, W, C, *out)`` per output by plain forward passes; NaN where ``i == j`` and ``a != b``."""
    n, w = x.shape[0], end - start
    grid = [(s, i, a, j, b) for s in range(n) for i in range(w) for a in range(C) for j in range(w) for b in range(C)]
    batch = []
    for s, i, a, j, b in grid:
        y = x[s].clone()
        _set(y, start + i, a)
        _set(y, start + j, b)
        batch.append(y)
    with torch.no_grad():
        outs = model(torch.stack(batch))
    outs = outs if isinstance(outs, tuple) else (outs,)
    res = []
    for o in outs:
        o = o.reshape(n, w, C, w, C, *o.shape[1:]).clone()
        for i in range(w):
            for a in range(C):
                for b in range(C):
                    if a != b:
                        o[:, i, a, i, b] = float("nan")
        res.append(o)
    return tuple(res) if len(res) > 1 else res[0]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_close(got, want, rtol=1e-5):
    for g, w_ in zip(_tuple(got), _tuple(want)):
        g, w_ = torch.as_tensor(g), torch.as_tensor(w_)
        assert g.shape == w_.shape, (g.shape, w_.shape)
        assert torch.equal(torch.isnan(g), torch.isnan(w_)), "NaN entries differ"
        ok = ~torch.isnan(w_)
        scale = float(w_[ok].abs().max())
        diff = float((g[ok] - w_[ok]).abs().max())
        assert diff <= rtol * scale + 1e-6, f"max |fast - naive| = {diff:.3g} at scale {scale:.3g}"


def _model(family):
    torch.manual_seed(0)
    return scale_weights(FAMILIES[family]())


def _seqs(n=2, seed=1):
    x = random_onehot(n, L, seed=seed)
    x[1, :, START + 2] = 0          # an N inside the window: all four substitutions are real
    return x


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pairwise_matches_naive_double_mutants(family):
    model, x = _model(family), _seqs()
    ism = ft.FastISM(model, L, test_correctness=False)
    got = ism.pairwise(x.numpy(), START, END)
    want = naive_pairwise(model, x, START, END)
    assert isinstance(_tuple(got)[0], np.ndarray)
    assert_close(got, want)
    spread = max(float(np.nanmax(g) - np.nanmin(g)) for g in _tuple(got))
    assert spread > 1e-2, "outputs barely move under mutation: the test checks nothing"
    for g in _tuple(got):                       # mirrored halves agree (each was checked against naive above)
        assert np.array_equal(g, np.swapaxes(np.swapaxes(g, 1, 3), 2, 4), equal_nan=True)


def test_pairwise_static_kernels_and_nlc(kernel_form):
    """Both kernel forms of the edit graph; NLC layout (the result is (N, W, C, W, C, ...) all the same)."""
    model = _model("conv")
    x = _seqs()
    ism = ft.FastISM(NLC(model), L, layout="NLC", test_correctness=False)
    got = ism.pairwise(x.transpose(1, 2).contiguous(), START, END)
    assert isinstance(got, torch.Tensor)
    assert_close(got, naive_pairwise(model, x, START, END))


def test_diagonal_is_single_ism_and_epistasis():
    model, x = _model("pooling_dense"), _seqs()
    ism = ft.FastISM(model, L, test_correctness=False)
    pw, single, ref = ism.pairwise(x, START, END, return_single=True)
    sat = ism.saturation_mutagenesis(x)                                      # (N, C, L, out)
    assert_close(diagonal(pw), sat[:, :, START:END].transpose(1, 2))
    assert_close(single, sat[:, :, START:END].transpose(1, 2))
    assert_close(ref, model(x).detach())
    eps = ft.epistasis(pw, single, ref)
    want = naive_pairwise(model, x, START, END)
    s = sat[:, :, START:END].transpose(1, 2)
    naive_eps = want - s[:, :, :, None, None] - s[:, None, None] + model(x).detach()[:, None, None, None, None]
    idx = torch.arange(W)
    naive_eps[:, idx, :, idx, :] = float("nan")
    assert_close(eps, naive_eps, rtol=1e-4)
    own = x[0, :, START:END].argmax(0)                                      # an own base: no interaction
    assert float(eps[0, 0, own[0], 3].abs().max()) < 1e-5


def test_target_and_reduce_select_outputs():
    model, x = _model("dilated_residual"), _seqs()
    ism = ft.FastISM(model, L, test_correctness=False)
    full = ism.pairwise(x, START, END)
    flat = torch.cat([f.reshape(*f.shape[:5], -1) for f in full], -1)
    assert_close(ism.pairwise(x, START, END, target=slice(3, 7)), flat[..., 3:7])
    assert_close(ism.pairwise(x, START, END, target=-1), flat[..., -1])
    counts = ism.pairwise(x, START, END, reduce=lambda outs, refs: outs[0].sum(-1))
    assert_close(counts, full[0].sum(-1))
    ref = ism.predict(x)                                  # a tuple per output: epistasis of each
    eps = ft.epistasis(full, diagonal(full), ref)
    assert isinstance(eps, tuple) and len(eps) == 2
    assert_close(eps[1], ft.epistasis(full[1], diagonal(full[1]), ref[1]))


def test_naive_engine_gives_the_same_map():
    model, x = _model("conv"), _seqs()
    fast = ft.FastISM(model, L, test_correctness=False).pairwise(x, START, END)
    assert_close(ft.NaiveISM(model, L).pairwise(x, START, END), fast)


def test_bad_arguments_raise_clear_errors():
    model, x = _model("conv"), _seqs()
    ism = ft.FastISM(model, L, test_correctness=False)
    with pytest.raises(ValueError, match="0 <= start < end"):
        ism.pairwise(x, 10, 5)
    with pytest.raises(ValueError, match=r"GiB.*target="):
        ism.pairwise(x, START, END, max_bytes=1000)
    with pytest.raises(ValueError, match="out of range"):
        ism.pairwise(x, START, END, target=99)
    with pytest.raises(ValueError, match="FastISM or NaiveISM"):
        ft.pairwise(model, x, START, END)


# ------------------------------------------------------------------------------------ dependency map
@pytest.mark.parametrize("family,target", [("conv", None), ("pooling_dense", 1), ("attention", None)])
def test_dependency_map_equals_tangermeme(family, target):
    tangermeme = pytest.importorskip("tangermeme")
    from tangermeme.dependency_map import dependency_map as tm_dependency_map
    from tangermeme.saturation_mutagenesis import saturation_mutagenesis
    model, x = _model(family), _seqs()
    kw = {} if target is None else {"target": target}
    want = tm_dependency_map(model, x, start=START, end=END, func=saturation_mutagenesis, device="cpu",
                             additional_func_kwargs={"fast": False}, **kw)
    ism = ft.FastISM(model, L, test_correctness=False)
    got = ft.dependency_map(ism, x, start=START, end=END, **kw)
    assert got.shape == want.shape == (2, L, W)
    assert_close(got, want, rtol=1e-4)
    assert float(want.abs().max()) > 1e-3
    from_module = ft.dependency_map(model, x, start=START, end=END, test_correctness=False, **kw)
    assert_close(from_module, want, rtol=1e-4)


def test_dependency_map_refuses_other_attributions():
    model, x = _model("conv"), _seqs()
    with pytest.raises(ValueError, match="saturation_mutagenesis"):
        ft.dependency_map(model, x, func=lambda *a, **k: None)
    with pytest.raises(ValueError, match="hypothetical"):
        ft.dependency_map(model, x, hypothetical=True)


def test_window_dependency_from_pairwise_equals_dependency_map():
    from fastism_torch.dependency import window_dependency
    model, x = _model("dilated_residual"), _seqs()
    ism = ft.FastISM(model, L, test_correctness=False)
    pw, single, _ = ism.pairwise(x, START, END, target=slice(0, 2 * L), return_single=True)   # the profile head
    got = window_dependency(pw.mean(-1), single.mean(-1), x[:, :, START:END].transpose(1, 2))

    want = ft.dependency_map(ft.FastISM(profile_model(model), L, test_correctness=False), x, start=START, end=END)
    assert_close(torch.from_numpy(got).float(), want[:, START:END], rtol=1e-4)
    assert float(want[:, START:END].abs().max()) > 1e-3


def profile_model(model):
    class Profile(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x)[0]
    return Profile()


# ------------------------------------------------------------------------------------ additive shortcut
@pytest.mark.parametrize("make,distance", [(short_field, 7), (profile_head, 5)])
def test_additive_pairs_equal_explicit_and_naive(make, distance):
    """Pairs at least D apart are sums of single mutants: the shortcut equals the explicit computation and the
    naive double-mutant loop, and pairs closer than D do interact (so D is not too small to matter)."""
    model, x = make(), random_onehot(2, L, seed=3)
    ism = ft.FastISM(model, L, test_correctness=False)
    start, end = 6, 24                                   # W = 18 > D
    plan = ism.plan_for(tuple((p, p + 1) for p in range(start, end)))
    assert plan.additive_from == distance and f"pairs >= {distance} apart add exactly" in str(plan)
    got = ism.pairwise(x, start, end)
    assert_close(got, ism.pairwise(x, start, end, additive=False))
    assert_close(got, naive_pairwise(model, x, start, end))
    pw, single, ref = ism.pairwise(x, start, end, return_single=True, additive=False)
    i, j = np.meshgrid(np.arange(end - start), np.arange(end - start), indexing="ij")
    near, far = (i != j) & (abs(i - j) < distance), abs(i - j) >= distance
    for p, e in zip(_tuple(pw), _tuple(ft.epistasis(pw, single, ref))):
        e = e.abs().nan_to_num().transpose(2, 3).flatten(3).amax(-1)        # (N, W, W): largest over bases, outputs
        assert float(e[:, far].max()) <= 1e-5 * float(p.abs().nan_to_num().max())
        assert float(e[:, near].max()) > 1e-2                  # closer pairs interact: they must be run
    if not isinstance(got, tuple):                             # (a dependency map needs one output tensor)
        want = ft.dependency_map(ism, x, start=start, end=end, additive=False)
        assert_close(ft.dependency_map(ism, x, start=start, end=end), want, rtol=1e-4)
        assert_close(want, ft.dependency_map(ft.NaiveISM(model, L), x, start=start, end=end), rtol=1e-4)


@pytest.mark.parametrize("kw", [dict(head_relu=True), dict(pool="max")])
def test_no_additive_pairs_after_a_nonlinear_full_op(kw):
    """A nonlinear op that sees every position (a ReLU in the dense head, a global max pool): no pair adds."""
    model, x = short_field(**kw), random_onehot(2, L, seed=3)
    ism = ft.FastISM(model, L, test_correctness=False)
    plan = ism.plan_for(tuple((p, p + 1) for p in range(6, 24)))
    assert plan.additive_from is None and "no pairs add exactly" in str(plan)
    assert_close(ism.pairwise(x, 6, 24), naive_pairwise(model, x, 6, 24))


def test_additive_distance_counts_nonlinear_sliding_ops():
    """A max pool widens where changes meet: D grows by what the pool reaches; an average pool adds nothing."""
    def tower(pool):
        return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), pool, nn.Conv1d(8, 8, 1), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2))
    ranges = tuple((p, p + 1) for p in range(L))
    d_max = ft.FastISM(tower(nn.MaxPool1d(3, 1, 1)), L, test_correctness=False).plan_for(ranges).additive_from
    d_avg = ft.FastISM(tower(nn.AvgPool1d(3, 1, 1)), L, test_correctness=False).plan_for(ranges).additive_from
    assert (d_max, d_avg) == (5, 5)


@pytest.mark.parametrize("family", ["pooling_dense", "dilated_residual"])
def test_pairwise_replace_with_matches_naive(family):
    """``replace_with``: both positions set to one vector (an N, or any vector): ``(N, W, 1, W, 1, *out)``
    against plain forward passes; a column that already holds the vector is an identity edit."""
    model, x = _model(family), _seqs()
    x[0, :, START + 1] = 0.25                             # already the replacement at one position of row 0
    ism = ft.FastISM(model, L, test_correctness=False)
    for rep in (0, [0.25] * 4, [0.1, -0.2, 0.3, 0.5]):
        got = ism.pairwise(x, START, END, replace_with=rep)
        v = torch.as_tensor(rep, dtype=torch.float32).expand(C)
        rows = []
        for s in range(2):
            for i in range(W):
                for j in range(W):
                    y = x[s].clone()
                    y[:, START + i] = v
                    y[:, START + j] = v
                    rows.append(y)
        with torch.no_grad():
            want = [o.reshape(2, W, 1, W, 1, *o.shape[1:]) for o in _tuple(model(torch.stack(rows)))]
        assert_close(got, tuple(want) if len(want) > 1 else want[0])
    with pytest.raises(ValueError, match="replace_with"):
        ism.pairwise(x, START, END, replace_with=[1, 2])


def _pooled_tower():
    """A short receptive field, then flatten + a nonlinear dense head: no pair adds at the output, but pairs
    far apart add up to the head's first ReLU (:mod:`fastism_torch.far_pairs`)."""
    torch.manual_seed(0)
    return scale_weights(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                       nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(8 * L // 2, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 3)))


def test_dependency_map_far_pairs_through_the_tail():
    import fastism_torch.far_pairs as far_pairs
    model, x = _pooled_tower(), random_onehot(2, L, seed=3)
    ism = ft.FastISM(model, L, test_correctness=False)
    sp = far_pairs.split(ism, ism.inputs(x), np.arange(L), np.arange(4, 12))
    assert ism.plan_for(tuple((p, p + 1) for p in range(L))).additive_from is None
    assert sp is not None and sp.far.shape == (8, L) and 0.5 < sp.far.mean() < 1    # most pairs go through the tail
    assert not sp.far[np.arange(8), np.arange(5, 13)].any()           # neighbours meet before the tail
    got = ft.dependency_map(ism, x, start=4, end=12)
    want = ft.dependency_map(ft.NaiveISM(model, L), x, start=4, end=12)
    assert_close(got, want, rtol=1e-4)
    assert_close(ft.dependency_map(ism, x, start=4, end=12, additive=False), want, rtol=1e-4)
    assert float(want.abs().max()) > 1e-2


def test_far_pairs_head_builds_at_its_scan_without_a_naive_probe(monkeypatch):
    """The head engine of :mod:`fastism_torch.far_pairs` scans every position once: it builds at that call
    instead of probing naive ISM first as a lazy engine does (64 passes of the head wasted per dependency map)."""
    import fastism_torch.far_pairs as far_pairs
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    model, x = _pooled_tower(), random_onehot(1, L, seed=4)
    ism = ft.FastISM(model, L, test_correctness=False)
    inp = ism.inputs(x)
    sp = far_pairs.split(ism, inp, np.arange(L), np.arange(4, 12))
    assert sp is not None and sp.head.gm is None                    # not built before its scan
    from fastism_torch.pairwise import make_select, scan_singles
    scan_singles(sp.head, inp, np.arange(L), make_select())
    assert sp.head.gm is not None and sp.head._naive is None        # built at the scan, no naive batches
