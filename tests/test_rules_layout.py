"""rules/layout.py: crops, flips and axis moves against brute force on one-op models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import Lambda, decision_of


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


def test_layout_rules_move_the_length_axis():
    x = torch.randn(2, 3, 16)
    assert decision_of(Lambda(lambda t: t.permute(0, 2, 1)), x).laxis == 1
    assert decision_of(Lambda(lambda t: t.unsqueeze(-1)), x).laxis == 2
    assert decision_of(Lambda(lambda t: t.unsqueeze(1)), x).laxis == 3
    assert decision_of(Lambda(lambda t: t.transpose(1, 2)), x).laxis == 1
    assert decision_of(Lambda(lambda t: t.reshape(2, 3, 4, 4)), x).kind == "sliding"   # splits L: a pool
    assert decision_of(Lambda(lambda t: t.reshape(2, 12, 4)), x).kind == "stop"       # merges L into channels
    assert decision_of(Lambda(lambda t: t.mean(1)), x).laxis == 1                  # channel mean
    assert decision_of(Lambda(nn.LayerNorm(3)), x.transpose(1, 2).contiguous(), laxis=1).kind == "pointwise"
    assert decision_of(Lambda(nn.LayerNorm(16)), x).kind == "stop"


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
