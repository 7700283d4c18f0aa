"""Output heads of the generator: dense, pooled, profile, and two-output dict / tuple forms."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """Output heads: dense (flatten + Linear ``lin``), pooled (global pooling + Linear ``lin_p``), profile (conv
    ``prof`` kept per position), and two-output forms: a dict, a tuple, dense + pooled; ``post`` after one output."""

    def __init__(self, kind, mods, dense_how=None, pool_how=None, post=None):
        super().__init__()
        self.kind, self.dense_how, self.pool_how, self.post = kind, dense_how, pool_how, post
        self.ms = nn.ModuleDict(mods)

    def dense(self, x):
        h = self.dense_how
        if h == "flatten(1)":
            f = x.flatten(1)
        elif h == "torch.flatten":
            f = torch.flatten(x, 1)
        elif h == "view":
            f = x.view(x.size(0), -1)
        elif h == "reshape":
            f = x.reshape(x.shape[0], -1)
        else:
            f = self.ms["flatten"](x)
        return self.ms["lin"](f)

    def pooled(self, x):
        h = self.pool_how
        if h == "mean":
            p = x.mean(-1)
        elif h == "sum":
            p = x.sum(dim=2)
        elif h == "amax":
            p = x.amax(-1)
        elif h == "max[0]":
            p = x.max(dim=-1)[0]
        elif h == "adaptive_avg":
            p = self.ms["pool"](x).flatten(1)
        elif h == "adaptive_max":
            p = self.ms["pool"](x).squeeze(-1)
        elif h == "mean_relu_inplace":
            p = self.ms["relu"](x.mean(-1))
        else:
            p = torch.mean(x, dim=2)
        return self.ms["lin_p"](p)

    def forward(self, x):
        if self.kind == "dict":
            return {"profile": self.ms["prof"](x), "counts": self.pooled(x)}
        if self.kind == "tuple":
            return self.ms["prof"](x), self.pooled(x)
        if self.kind == "dense+pool":
            return self.dense(x), self.pooled(x)
        if self.kind == "dense":
            y = self.dense(x)
        elif self.kind == "pool":
            y = self.pooled(x)
        else:
            y = self.ms["prof"](x)
        if self.post == "relu_inplace":
            y = self.ms["post"](y)
        elif self.post == "F.relu_":
            y = F.relu_(y)
        elif self.post == "softplus":
            y = F.softplus(y)
        elif self.post == "softmax(-1)":           # a profile's probabilities over positions (targets otherwise)
            y = y.softmax(-1)
        return y


class Heads:
    """The head draw, mixed into :class:`~fuzz.generator.Gen`."""

    def head(self):
        r = self.rnd
        c, L = self.c, self.L
        T = r.randint(1, 3)
        kind = r.choice(["dense", "dense", "pool", "pool", "profile", "dict", "tuple", "dense+pool"])
        mods, post = {}, None
        dense_how = r.choice(["flatten(1)", "torch.flatten", "view", "reshape", "nn.Flatten"])
        pool_how = r.choice(["mean", "mean", "sum", "amax", "max[0]", "adaptive_avg", "adaptive_max",
                             "mean_relu_inplace", "torch.mean"])
        if kind in ("dense", "dense+pool"):
            mods["lin"] = nn.Linear(c * L, T)
            if dense_how == "nn.Flatten":
                mods["flatten"] = nn.Flatten()
        if kind in ("pool", "dict", "tuple", "dense+pool"):
            mods["lin_p"] = nn.Linear(c, T)
            if pool_how == "adaptive_avg":
                mods["pool"] = nn.AdaptiveAvgPool1d(1)
            elif pool_how == "adaptive_max":
                mods["pool"] = nn.AdaptiveMaxPool1d(1)
            elif pool_how == "mean_relu_inplace":
                mods["relu"] = nn.ReLU(inplace=True)
        if kind in ("profile", "dict", "tuple"):
            if r.random() < 0.5 or L < 10:
                mods["prof"] = nn.Conv1d(c, T, r.choice([1, 3, 5]), padding="same")
            else:
                mods["prof"] = nn.Conv1d(c, T, r.randint(1, 9), dilation=r.choice([1, 2]))
        if kind in ("dense", "pool", "profile") and r.random() < 0.3:
            post = r.choice(["relu_inplace", "relu_inplace", "F.relu_", "softplus", "softmax(-1)"])
            if post == "relu_inplace":
                mods["post"] = nn.ReLU(inplace=True)
        head = Head(kind, mods, dense_how, pool_how, post)
        desc = {"dense": f"{dense_how} -> Linear({c}*{L}->{T})", "pool": f"{pool_how} -> Linear({c}->{T})",
                "profile": f"profile conv ({c}->{T}) per position",
                "dict": f"dict(profile=conv({c}->{T}), counts={pool_how} -> Linear)",
                "tuple": f"tuple(profile conv({c}->{T}), {pool_how} -> Linear)",
                "dense+pool": f"tuple({dense_how} -> Linear, {pool_how} -> Linear)"}[kind]
        if post:
            desc += f" -> {post}"
        return head, desc
