"""rules/split.py: reshapes that split the length axis into (n, p) as pooling windows of width p, stride p,
followed by ops local to p (attention pooling, sums, means, maxima over p, 1x1 convolutions), against brute
force (mutate one position, see which outputs move) and against naive ISM on small models with the self-check
off; Enformer's plan (enformer-pytorch, gReLU) reaches its transformer."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch.analysis import analyse
from fastism_torch.capture import capture
from fastism_torch.plan import build_plan
from fastism_torch.rules.split import split_axes
from helpers import Lambda, check_model, decision_of, scale_weights

sys.path.insert(0, str(Path(__file__).parent))


class AttentionPool(nn.Module):
    """Enformer's attention pooling: ``b d (n p) -> b d n p``, 1x1 Conv2d logits, softmax over p, weighted sum."""

    def __init__(self, dim: int, pool: int, einops: bool = False):
        super().__init__()
        self.pool, self.einops = pool, einops
        self.to_logits = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        if self.einops:
            from einops import rearrange
            x = rearrange(x, "b d (n p) -> b d n p", p=self.pool)
        else:
            b, d, n = x.shape
            x = x.view(b, d, n // self.pool, self.pool)
        attn = self.to_logits(x).softmax(dim=-1)
        return (x * attn).sum(dim=-1)


P = 3
LOCAL_OPS = {          # (N, C, L) -> (N, C', L / P), every one local to the split's p
    "attention_pool": AttentionPool(5, P),
    "view_mean": Lambda(lambda t: t.view(t.shape[0], t.shape[1], -1, P).mean(-1)),
    "reshape_max_values": Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).max(dim=-1).values),
    "torch_max_getitem": Lambda(lambda t: torch.max(t.reshape(t.shape[0], t.shape[1], -1, P), 3)[0]),
    "amax": Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).amax(-1)),
    "logsumexp": Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).logsumexp(-1)),
    "unflatten_sum": Lambda(lambda t: t.unflatten(2, (-1, P)).sum(-1)),
    "two_axis_p": Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, 1, P).sum((-1, -2))),
    "channels_last": Lambda(lambda t: nn.functional.gelu(
        t.transpose(1, 2).reshape(t.shape[0], -1, P, t.shape[1])).sum(2).transpose(1, 2)),
    "p_to_channels": Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).transpose(2, 3)
                            .reshape(t.shape[0], t.shape[1] * P, -1)),
}


def _output_plan(op, x, lo, hi):
    """The plan's changed range of ``op``'s output for an edit of ``x`` at ``[lo, hi)``, and the plan."""
    gm = capture(Lambda(op).eval(), [x])
    seq = next(n for n in gm.graph.nodes if n.op == "placeholder")
    infos = analyse(gm, seq, 2, x.shape[2])
    plan = build_plan(gm, infos, seq, [(lo, hi)])
    out = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes[0]
    r = plan.nodes.get(out.name)
    return plan, (None if r is None else (int(r.lo[0]), int(r.hi[0]), r.laxis))


@pytest.mark.parametrize("name", list(LOCAL_OPS))
@pytest.mark.parametrize("width", [1, 4])
def test_split_then_local_ops_forward(name, width):
    """Mutate positions [i, i + width): exactly the pooled positions the plan predicts move."""
    torch.manual_seed(0)
    op = scale_weights(LOCAL_OPS[name])
    length = 24
    x = torch.randn(1, 5, length)
    y = op(x)
    for i in range(length - width + 1):
        plan, got = _output_plan(op, x, i, i + width)
        assert not plan.stops and got is not None, plan.stops
        lo, hi, lax = got
        xm = x.clone()
        xm[:, :, i:i + width] += 10.0
        moved = (op(xm) - y).abs().amax(dim=tuple(d for d in range(y.dim()) if d != lax))
        changed = set(np.flatnonzero(moved.detach().numpy() > 1e-6))
        assert changed == set(range(lo, hi)), (i, changed, (lo, hi))
        assert (lo, hi) == (i // P, -(-(i + width) // P))


@pytest.mark.parametrize("in_shape,out_shape,lax,expected", [
    ((2, 5, 24), (2, 5, 8, 3), 2, (2, 1)),
    ((2, 24, 5), (2, 8, 3, 5), 1, (1, 1)),
    ((2, 5, 24), (2, 5, 6, 2, 2), 2, (2, 2)),
    ((2, 5, 24), (2, 5, 1, 8, 3), 2, (3, 1)),       # of two readings, the longer n
    ((2, 5, 24), (2, 5, 24, 1), 2, None),          # keeps the axis: not a split (layout.py's rule)
    ((2, 5, 24), (2, 15, 8), 2, None),             # merges p into the channels
    ((2, 5, 24), (2, 8, 15), 2, None),
    ((2, 6, 24), (2, 3, 2, 8, 3), 2, (3, 1)),      # splits the channels too: they stay feature axes
    ((2, 5, 24), (4, 5, 12), 2, None),             # moves rows into the batch
])
def test_split_axes(in_shape, out_shape, lax, expected):
    assert split_axes(in_shape, out_shape, lax) == expected


@pytest.mark.parametrize("fn,why", [
    (lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).softmax(2), "acts along the length"),
    (lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).sum((2, 3)), "length axis and others"),
    (lambda t: t.reshape(t.shape[0], t.shape[1], -1, P).amax(2), "length axis"),
    (lambda t: t.reshape(t.shape[0], -1, P), "merges the length axis"),
])
def test_ops_across_the_split_length_stop(fn, why):
    """Ops that mix pooled positions (over n, or over n and p) are stops, not windows."""
    x = torch.randn(2, 5, 24)
    dec = decision_of(Lambda(fn), x)
    assert dec.kind == "stop" and why in dec.reason, dec


class Tower(nn.Module):
    """Conv -> pool by a split length -> conv -> pool -> dense head, in (N, 4, L) or (N, L, 4)."""

    def __init__(self, pool_a, pool_b, channels_last=False, length=48):
        super().__init__()
        self.channels_last = channels_last
        self.c1 = nn.Conv1d(4, 5, 5, padding=2)
        self.pool_a, self.pool_b = pool_a, pool_b
        self.c2 = nn.Conv1d(5, 5, 3, padding=1)
        self.bn = nn.BatchNorm1d(5)
        self.head = nn.Linear(5 * (length // 6), 3)

    def forward(self, x):
        if self.channels_last:
            x = x.transpose(1, 2)
        h = self.pool_a(torch.relu(self.c1(x)))
        h = self.pool_b(self.bn(self.c2(h)))
        return self.head(nn.functional.gelu(h).flatten(1))


@pytest.mark.parametrize("layout", ["NCL", "NLC"])
@pytest.mark.parametrize("pools", [("attention", "attention"), ("max", "mean"), ("einops", "max")])
def test_split_pooling_matches_naive(layout, pools):
    make = {
        "attention": lambda p: AttentionPool(5, p),
        "einops": lambda p: AttentionPool(5, p, einops=True),
        "max": lambda p: Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, p).max(dim=-1).values),
        "mean": lambda p: Lambda(lambda t: t.reshape(t.shape[0], t.shape[1], -1, p).mean(-1)),
    }
    if "einops" in pools:
        pytest.importorskip("einops")
    torch.manual_seed(0)
    model = scale_weights(Tower(make[pools[0]](2), make[pools[1]](3), channels_last=layout == "NLC"))
    fast = check_model(model, 48, layout=layout)
    assert not fast.plan.stops, fast.plan.stops            # the dense head is updated incrementally
    for ranges in ([(10, 13), (0, 3), (45, 48), (23, 26)], [(i, i + 1) for i in range(0, 48, 7)]):
        check_model(model, 48, layout=layout, change_ranges=ranges, saturation=False)


@pytest.mark.parametrize("name", ["enformer_pytorch", "grelu_enformer"])
def test_enformer_plan_reaches_the_transformer(name):
    """The attention pooling of the stem and conv tower is windowed: the first stops are in the attention."""
    from zoo_models import PACKAGES, ZOO
    pytest.importorskip(PACKAGES[name])
    model, length, layout, _ = ZOO[name]()
    fast = ft.FastISM(model, length, layout=layout, change_ranges=[(length // 2, length // 2 + 32)],
                      test_correctness=False)
    assert fast.plan.stops and all(reason == "global or sequence-wide op" for _, reason in fast.plan.stops), \
        fast.plan.stops
    assert not any("reshape" in n for n, _ in fast.plan.stops)
    pooled = [r for r in fast.plan.nodes.values() if r.length == length // 8]      # after 3 poolings
    assert pooled, "the conv tower's last pooled length is not windowed"
