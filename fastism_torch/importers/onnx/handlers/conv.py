"""Convolutions and pooling: tf2onnx's 2-D forms of Keras's 1-D layers become 1-D, the corrected converters'
padded/cropped wrappers become explicit ``F.pad``/slices, and ``nn.Sequential`` is unrolled."""
from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..converters import OnnxConvTransposeCropped, OnnxPadded
from ..registry import convert_module, handles
from ..values import Sym, rank


def _squeeze_spatial(x: Sym, kernel, stride, padding, dilation=(1, 1)) -> int | None:
    """Which spatial axis (2 or 3) of a 4-D input is a trivial singleton for this 2-D op, if any."""
    if rank(x) != 4:
        return None
    kernel, stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (v, v)
                                         for v in (kernel, stride, padding, dilation))
    for ax, other in ((2, 1), (3, 0)):
        o = 1 - other
        if x.shape[ax] == 1 and kernel[o] == 1 and stride[o] == 1 and padding[o] == 0:
            return ax
    return None


def _as_1d(b, name, one_d: nn.Module, x: Sym, ax: int) -> Sym:
    """``one_d`` applied to ``x`` with its singleton spatial axis ``ax`` squeezed away and put back."""
    y = b.module(name, one_d, b.fn(torch.squeeze, x, ax))
    return b.fn(torch.unsqueeze, y, ax)


def _copy_params(src: nn.Module, dst: nn.Module, ax: int) -> nn.Module:
    dst.weight = nn.Parameter(src.weight.detach().squeeze(ax).clone(), requires_grad=False)
    if src.bias is not None:
        dst.bias = nn.Parameter(src.bias.detach().clone(), requires_grad=False)
    return dst


@handles(nn.Conv2d)
def _conv2d(b, name, mod, x):
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        return b.module(name, mod, x)
    ax = _squeeze_spatial(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if ax is None:
        return b.module(name, mod, x)
    sp = 3 - ax                                  # index into (kh, kw) of the sliding axis: ax 2 -> kw
    c = nn.Conv1d(mod.in_channels, mod.out_channels, mod.kernel_size[sp], stride=mod.stride[sp],
                  padding=mod.padding[sp], dilation=mod.dilation[sp], groups=mod.groups, bias=mod.bias is not None)
    return _as_1d(b, name, _copy_params(mod, c, ax), x, ax)


@handles(nn.ConvTranspose2d)
def _conv_transpose2d(b, name, mod, x):
    ax = _squeeze_spatial(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if ax is None:
        return b.module(name, mod, x)
    sp = 3 - ax
    if mod.output_padding[1 - sp] != 0:
        return b.module(name, mod, x)
    c = nn.ConvTranspose1d(mod.in_channels, mod.out_channels, mod.kernel_size[sp], stride=mod.stride[sp],
                           padding=mod.padding[sp], output_padding=mod.output_padding[sp],
                           dilation=mod.dilation[sp], groups=mod.groups, bias=mod.bias is not None)
    return _as_1d(b, name, _copy_params(mod, c, ax), x, ax)


@handles(OnnxConvTransposeCropped)
def _conv_transpose_cropped(b, name, mod, x):
    crops = mod.crop(x.shape[2:])
    conv = copy.deepcopy(mod.conv)
    conv.padding = tuple(min(bg, en) for bg, en in crops)
    y = convert_module(b, name, conv, [x])
    extra = [(bg - p, en - p) for (bg, en), p in zip(crops, conv.padding)]
    if not any(bg or en for bg, en in extra):
        return y
    idx = (slice(None), slice(None)) + tuple(slice(bg, y.shape[2 + i] - en) for i, (bg, en) in enumerate(extra))
    return b.fn(operator.getitem, y, idx)


@handles(OnnxPadded)
def _padded(b, name, mod, x):
    pads = tuple(int(p) for p in mod.torch_pads(x.shape[2:]))
    xp = b.fn(F.pad, x, pads, value=float(mod.value)) if any(pads) else x
    y = convert_module(b, name, mod.inner, [xp])
    if not mod.divide_by_count or not any(pads):
        return y
    frac = mod.inner(F.pad(torch.ones((1, 1, *x.shape[2:])), pads))    # share of real inputs in each window
    frac = frac.reshape(frac.shape[:2] + tuple(y.shape[2:]))
    return b.fn(operator.truediv, y, b.tensor_arg(frac, y))


@handles(nn.MaxPool2d, nn.AvgPool2d)
def _pool2d(b, name, mod, x):
    dil = getattr(mod, "dilation", 1)
    ax = _squeeze_spatial(x, mod.kernel_size, mod.stride, mod.padding, dil)
    if ax is None:
        return b.module(name, mod, x)
    sp = 3 - ax

    def pick(v):
        return v[sp] if isinstance(v, (tuple, list)) else v
    if isinstance(mod, nn.MaxPool2d):
        p = nn.MaxPool1d(pick(mod.kernel_size), pick(mod.stride), pick(mod.padding), pick(dil),
                         ceil_mode=mod.ceil_mode)
    else:
        if mod.divisor_override:
            return b.module(name, mod, x)
        p = nn.AvgPool1d(pick(mod.kernel_size), pick(mod.stride), pick(mod.padding), ceil_mode=mod.ceil_mode,
                         count_include_pad=mod.count_include_pad)
    return _as_1d(b, name, p, x, ax)


@handles(nn.Sequential)
def _sequential(b, name, mod, x):
    for i, child in enumerate(mod):
        x = convert_module(b, f"{name}_{i}", child, [x])
    return x
