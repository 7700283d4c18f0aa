"""Randomized differential test: a seeded generator of valid architectures, each compared with NaiveISM."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import check_model, scale_weights

pytestmark = pytest.mark.usefixtures("kernel_form")   # every test with the CPU eager and the static kernels

ACTS = [nn.ReLU, nn.GELU, nn.ELU, nn.Softplus, nn.Tanh, nn.SiLU]


class RandomNet(nn.Module):
    def __init__(self, seed: int, length: int):
        super().__init__()
        rnd = random.Random(seed)
        c, L = 4, length
        self.layers = nn.ModuleList()
        self.kinds = []
        for i in range(rnd.randint(2, 6)):
            kind = "conv" if i == 0 else rnd.choice(["conv", "conv", "pool", "act", "bn", "res", "crop", "pad", "cat"])
            if kind in ("conv", "res", "cat"):
                k, d = rnd.randint(1, 6), rnd.choice([1, 1, 2, 3])
                out = rnd.choice([3, 5, 8])
                if kind == "conv":
                    pad = rnd.choice(["same", "valid", rnd.randint(0, 3)])
                    if pad == "same" or d * (k - 1) + 1 <= L + 2 * (pad if isinstance(pad, int) else 0):
                        m = nn.Conv1d(c, out, k, dilation=d, padding=pad)
                        L = m(torch.zeros(1, c, L)).shape[-1]
                        c = out
                    else:
                        continue
                else:
                    m = nn.Conv1d(c, c if kind == "res" else out, k, dilation=d, padding="same")
                    if kind == "cat":
                        c = c + out
            elif kind == "pool":
                k = rnd.randint(2, 4)
                s = rnd.choice([k, 1, 2])
                if L < k + 1:
                    continue
                m = rnd.choice([nn.MaxPool1d, nn.AvgPool1d])(k, s)
                L = m(torch.zeros(1, c, L)).shape[-1]
            elif kind == "act":
                m = rnd.choice(ACTS)()
            elif kind == "bn":
                m = nn.BatchNorm1d(c)
            elif kind == "crop":
                if L < 8:
                    continue
                a = rnd.randint(1, 3)
                m, L = nn.Identity(), L - 2 * a
                kind = ("crop", a)
            else:                                       # pad
                a, b = rnd.randint(0, 3), rnd.randint(0, 3)
                m, L = nn.ConstantPad1d((a, b), 0.0), L + a + b
            self.layers.append(m)
            self.kinds.append(kind)
        self.head_kind = rnd.choice(["dense", "gap", "profile"])
        self.head = nn.Linear(c * L if self.head_kind == "dense" else c, 3) if self.head_kind != "profile" \
            else nn.Conv1d(c, 2, 3, padding=1)

    def forward(self, x):
        for kind, m in zip(self.kinds, self.layers):
            if kind == "res":
                x = x + F.relu(m(x))
            elif kind == "cat":
                x = torch.cat([x, m(x)], dim=1)
            elif isinstance(kind, tuple):
                x = x[:, :, kind[1]:-kind[1]]
            else:
                x = m(x)
        if self.head_kind == "dense":
            return self.head(x.flatten(1))
        if self.head_kind == "gap":
            return self.head(x.mean(-1))
        return self.head(x)


@pytest.mark.parametrize("seed", range(60))
def test_random_architecture(seed):
    length = random.Random(seed).choice([24, 31, 40])
    model = scale_weights(RandomNet(seed, length), seed)
    check_model(model, length, saturation=seed % 3 == 0, min_spread=1e-6)
