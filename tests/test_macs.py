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
