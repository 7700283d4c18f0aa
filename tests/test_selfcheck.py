"""selfcheck.py: which windows are checked, how outputs are compared, and the oracle sharing the model copy."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import fastism_torch as ft
from fastism_torch.selfcheck import check_against_naive, check_windows, max_difference, random_onehot


@pytest.mark.parametrize("n_windows,n_random,n_edge", [(100, 10, 4), (5, 3, 4), (1, 2, 3), (1000, 0, 2)])
def test_check_windows_has_the_edges_and_stays_in_range(n_windows, n_random, n_edge):
    pick = check_windows(n_windows, n_random, n_edge, np.random.default_rng(0))
    assert pick.tolist() == sorted(set(pick.tolist()))
    assert pick.min() >= 0 and pick.max() < n_windows
    edges = set(range(min(n_edge, n_windows))) | set(range(max(0, n_windows - n_edge), n_windows))
    assert edges <= set(pick.tolist())
    assert len(pick) <= len(edges) + n_random


@pytest.mark.parametrize("layout,shape", [("NLC", (3, 7, 4)), ("NCL", (3, 4, 7))])
def test_random_onehot_is_one_hot_in_the_layout(layout, shape):
    x = random_onehot(3, 7, 4, layout, np.random.default_rng(1))
    assert x.shape == shape and x.dtype == np.float32
    assert (x.sum(1 if layout == "NCL" else 2) == 1).all() and set(np.unique(x)) == {0.0, 1.0}


def test_max_difference_is_relative_to_the_scale_with_a_floor():
    e = np.array([0.0, 10.0])
    assert max_difference(e, e + [0, 9e-5], rtol=1e-5)[2]            # 9e-5 <= 1e-5 * 10
    diff, scale, ok = max_difference(e, e + [0, 2e-4], rtol=1e-5)
    assert (round(diff, 9), scale, ok) == (2e-4, 10.0, False)
    tiny = np.array([1e-6])                                           # compared at the floor's scale, 1e-3
    assert max_difference(tiny, tiny + 5e-9, rtol=1e-5, atol=0)[2]
    assert not max_difference(tiny, tiny + 2e-8, rtol=1e-5, atol=0)[2]
    assert max_difference(np.zeros(0), np.zeros(0), rtol=0)[2]


def test_copy_model_false_shares_the_model_and_the_default_copies_it():
    net = nn.Sequential(nn.Conv1d(4, 3, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 20, 2)).train()
    shared = ft.NaiveISM(net, 20, copy_model=False)
    assert shared.model is net and not net.training
    net.train()
    own = ft.NaiveISM(net, 20)
    assert own.model is not net and net.training                       # the caller's mode is kept
    assert own.model[0].weight.data_ptr() != net[0].weight.data_ptr()


def test_check_against_naive_compares_on_the_engines_model(monkeypatch):
    """The oracle runs the FastISM's own model copy; a wrong fast result is caught at the edge windows."""
    net = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 2, 3, padding=1))
    fast = ft.FastISM(net, 30, test_correctness=False)
    assert check_against_naive(fast, n_ranges=0) < 1e-5
    real = fast.edit_outputs

    def off_at_the_last_window(inp, s_idx, r_idx, values):
        outs = real(inp, s_idx, r_idx, values)
        outs[0][np.asarray(r_idx) == 29] += 1.0
        return outs
    monkeypatch.setattr(fast, "edit_outputs", off_at_the_last_window)
    with pytest.raises(RuntimeError, match="FastISM differs from NaiveISM"):
        check_against_naive(fast, n_ranges=0)
    seen = []
    monkeypatch.setattr(ft.NaiveISM, "edit_outputs", lambda self, *a: seen.append(self.model) or real(*a))
    monkeypatch.setattr(fast, "edit_outputs", real)
    check_against_naive(fast, n_ranges=0)
    assert seen == [fast.model]
