"""Building blocks of the fuzzer's architectures.

Each block is an ``nn.Module`` whose forward is ordinary torch code; Python-level settings (strings, ints) are
constants to torch.fx, so the traced graph holds only the ops of the drawn variant.  :mod:`.generator` draws
them; nothing here is random.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:                                   # optional: rearrange is only drawn when einops is importable
    from einops import rearrange
except ImportError:                    # pragma: no cover - depends on the environment
    rearrange = None


class Seq(nn.Module):
    """Modules one after the other (conv, pooling, BatchNorm, activation modules, padding modules)."""

    def __init__(self, *mods):
        super().__init__()
        self.ms = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.ms:
            x = m(x)
        return x


class FPad(nn.Module):
    """``F.pad`` along the length axis: constant (any value, negative = crop) or reflect/replicate/circular."""

    def __init__(self, pad, mode="constant", value=0.0):
        super().__init__()
        self.pad, self.mode, self.value = tuple(pad), mode, value

    def forward(self, x):
        if self.mode == "constant":
            return F.pad(x, self.pad, value=self.value) if self.value else F.pad(x, self.pad)
        return F.pad(x, self.pad, mode=self.mode)


class FnAct(nn.Module):
    """Functional activations, including the in-place spellings."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        k = self.kind
        if k == "F.relu_":
            return F.relu_(x)
        if k == "F.relu(inplace)":
            return F.relu(x, inplace=True)
        if k == "x.relu_()":
            return x.relu_()
        if k == "torch.relu":
            return torch.relu(x)
        if k == "F.gelu":
            return F.gelu(x)
        if k == "x.sigmoid()*x":
            return x * x.sigmoid()
        if k == "F.leaky_relu":
            return F.leaky_relu(x, 0.1)
        if k == "F.elu_":
            return F.elu_(x)
        raise AssertionError(k)


class FPool(nn.Module):
    def __init__(self, kind, k, s, p):
        super().__init__()
        self.kind, self.k, self.s, self.p = kind, k, s, p

    def forward(self, x):
        if self.kind == "max":
            return F.max_pool1d(x, self.k, self.s, self.p)
        return F.avg_pool1d(x, self.k, self.s, self.p)


class Residual(nn.Module):
    """``x + f(x)`` with the skip cropped to f's length (by a constant or by shape arithmetic)."""

    def __init__(self, f, mode, crop, d=0, act=None):
        super().__init__()
        self.f, self.mode, self.crop, self.d = f, mode, crop, d
        self.act = act

    def forward(self, x):
        if self.mode == "preact_inplace":          # in-place activation on the tensor the skip also reads
            y = self.f(self.act(x))
        else:
            y = self.f(x)
        if self.crop == "const":
            x = x[:, :, self.d:-self.d]
        elif self.crop == "shape":
            d = (x.shape[-1] - y.shape[-1]) // 2
            x = x[..., d:d + y.shape[-1]]
        elif self.crop == "narrow":
            x = x.narrow(2, (x.size(2) - y.size(2)) // 2, y.size(2))
        if self.mode == "iadd":
            x += y
        elif self.mode == "alias_iadd":            # h aliases x: eager x += y changes h too
            h = x
            x += y
            x = x + h
        elif self.mode == "iadd_into_y":
            y += x
            x = y
        else:
            x = x + y
        return x


class Cat(nn.Module):
    """Channel concatenation: ``cat([x, f(x)])`` or ``cat([g(x), f(x)])``, the longer cropped to the shorter
    by shape arithmetic (``crop="a"`` / ``"b"``: which one is longer) or with Python's ``min`` of two sizes."""

    def __init__(self, f, g=None, crop="a"):
        super().__init__()
        self.f, self.g, self.crop = f, g, crop

    def forward(self, x):
        a = x if self.g is None else self.g(x)
        b = self.f(x)
        if self.crop == "a":
            d = (a.shape[-1] - b.shape[-1]) // 2
            a = a[:, :, d:d + b.shape[-1]]
        elif self.crop == "b":
            d = (b.size(-1) - a.size(-1)) // 2
            b = b[..., d:d + a.size(-1)]
        elif self.crop == "min":                   # Python control flow on two traced sizes
            la, lb = a.shape[-1], b.shape[-1]
            n = min(la, lb)
            a = a[:, :, (la - n) // 2:(la - n) // 2 + n]
            b = b[:, :, (lb - n) // 2:(lb - n) // 2 + n]
        return torch.cat([a, b], dim=1)


class PoolConvBranch(nn.Module):
    """A 'same' stride-1 pooling (-inf / count_include_pad padding) and a 'same' conv reading the same tensor."""

    def __init__(self, pool, conv, combine):
        super().__init__()
        self.pool, self.conv, self.combine = pool, conv, combine

    def forward(self, x):
        a = self.pool(x)
        b = self.conv(x)
        if self.combine == "add":
            return a + b
        if self.combine == "mul":
            return a * b
        return torch.cat((a, b), 1)


class Scale(nn.Module):
    def __init__(self, c, kind):
        super().__init__()
        self.kind = kind
        self.scale = nn.Parameter(torch.rand(c, 1) + 0.5) if kind == "(c,1)" else nn.Parameter(torch.rand(c) + 0.5)
        self.shift = nn.Parameter(torch.randn(c) * 0.1)

    def forward(self, x):
        if self.kind == "(c,1)":
            return x * self.scale
        return x * self.scale[None, :, None] + self.shift.view(1, -1, 1)


class ChannelMix(nn.Module):
    """To (N, L, C), Linear and/or LayerNorm over channels, and back."""

    def __init__(self, how, mods):
        super().__init__()
        self.how = how
        self.ms = nn.ModuleList(mods)

    def forward(self, x):
        if self.how == "transpose":
            x = x.transpose(1, 2)
        elif self.how == "permute":
            x = x.permute(0, 2, 1)
        elif self.how == "einops":
            x = rearrange(x, "b c l -> b l c")
        else:
            x = torch.transpose(x, -1, -2).contiguous()
        for m in self.ms:
            x = m(x)
        if self.how == "einops":
            return rearrange(x, "b l c -> b c l")
        if self.how == "permute":
            return x.permute(0, 2, 1)
        return x.transpose(1, 2)


class Flip(nn.Module):
    """Reverse(-complement) style: average with the flipped tensor, or run f on both strands."""

    def __init__(self, kind, f=None):
        super().__init__()
        self.kind, self.f = kind, f

    def forward(self, x):
        if self.kind == "avg":
            return 0.5 * (x + x.flip(-1))
        if self.kind == "torch.flip":
            return (x + torch.flip(x, dims=[2])) / 2
        if self.kind == "rc_f":
            return (self.f(x) + self.f(x.flip([1, 2])).flip(-1)) / 2
        if self.kind == "flip_f_flip":
            return self.f(x.flip(-1)).flip(-1)
        raise AssertionError(self.kind)


class BatchCat(nn.Module):
    """Both strands in one batch: ``cat([x, x.flip(-1)], 0)``, f, split back, add."""

    def __init__(self, f, split):
        super().__init__()
        self.f, self.split = f, split

    def forward(self, x):
        z = self.f(torch.cat([x, x.flip(-1)], dim=0))
        if self.split == "chunk":
            a, b = z.chunk(2, dim=0)
        else:
            n = x.shape[0]
            a, b = z[:n], z[n:]
        return a + b.flip(-1)


class Misc(nn.Module):
    """Less common ops."""

    def __init__(self, kind, m=None):
        super().__init__()
        self.kind, self.m = kind, m

    def forward(self, x):
        k = self.kind
        if k == "conv2d(k,1)":
            return self.m(x.unsqueeze(-1)).squeeze(-1)
        if k == "softmax_c":
            return F.softmax(x, dim=1)
        if k == "upsample2":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if k == "reshape":
            return x.reshape(x.shape[0], -1, x.shape[-1])
        if k == "view_size":
            return x.contiguous().view(x.size(0), x.size(1), x.size(2))
        if k == "gate":
            return x * torch.sigmoid(self.m(x))
        if k == "glu":
            return F.glu(torch.cat([x, self.m(x)], 1), dim=1)
        if k == "clamp":
            return x.clamp(-1.0, 1.0)
        if k == "chan_center":
            return x - x.mean(1, keepdim=True)
        if k == "len_center":
            return x - x.mean(-1, keepdim=True)
        if k == "where":
            return torch.where(x > 0, x, 0.1 * x)
        if k == "square":
            return x * x + x
        raise AssertionError(k)


class FConv(nn.Module):
    """``F.conv1d`` with the layer's own weight and bias parameters, as ported models (onnx2torch, Keras ports,
    hand-written reverse-complement layers) call it; ``rc``: the reverse-complement form
    ``conv(x.flip([1, 2]), w).flip([1, 2])``-style weight sharing averaged with the forward strand."""

    def __init__(self, cin, out, k, dilation, padding, rc):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out, cin, k) / (cin * k) ** 0.5)
        self.bias = nn.Parameter(torch.randn(out) * 0.1)
        self.dilation, self.padding, self.rc = dilation, padding, rc

    def forward(self, x):
        y = F.conv1d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation)
        if self.rc:
            w = self.weight.flip([0, 1, 2])              # complement strand: channels and taps reversed
            y = 0.5 * (y + F.conv1d(x, w, self.bias.flip(0), padding=self.padding, dilation=self.dilation))
        return y


class Crop(nn.Module):
    """Cropping a constant number of positions from each end (Keras ``Cropping1D``, Basenji/BPNet trimming)."""

    def __init__(self, a, b, how):
        super().__init__()
        self.a, self.b, self.how = a, b, how

    def forward(self, x):
        if self.how == "slice":
            return x[:, :, self.a:x.shape[-1] - self.b]
        if self.how == "neg":
            return x[..., self.a:-self.b] if self.b else x[..., self.a:]
        return torch.narrow(x, 2, self.a, x.shape[2] - self.a - self.b)


class SqueezeExcite(nn.Module):
    """Channel gates from the sequence-wide mean: ``x * sigmoid(W2 relu(W1 mean(x)))`` (a global op mid-model)."""

    def __init__(self, c, hidden):
        super().__init__()
        self.l1, self.l2 = nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        g = torch.sigmoid(self.l2(F.relu(self.l1(x.mean(-1)))))
        return x * g.unsqueeze(-1)


class AttentionPool(nn.Module):
    """Enformer's attention pooling over pairs of positions: softmax-weighted sums of (N, C, L/2, 2) blocks."""

    def __init__(self, c):
        super().__init__()
        self.logit = nn.Conv1d(c, c, 1, bias=False)

    def forward(self, x):
        n, c, length = x.shape
        x = x[..., :length - length % 2]
        w = self.logit(x).view(n, c, -1, 2).softmax(-1)
        return (x.view(n, c, -1, 2) * w).sum(-1)


class Mixer(nn.Module):
    """A sequence mixer after the convolutions: LSTM / GRU / MultiheadAttention on (N, L, C)."""

    def __init__(self, kind, m, residual):
        super().__init__()
        self.kind, self.m, self.residual = kind, m, residual

    def forward(self, x):
        t = x.transpose(1, 2)
        if self.kind == "mha":
            y, _ = self.m(t, t, t, need_weights=False)
        else:
            y, _ = self.m(t)
        if self.residual:
            y = y + t
        return y.transpose(1, 2)
