"""MAC accounting: hand-counted full passes, and the bound's honesty for models whose costly part (LSTM,
attention) runs in full after a stop point."""
from __future__ import annotations

import torch
from torch import nn

import fastism_torch as ft
from helpers import scale_weights


class DanQLike(nn.Module):
    def __init__(self, L):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 9, padding=4)
        self.pool = nn.MaxPool1d(4)
        self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12 * (L // 4), 2)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x))).transpose(1, 2)
        return self.fc(self.lstm(h)[0].flatten(1))


class AttentionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.conv(x).transpose(1, 2)
        q = h @ torch.ones(8, 8)                       # a product with a constant: counted like a dense layer
        return self.att(q, h, h)[0].mean(1)


def test_lstm_and_pooling_are_counted():
    L = 40
    s = ft.FastISM(scale_weights(DanQLike(L)), L).mac_summary()
    conv, pool = 4 * 9 * 8 * L, 8 * (L // 4) * 4
    lstm = (L // 4) * 2 * 4 * (8 + 6) * 6
    fc = 12 * (L // 4) * 2
    assert s["full_macs"] == conv + pool + lstm + fc, s
    # the LSTM runs in full for every mutation: the bound stays below full / (lstm + fc)
    assert s["ratio"] < (conv + pool + lstm + fc) / (lstm + fc)


def test_attention_is_counted():
    L, e = 30, 8
    s = ft.FastISM(scale_weights(AttentionHead()), L).mac_summary()
    conv, mm = 4 * 5 * 8 * L, L * 8 * 8
    att = 2 * L * e * e + 2 * L * e * e + 2 * L * L * e
    assert s["full_macs"] == conv + mm + att, s
    assert s["ratio"] < (conv + mm + att) / att


def test_bounds_and_executed_macs_of_delta_plans():
    """Basset-like convolutions: the delta bound exceeds the recompute bound; the plan's own choice sits between
    them; the executed MACs (counted by FlopCounterMode over a real call) are at least the planned ones and, on
    the eager path, within 15% of them (groups' widest windows, the reference pass); with delta=False the plan
    is the recompute bound."""
    from fastism_torch import models
    from fastism_torch.macs import executed_macs
    m, L = models.basset(seq_len=200), 200
    s = ft.FastISM(m, L, test_correctness=False).mac_summary()
    assert s["delta_ratio"] > s["planned_ratio"] * 0.99 and s["planned_ratio"] > 1.5 * s["ratio"], s
    fast = ft.FastISM(m, L, test_correctness=False)
    e = executed_macs(fast, models.random_onehot(1, L))
    assert s["planned_macs_per_mutation"] <= e["per_mutation"] <= 1.15 * s["planned_macs_per_mutation"], (s, e)
    r = ft.FastISM(m, L, test_correctness=False, delta=False).mac_summary()
    assert r["planned_macs_per_mutation"] == r["fast_macs_per_mutation"] == s["fast_macs_per_mutation"], r
