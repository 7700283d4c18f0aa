"""The rule registry: keys refused twice, lookup through subclasses, and ops without a (working) rule becoming
stop points that are named, never wrong answers."""
import warnings

import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch.analysis import UnsupportedOpWarning
from fastism_torch.kinds import Kind
from fastism_torch.rules import registry
from fastism_torch.rules.registry import register

from helpers import assert_close_to_naive, random_onehot, scale_weights


def unknown_op(x):
    """A function no rule knows (traced as one call by fx)."""
    return x * torch.sigmoid(x.roll(1, dims=-1))


torch.fx.wrap("unknown_op")


class Net(nn.Module):
    def __init__(self, unknown=True):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 6, 5, padding=2), nn.Conv1d(6, 6, 3, padding=1)
        self.out = nn.Linear(6 * 40, 2)
        self.unknown = unknown

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = unknown_op(h) if self.unknown else torch.tanh(h)
        return self.out(self.c2(h).flatten(1))


def test_registering_a_key_twice_raises():
    key = ("method", "fastism_test_only_op")
    register(key)(lambda ctx: registry.stop("x"))
    try:
        with pytest.raises(KeyError, match="already registered"):
            register(key)(lambda ctx: registry.stop("y"))
    finally:
        registry._RULES.pop(key)


def test_lookup_follows_subclasses():
    class MyConv(nn.Conv1d):
        pass

    class ConvLeaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, nn.Conv1d)
    root = nn.Sequential(MyConv(4, 4, 3), nn.Conv1d(4, 4, 3))
    gm = torch.fx.GraphModule(root, ConvLeaves().trace(root))
    mine, plain = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert registry.lookup(mine, gm) is registry.lookup(plain, gm) is not None
    assert registry.describe(mine, gm) == "0 (MyConv)"


def test_an_op_without_a_rule_is_a_named_stop_and_exact():
    net = scale_weights(Net())
    with pytest.warns(UnsupportedOpWarning, match=r"unknown_op .*no change-range rule.*becomes a stop point"):
        fast = ft.FastISM(net, 40)
    assert any("unknown_op" in name for name, _ in fast.plan.stops)
    x = random_onehot(2, 40)
    assert_close_to_naive(fast.saturation_mutagenesis(x), ft.NaiveISM(net, 40).saturation_mutagenesis(x))
    with pytest.raises(ValueError, match=r"unknown_op .*\(strict mode\)"):
        ft.FastISM(net, 40, strict=True)


def test_a_rule_that_fails_is_a_named_stop(monkeypatch):
    net = scale_weights(Net(unknown=False))

    def broken(ctx):
        raise IndexError("cannot read the op's settings")
    monkeypatch.setitem(registry._RULES, ("function", torch.tanh), broken)
    with pytest.warns(UnsupportedOpWarning, match=r"rule failed \(IndexError: cannot read the op's settings\)"):
        fast = ft.FastISM(net, 40)
    x = random_onehot(2, 40)
    assert_close_to_naive(fast(x), ft.NaiveISM(net, 40)(x))


def test_decisions_are_typed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = ft.FastISM(scale_weights(Net(unknown=False)), 40)
    kinds = {info.decision.kind for info in fast.infos.values() if info.decision is not None}
    assert kinds <= set(Kind) and Kind.SLIDING in kinds and Kind.INC_LINEAR in kinds
    assert str(Kind.STOP) == "stop" and Kind.STOP == "stop"
