"""Each change-range rule against brute force on a one-op model.

Forward map: mutate one input position by a large amount; the outputs that change must be exactly those
the rule's window predicts (a subset for max pooling).  Backward map + rewrite: the op run padding-free on
the gathered input window must equal the full op's output on that window.  Plus classification checks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastism_torch.analysis import analyse
from fastism_torch.capture import capture
from fastism_torch.ranges import Window, hull, window_starts
from helpers import Lambda


def decision_of(model, x, laxis=2):
    gm = capture(model, [x])
    seq = next(n for n in gm.graph.nodes if n.op == "placeholder")
    infos = analyse(gm, seq, laxis, x.shape[laxis])
    out = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes[0]
    return infos[out].decision


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


@pytest.mark.parametrize("length", [20, 21])
@pytest.mark.parametrize("crop", [(0, 5), (3, -2), (4, None), (1, -1, 2)])
def test_crop_rule(length, crop):
    x = torch.randn(1, 3, length)
    sl = slice(*crop)
    dec = decision_of(Lambda(lambda t: t[:, :, sl]), x)
    window = next(iter(dec.reads.values())).window
    y = x[:, :, sl]
    for p in range(length):
        xm = x.clone()
        xm[:, :, p] += 1
        changed = set(np.flatnonzero(((xm[:, :, sl] - y).abs() > 0).any(1)[0].numpy()))
        lo, hi = window.forward(np.array([p]), np.array([p + 1]), y.shape[-1])
        assert changed == set(range(int(lo[0]), int(hi[0])))



@pytest.mark.parametrize("op,kind", [
    (nn.ReLU(), "pointwise"), (nn.GELU(), "pointwise"), (nn.Softplus(), "pointwise"), (nn.ELU(), "pointwise"),
    (nn.BatchNorm1d(3).eval(), "pointwise"), (nn.Hardtanh(), "pointwise"),
    (nn.Flatten(), "stop"), (nn.AdaptiveAvgPool1d(1), "inc_mean"), (nn.AdaptiveMaxPool1d(1), "stop"),
    (nn.Linear(16, 2), "stop"), (nn.Softmax(dim=1), "pointwise"), (nn.Softmax(dim=-1), "stop"),
])
def test_classification(op, kind):
    assert decision_of(Lambda(op).eval(), torch.randn(2, 3, 16)).kind == kind


def test_layout_rules_move_the_length_axis():
    x = torch.randn(2, 3, 16)
    assert decision_of(Lambda(lambda t: t.permute(0, 2, 1)), x).laxis == 1
    assert decision_of(Lambda(lambda t: t.unsqueeze(-1)), x).laxis == 2
    assert decision_of(Lambda(lambda t: t.unsqueeze(1)), x).laxis == 3
    assert decision_of(Lambda(lambda t: t.transpose(1, 2)), x).laxis == 1
    assert decision_of(Lambda(lambda t: t.reshape(2, 3, 4, 4)), x).kind == "stop"   # splits L
    assert decision_of(Lambda(lambda t: t.mean(1)), x).laxis == 1                  # channel mean
    assert decision_of(Lambda(nn.LayerNorm(3)), x.transpose(1, 2).contiguous(), laxis=1).kind == "pointwise"
    assert decision_of(Lambda(nn.LayerNorm(16)), x).kind == "stop"



def test_range_helpers():
    lo, hi = hull([(np.array([1, 5]), np.array([3, 6])), (np.array([2, 4]), np.array([4, 9]))])
    assert lo.tolist() == [1, 4] and hi.tolist() == [4, 9]
    s = window_starts(np.array([0, 5, 9]), np.array([2, 7, 10]), 4, 10)
    assert s.tolist() == [0, 5, 6]          # shifted inward at the right edge
    w = Window(5, 1, 2)
    assert [a.tolist() for a in w.forward(np.array([0, 10]), np.array([1, 11]), 12)] == [[0, 8], [3, 12]]


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_as_conv(groups):
    from fastism_torch.rules.conv import TransposedAsConv
    torch.manual_seed(0)
    t = nn.ConvTranspose1d(4, 6, 5, dilation=2, groups=groups)
    x = torch.randn(3, 4, 20)
    full = F.conv_transpose1d(x, t.weight, t.bias, dilation=2, groups=groups)
    k = 2 * 4                                      # (kernel-1)*dilation: outputs covered by the whole window
    torch.testing.assert_close(TransposedAsConv(t)(x), full[:, :, k:-k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_out,k,dil", [(1, 25, 1), (2, 7, 3), (16, 5, 1)])
def test_conv1d_valid_shift_add_path(c_out, k, dil):
    from fastism_torch.rules.conv import conv1d_valid
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 8, 60), torch.randn(c_out, 8, k), torch.randn(c_out)
    torch.testing.assert_close(conv1d_valid(x, w, b, dil), F.conv1d(x, w, b, dilation=dil), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [9, 10])
def test_reversal_window(length):
    x = torch.randn(1, 3, length)
    dec = decision_of(Lambda(lambda t: t.flip(1, 2)), x)
    window = next(iter(dec.reads.values())).window
    assert window.reversed
    y = x.flip(1, 2)
    for p in range(length):
        xm = x.clone()
        xm[:, :, p] += 1
        changed = set(np.flatnonzero(((xm.flip(1, 2) - y).abs() > 0).any(1)[0].numpy()))
        lo, hi = window.forward(np.array([p]), np.array([p + 1]), length)
        assert changed == set(range(int(lo[0]), int(hi[0])))
    for c in range(length - 2):                      # output window [c, c+3) from the reversed input window
        r, w = window.backward(np.array([c]), 3)
        torch.testing.assert_close(x[:, :, int(r[0]):int(r[0]) + w].flip(1, 2), y[:, :, c:c + 3])
