"""Helpers shared by the tests: well-scaled random models, random one-hot input, the naive-ISM oracle comparison."""
from __future__ import annotations

import torch
from torch import nn

import fastism_torch as ft


class Lambda(nn.Module):
    """A module around a function or another module (what fx traces as one op or a few)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class NLC(nn.Module):
    """``model`` (NCL) taking ``(N, L, C)`` input: transposed to NCL first."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x.transpose(1, 2))


class Attention(nn.Module):
    """Conv, then single-head self-attention over the length (a stop), mean, dense."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)                             # (N, L, 8)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 8 ** 0.5, -1)
        return self.out((a @ self.v(h)).mean(1))


def scale_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Kaiming-scaled weights and non-trivial BatchNorm statistics, so mutations move the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.Linear)):
            fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose1d) else m.weight.shape[0] * m.weight.shape[2]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is not None:
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def random_onehot(n: int, length: int, layout: str = "NCL", seed: int = 1, c: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.one_hot(torch.randint(0, c, (n, length), generator=g), c).float()
    return x.transpose(1, 2).contiguous() if layout == "NCL" else x


def as_tuple(x) -> tuple:
    """An engine's result as a tuple of outputs (one per model output)."""
    return x if isinstance(x, tuple) else (x,)


def spread(naive_out, relative: bool = False) -> float:
    """How far the outputs move under mutation: the largest |output - the same sequence's first edit's output|
    (along dim 1), over all outputs; with ``relative``, each divided by its output's largest |value|."""
    out = 0.0
    for o in as_tuple(naive_out):
        o = torch.as_tensor(o)
        d = float((o - o[:, :1]).abs().max())
        out = max(out, d / (float(o.abs().max()) or 1.0) if relative else d)
    return out


def assert_close_to_naive(fast_out, naive_out, rtol: float = 1e-5):
    for f, s in zip(as_tuple(fast_out), as_tuple(naive_out)):
        f, s = torch.as_tensor(f), torch.as_tensor(s)
        assert f.shape == s.shape, (f.shape, s.shape)
        scale = float(s.abs().max()) or 1.0
        diff = float((f - s).abs().max())
        assert diff <= rtol * scale + 1e-7, f"max |fast - naive| = {diff:.3g} at scale {scale:.3g}"


def check_model(model, length, n=2, layout="NCL", saturation=True, seqs=None, rtol=1e-5, min_spread=1e-4,
                **kw):
    """FastISM == NaiveISM for the default windows (and full saturation), on random one-hot input."""
    model = model.eval()
    fast = ft.FastISM(model, length, layout=layout, test_correctness=False, **kw)
    naive_kw = {k: v for k, v in kw.items() if k not in ("early_stop_layers", "strict", "delta")}
    naive = ft.NaiveISM(model, length, layout=layout, **naive_kw)
    x = random_onehot(n, length, layout) if seqs is None else seqs
    a, b = fast(x), naive(x)
    assert_close_to_naive(a, b, rtol)
    moved = spread(b)
    assert moved > min_spread, f"outputs barely move under mutation ({moved:.2g}): the test checks nothing"
    if saturation:
        assert_close_to_naive(fast.saturation_mutagenesis(x), naive.saturation_mutagenesis(x), rtol)
    return fast


def decision_of(model, x, laxis=2):
    """The rule decision for the output node of ``model`` captured on ``x``."""
    from fastism_torch.analysis import analyse
    from fastism_torch.capture import capture
    gm = capture(model, [x])
    seq = next(n for n in gm.graph.nodes if n.op == "placeholder")
    infos = analyse(gm, seq, laxis, x.shape[laxis])
    out = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes[0]
    return infos[out].decision


def short_field(head_relu: bool = False, pool: str = "mean"):
    """A conv tower with a receptive field of 7 + global pooling + a dense head (``head_relu``: nonlinear)."""
    glob = nn.AdaptiveAvgPool1d(1) if pool == "mean" else nn.AdaptiveMaxPool1d(1)
    head = [nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)] if head_relu else [nn.Linear(8, 3)]
    torch.manual_seed(0)
    return scale_weights(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                                       nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(), glob, nn.Flatten(), *head))


def profile_head():
    class Net(nn.Module):                  # a linear profile head and a mean + dense counts head
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1)
            self.profile, self.counts = nn.Conv1d(8, 2, 9, padding=4), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.c2(torch.relu(self.c1(x))))
            return self.profile(h), self.counts(h.mean(-1))
    torch.manual_seed(0)
    return scale_weights(Net())
