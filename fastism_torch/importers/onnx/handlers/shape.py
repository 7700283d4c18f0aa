"""Layout and indexing: Unsqueeze, Squeeze, Transpose, Reshape, Flatten, Concat, Slice, Pad, Cast, Identity,
ReverseSequence."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.cast import OnnxCast
from onnx2torch.node_converters.concat import OnnxConcat
from onnx2torch.node_converters.dropout import OnnxDropoutDynamic
from onnx2torch.node_converters.flatten import OnnxFlatten
from onnx2torch.node_converters.identity import OnnxCopyIdentity
from onnx2torch.node_converters.pad import (
    OnnxPadDynamic,
    OnnxPadStatic,
    _onnx_padding_to_torch,
)
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.node_converters.slice import OnnxSlice
from onnx2torch.node_converters.squeeze import (
    OnnxSqueezeDynamicAxes,
    OnnxSqueezeStaticAxes,
)
from onnx2torch.node_converters.transpose import OnnxTranspose
from onnx2torch.node_converters.unsqueeze import (
    OnnxUnsqueezeDynamicAxes,
    OnnxUnsqueezeStaticAxes,
)
from torch import nn

from ..converters import OnnxReverseSequence
from ..registry import handles
from ..values import Const, ShapeVal, Sym, Unsupported, axes, example, ints, rank


@handles(OnnxUnsqueezeStaticAxes, OnnxUnsqueezeDynamicAxes)
def _unsqueeze(b, name, mod, x, ax=None):
    ax = mod._axes if ax is None else ints(ax.value)
    out_rank = rank(x) + len(ax)
    for a in sorted(a + out_rank if a < 0 else a for a in ax):
        x = b.fn(torch.unsqueeze, x, a)
    return x


@handles(OnnxSqueezeStaticAxes, OnnxSqueezeDynamicAxes)
def _squeeze(b, name, mod, x, ax=None):
    ax = getattr(mod, "axes", None) if ax is None else ax.value
    if ax is None:
        ax = [i for i, s in enumerate(x.shape) if s == 1 and i > 0]
    ax = axes(ax, rank(x))
    if not ax:
        return x
    return b.fn(torch.squeeze, x, tuple(ax))


@handles(OnnxTranspose)
def _transpose(b, name, mod, x):
    perm = mod.perm if mod.perm is not None else list(range(rank(x)))[::-1]
    return b.fn(torch.permute, x, tuple(int(p) for p in perm))


def _reshape_target(x: Sym, shape_c: Const | Sym | ShapeVal, y: tuple) -> tuple[int, ...]:
    """ONNX Reshape's target as ints: 0 copies the input dim, a batch-dependent entry becomes -1."""
    if isinstance(shape_c, (Sym, ShapeVal)):  # shape computed from Shape(x): compare the two examples
        s0, s1 = ints(shape_c.ex[0]), ints(shape_c.ex[1])
    else:
        s0 = s1 = ints(shape_c.value)
    out = []
    for i, (a, c) in enumerate(zip(s0, s1)):
        if a != c:
            out.append(-1)
        elif a == 0:
            out.append(-1 if i == 0 else x.shape[i])
        else:
            out.append(a)
    if out.count(-1) > 1:                     # keep -1 only for the batch axis
        out = [-1 if i == 0 else d for i, d in enumerate(y[0].shape)]
    return tuple(out)


@handles(OnnxReshape, shape_args=True)
def _reshape(b, name, mod, x, shape, *rest):
    y = (mod(x.ex[0], example(shape, 0)), mod(x.ex[1], example(shape, 1)))
    target = _reshape_target(x, shape, y)
    src = b.reshaped_from(x)
    if src is not None:
        x = src
    if tuple(x.shape) == tuple(y[0].shape) and tuple(x.ex[1].shape) == tuple(y[1].shape):
        return x                                      # a no-op (e.g. undoing tf-keras's Tensordot flatten)
    return b.method("reshape", x, target)


@handles(OnnxFlatten)
def _flatten(b, name, mod, x):
    axis = mod.axis + rank(x) if mod.axis < 0 else mod.axis
    if axis == 1:
        return b.fn(torch.flatten, x, 1)
    return b.method("reshape", x, (-1, math.prod(x.shape[axis:])) if axis > 0 else (1, -1))


@handles(OnnxConcat)
def _concat(b, name, mod, *xs):
    like = next(x for x in xs if isinstance(x, Sym))
    dim = mod.axis + rank(like) if mod.axis < 0 else mod.axis
    parts = [b.tensor_arg(x.value) if isinstance(x, Const) else x for x in xs]
    parts = [p if isinstance(p, Sym) else b.tensor_arg(torch.as_tensor(p)) for p in parts]
    return b.fn(torch.cat, list(parts), dim)


def _slice_index(x: Sym, starts, ends, ax, steps) -> list:
    idx = [slice(None)] * rank(x)
    for s, e, a, st in zip(starts, ends, ax, steps):
        a = a + rank(x) if a < 0 else a
        if x.ex[0].shape[a] != x.ex[1].shape[a]:               # the batch axis (a time-major axis 0 is not)
            if s == 0 and e >= 2 ** 31 - 1 and st == 1:        # the whole batch
                continue
            raise Unsupported("Slice along the batch axis")
        lo, hi, step = slice(s, e, st).indices(x.shape[a])
        if step < 0:
            raise Unsupported("Slice with a negative step")
        idx[a] = slice(lo, hi, None if step == 1 else step)
    while idx and idx[-1] == slice(None):
        idx.pop()
    return idx


@handles(OnnxSlice)
def _slice(b, name, mod, x, starts, ends, ax=None, steps=None):
    if not all(isinstance(a, Const) or a is None for a in (starts, ends, ax, steps)):
        raise Unsupported("Slice with computed bounds")
    starts, ends = ints(starts.value), ints(ends.value)
    ax = list(range(len(starts))) if ax is None else ints(ax.value)
    steps = [1] * len(starts) if steps is None else ints(steps.value)
    idx = _slice_index(x, starts, ends, ax, steps)
    if not idx:
        return x
    return b.fn(operator.getitem, x, tuple(idx))


@handles(OnnxPadStatic)
def _pad(b, name, mod, x):
    if mod.mode != "constant":
        raise Unsupported(f"Pad mode {mod.mode}")
    return b.fn(F.pad, x, tuple(int(p) for p in mod.pads), value=float(mod.constant_value or 0.0))


@handles(OnnxPadDynamic)
def _pad_dynamic(b, name, mod, x, pads, value=None, ax=None):
    if not isinstance(pads, Const) or ax is not None:
        raise Unsupported("Pad with computed pads")
    if mod.mode != "constant":
        raise Unsupported(f"Pad mode {mod.mode}")
    p = _onnx_padding_to_torch(ints(pads.value))
    v = 0.0 if value is None else float(value.value)
    return b.fn(F.pad, x, tuple(int(i) for i in p), value=v)


@handles(OnnxCast)
def _cast(b, name, mod, x):
    if mod.torch_dtype == x.ex[0].dtype:
        return x
    return b.method("to", x, mod.torch_dtype)


@handles(OnnxCopyIdentity, nn.Identity, nn.Dropout, OnnxDropoutDynamic)
def _identity(b, name, mod, x, *rest):
    return x


@handles(OnnxReverseSequence, shape_args=True)
def _reverse_sequence(b, name, mod, x, lens):
    """A reversal of every sequence over its full length (Keras's backward RNNs) is a flip."""
    T = x.shape[mod.time_axis]
    if not all(ints(example(lens, i)) == [T] * x.ex[i].shape[mod.batch_axis] for i in (0, 1)):
        raise ValueError(f"ONNX node {b.onnx_name!r}: ReverseSequence over lengths other than the full "
                         f"{T} steps is not supported")
    return b.fn(torch.flip, x, (mod.time_axis,))
