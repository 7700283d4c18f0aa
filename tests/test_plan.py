"""The plan: windows cover every changed range and stay inside the tensor; gathers are shared only where one
cache serves both; stops are listed."""
import numpy as np
import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch.kinds import GatherKind, State

from helpers import assert_close_to_naive, random_onehot, scale_weights


class Residual(nn.Module):
    """A 'same' conv and the residual add after it read the same input at a constant offset."""

    def __init__(self, pool=False):
        super().__init__()
        self.c0 = nn.Conv1d(4, 8, 3, padding=1)
        self.c1 = nn.Conv1d(8, 8, 5, padding=2)
        self.pool = nn.MaxPool1d(3, stride=1, padding=1) if pool else None
        self.head = nn.Linear(8 * 50, 2)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        y = self.c1(h) + h
        if self.pool is not None:
            y = self.pool(y) + y
        return self.head(y.flatten(1))


def test_windows_cover_the_changes_and_stay_inside():
    fast = ft.FastISM(scale_weights(Residual(pool=True)), 50)
    plan = fast.plan_for((i, i + 1) for i in range(50))
    for idx in (np.arange(0, 7), np.arange(20, 27), np.arange(43, 50)):
        widths = plan.widths(idx)
        for name, r in plan.nodes.items():
            s = plan.starts(name, idx, widths[name])
            assert (s <= r.lo[idx]).all() and (s + widths[name] >= r.hi[idx]).all(), name
            assert (s >= 0).all() and (s + widths[name] <= r.length).all(), name


def test_residual_reads_share_one_gather():
    fast = ft.FastISM(scale_weights(Residual()), 50, delta=False)        # (a delta conv reads no window)
    shared = [g for g in fast.plan.gathers if g.reuse is not None]
    assert shared and all(g.kind == GatherKind.WINDOW and g.source_state == State.WINDOW for g in shared)
    base = fast.plan.gathers[shared[0].reuse[0]]
    assert base.source == shared[0].source and base.window.extent >= shared[0].window.extent
    x = random_onehot(2, 50)
    assert_close_to_naive(fast.saturation_mutagenesis(x), ft.NaiveISM(fast.model, 50).saturation_mutagenesis(x))


def test_no_sharing_across_pad_values():
    """Max pooling pads with -inf, the add reads zeros: one cache cannot serve both."""
    fast = ft.FastISM(scale_weights(Residual(pool=True)), 50)
    for g in fast.plan.gathers:
        if g.reuse is not None:
            assert fast.plan.gathers[g.reuse[0]].window.pad_value == g.window.pad_value
    x = random_onehot(2, 50)
    assert_close_to_naive(fast(x), ft.NaiveISM(fast.model, 50)(x))


@pytest.mark.parametrize("width", [1, 3])
def test_plan_prints_its_segments_and_stops(width):
    net = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30, 4),
                        nn.ReLU(), nn.Linear(4, 1))
    fast = ft.FastISM(scale_weights(net), 30, change_ranges=[(i, i + width) for i in range(0, 30 - width + 1)])
    text = str(fast.plan)
    assert f"mutation window(s) of width {width}" in text and "segments (gathers):" in text
    assert text.count("window ") + text.count("delta ") >= 1 and "ref " in text   # the conv, the incremental dense
