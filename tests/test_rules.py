"""The sliding-window rules (conv, pool, pad: rules/conv.py, rules/pool.py, rules/layout.py) against brute
force on one-op models, and the classification of each op family (pointwise, reduce, dense, stop).

Forward map: mutate one input position by a large amount; the outputs that change must be exactly those
the rule's window predicts (a subset for max pooling).  Backward map + rewrite: the op run padding-free on
the gathered input window must equal the full op's output on that window.  Rule-specific pieces:
test_rules_conv.py, test_rules_layout.py; the window arithmetic: test_ranges.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import Lambda, decision_of


OPS = [
    nn.Conv1d(3, 4, 5, padding=2), nn.Conv1d(3, 4, 4, padding="same"), nn.Conv1d(3, 4, 3, dilation=3,
                                                                                 padding="same"),
    nn.Conv1d(3, 4, 6, dilation=2, padding="same"), nn.Conv1d(3, 4, 7), nn.Conv1d(3, 4, 4, padding=(1,)),
    nn.Conv1d(3, 3, 5, padding=2, groups=3), nn.Conv1d(3, 6, 3, stride=2, padding=1),
    nn.MaxPool1d(3), nn.MaxPool1d(4, 2), nn.MaxPool1d(3, 2, padding=1), nn.MaxPool1d(2, ceil_mode=True),
    nn.MaxPool1d(3, 1, dilation=2), nn.AvgPool1d(4), nn.AvgPool1d(3, 1, padding=1), nn.ConstantPad1d((2, 3), 0.5),
    nn.ConvTranspose1d(3, 2, 5, padding=1), nn.ConvTranspose1d(3, 2, 4, dilation=2),
]


@pytest.mark.parametrize("op", OPS, ids=[repr(o) for o in OPS])
@pytest.mark.parametrize("length", [23, 24])
def test_sliding_rule_forward_and_backward(op, length):
    torch.manual_seed(0)
    x = torch.randn(1, 3, length)
    dec = decision_of(Lambda(op).eval(), x)
    assert dec.kind == "sliding"
    window = next(iter(dec.reads.values())).window
    y = op(x)
    lout = y.shape[-1]
    is_max = isinstance(op, nn.MaxPool1d)
    for p in range(length):
        xm = x.clone()
        xm[:, :, p] += 100.0
        changed = np.flatnonzero(((op(xm) - y).abs() > 1e-6).any(1)[0].numpy())
        lo, hi = window.forward(np.array([p]), np.array([p + 1]), lout)
        predicted = set(range(int(lo[0]), int(hi[0])))
        assert set(changed) <= predicted, (p, changed, predicted)
        dilated = getattr(op, "dilation", 1) not in (1, (1,))
        if not (is_max or dilated):   # exact (dilated taps skip positions: a superset there)
            assert predicted == set(changed), (p, changed, predicted)
    # backward + padding-free rewrite: every output window computed from its gathered input window
    pad_value = window.pad_value
    for width in (1, 3, lout):
        for c in range(0, lout - width + 1):
            r, wreq = window.backward(np.array([c]), width)
            r = int(r[0])
            left, right = max(0, -r), max(0, r + wreq - length)
            xp = F.pad(x, (left, right), value=pad_value)[:, :, r + left:r + left + wreq]
            valid = _emit_module(dec, op)(xp)
            torch.testing.assert_close(valid, y[:, :, c:c + width], rtol=1e-5, atol=1e-5)


def _emit_module(dec, op):
    class B:
        graph = None

        def add_module(self, name, mod):
            self.mod = mod
            return name
    b = B()

    class G:
        def call_module(self, name, args, kwargs):
            return b.mod

        def call_function(self, fn, args, kwargs):
            return lambda t: fn(t, *args[1:], **kwargs) if args[0] is not None else t
    b.graph = G()
    res = dec.emit(b, __import__("types").SimpleNamespace(name="op", target=None), (None,), {})
    return res if callable(res) else (lambda t: t)


@pytest.mark.parametrize("op,kind", [
    (nn.ReLU(), "pointwise"), (nn.GELU(), "pointwise"), (nn.Softplus(), "pointwise"), (nn.ELU(), "pointwise"),
    (nn.BatchNorm1d(3).eval(), "pointwise"), (nn.Hardtanh(), "pointwise"),
    (nn.Flatten(), "stop"), (nn.AdaptiveAvgPool1d(1), "inc_mean"), (nn.AdaptiveMaxPool1d(1), "stop"),
    (nn.Linear(16, 2), "stop"), (nn.Softmax(dim=1), "pointwise"), (nn.Softmax(dim=-1), "stop"),
])
def test_classification(op, kind):
    assert decision_of(Lambda(op).eval(), torch.randn(2, 3, 16)).kind == kind
