"""ONNX -> torch.fx with canonical torch ops, for :class:`~fastism_torch.FastISM`.

:func:`onnx_to_torch` converts with onnx2torch, then *normalises* the result: it walks onnx2torch's
GraphModule once, evaluating every node on two example batches (of 2 and 3 sequences), and emits a new graph
in which

- everything that depends only on constants (shape arithmetic, axes and shape buffers, ``Shape`` -> ``Gather``
  -> ``Concat`` chains) is folded into Python ints or buffers; a shape entry that differs between the two
  example batches is the batch size and becomes ``-1``;
- onnx2torch's own modules become canonical torch calls (``unsqueeze``/``squeeze``/``permute``/``reshape``
  with int arguments, ``operator.add``/``mul``..., ``torch.cat``, ``getitem`` slices, ``F.pad``,
  ``torch.mean``/``amax``, ``nn.Linear``, ``F.softmax``, ``torch.clamp``);
- a ``Conv2d``/``MaxPool2d``/``AvgPool2d``/``ConvTranspose2d`` that only slides along one axis of an input whose
  other spatial axis has size 1 (how tf2onnx writes Keras's 1-D layers) becomes its 1-D form;
- chains of ``unsqueeze``/``squeeze``/``permute``/singleton-``reshape`` collapse into at most one squeeze, one
  permute and one unsqueeze (tf2onnx's ``ExpandDims`` -> ``Transpose`` -> ``Conv`` -> ``Squeeze`` sandwiches).

Every emitted node is checked against onnx2torch's value for the same node, so a normalisation bug raises
instead of silently changing the model.  onnx2torch modules without a canonical form stay as leaf modules (the
core engine makes them stop points, with a warning).  Converters that onnx2torch gets wrong or lacks are
registered in :func:`_register_converters`.
"""
from __future__ import annotations

import math
import operator
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["onnx_to_torch", "from_onnx", "input_specs"]


# --------------------------------------------------------------------------- values
@dataclass
class Const:
    """A value that does not depend on the model inputs (one value; identical for both examples)."""
    value: Any


@dataclass
class Sym:
    """A value computed by the new graph's ``node``; ``ex`` holds its values on the two example batches."""
    node: fx.Node
    ex: tuple

    @property
    def shape(self):
        return tuple(self.ex[0].shape)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all()) if a.numel() else a.shape == b.shape
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def _ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.flatten().tolist()]
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


@dataclass
class ShapeVal:
    """A value computed from input *shapes* only (``Shape`` and arithmetic on it): folded at conversion time,
    with its values on both example batches (entries that differ are the batch size)."""
    ex: tuple


class _Unsupported(Exception):
    pass


# --------------------------------------------------------------------------- builder
class Builder:
    """Emits the normalised graph and evaluates each new node on both example batches."""

    def __init__(self):
        self.graph = fx.Graph()
        self.root = nn.Module()
        self._names: set = set()
        self._buffers: dict = {}
        self.onnx_name: str | None = None       # ONNX node being converted (recorded in node.meta)
        self.syms: dict = {}                    # emitted node -> its Sym

    def _unique(self, base: str) -> str:
        base = re.sub(r"[^0-9a-zA-Z_]", "_", base).strip("_") or "m"
        if base[0].isdigit():
            base = "m_" + base
        name, i = base, 1
        while name in self._names or hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add_module(self, base: str, mod: nn.Module) -> str:
        name = self._unique(base)
        self.root.add_module(name, mod)
        return name

    def tensor_arg(self, c: torch.Tensor, like: Sym | None = None):
        """A constant tensor as a graph argument: a Python number when that broadcasts the same, else a buffer."""
        if not isinstance(c, torch.Tensor):
            return c
        if c.numel() == 1 and (like is None or c.dim() <= len(like.shape)) and c.is_floating_point():
            return float(c.item())
        key = id(c)
        if key not in self._buffers:
            name = self._unique("const")
            self.root.register_buffer(name, c.detach().clone())
            node = self.graph.get_attr(name)
            self._buffers[key] = Sym(node, (c, c))
        return self._buffers[key]

    def _unwrap(self, a, i):
        if isinstance(a, Sym):
            return a.node if i is None else a.ex[i]
        if isinstance(a, Const):
            return a.value
        if isinstance(a, (list, tuple)):
            return type(a)(self._unwrap(x, i) for x in a)
        if isinstance(a, dict):
            return {k: self._unwrap(v, i) for k, v in a.items()}
        return a

    def emit(self, op: str, target, args=(), kwargs=None, name: str | None = None) -> Sym:
        kwargs = kwargs or {}
        if name is None and self.onnx_name:
            name = self.onnx_name                 # readable plans and warnings: named after the ONNX node
        node = self.graph.create_node(op, target, self._unwrap(tuple(args), None), self._unwrap(kwargs, None),
                                      name=self._unique(name) if name else None)
        if self.onnx_name:
            node.meta["onnx_name"] = self.onnx_name
        ex = []
        for i in (0, 1):
            a, k = self._unwrap(tuple(args), i), self._unwrap(kwargs, i)
            if op == "call_function":
                ex.append(target(*a, **k))
            elif op == "call_method":
                ex.append(getattr(a[0], target)(*a[1:], **k))
            elif op == "call_module":
                ex.append(self.root.get_submodule(target)(*a, **k))
            else:
                raise ValueError(op)
        if isinstance(ex[0], torch.Tensor):
            node.meta["ex_shape"] = tuple(ex[0].shape)
        sym = Sym(node, tuple(ex))
        self.syms[node] = sym
        return sym

    def fn(self, f, *args, **kwargs) -> Sym:
        return self.emit("call_function", f, args, kwargs)

    def method(self, name, *args, **kwargs) -> Sym:
        return self.emit("call_method", name, args, kwargs)

    def module(self, base: str, mod: nn.Module, *args) -> Sym:
        return self.emit("call_module", self.add_module(base, mod), args)


# --------------------------------------------------------------------------- handlers
_HANDLERS: dict = {}


def handles(*class_names):
    """Register a normaliser for onnx2torch / torch module classes (by class name)."""
    def deco(fn):
        for c in class_names:
            if c in _HANDLERS:
                raise KeyError(f"a normaliser for {c} is already registered")
            _HANDLERS[c] = fn
        return fn
    return deco


def _rank(x: Sym) -> int:
    return len(x.shape)


def _axes(v, rank) -> list[int]:
    return sorted(a + rank if a < 0 else a for a in _ints(v))


@handles("OnnxUnsqueezeStaticAxes", "OnnxUnsqueezeDynamicAxes")
def _unsqueeze(b, name, mod, x, axes=None):
    axes = mod._axes if axes is None else _ints(axes.value)
    out_rank = _rank(x) + len(axes)
    for a in sorted(a + out_rank if a < 0 else a for a in axes):
        x = b.fn(torch.unsqueeze, x, a)
    return x


@handles("OnnxSqueezeStaticAxes", "OnnxSqueezeDynamicAxes")
def _squeeze(b, name, mod, x, axes=None):
    if axes is None:
        axes = getattr(mod, "axes", None)
    else:
        axes = axes.value
    if axes is None:
        axes = [i for i, s in enumerate(x.shape) if s == 1 and i > 0]
    axes = _axes(axes, _rank(x))
    if not axes:
        return x
    return b.fn(torch.squeeze, x, tuple(axes))


@handles("OnnxTranspose")
def _transpose(b, name, mod, x):
    perm = mod.perm if mod.perm is not None else list(range(_rank(x)))[::-1]
    return b.fn(torch.permute, x, tuple(int(p) for p in perm))


def _reshape_target(x: Sym, shape_c: Const | Sym, y: tuple) -> tuple[int, ...]:
    """ONNX Reshape's target as ints: 0 copies the input dim, a batch-dependent entry becomes -1."""
    if isinstance(shape_c, (Sym, ShapeVal)):  # shape computed from Shape(x): compare the two examples
        s0, s1 = _ints(shape_c.ex[0]), _ints(shape_c.ex[1])
    else:
        s0 = s1 = _ints(shape_c.value)
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


def _reshaped_from(b, x: Sym) -> Sym | None:
    """The input of ``x`` when ``x`` is a reshape used only here (reshapes of reshapes compose)."""
    n = x.node
    if n.op == "call_method" and n.target == "reshape" and n.meta.get("old_users") == 1 and not n.users:
        return b.syms.get(n.args[0])
    return None


@handles("OnnxReshape")
def _reshape(b, name, mod, x, shape, *rest):
    y = (mod(x.ex[0], _val(shape, 0)), mod(x.ex[1], _val(shape, 1)))
    target = _reshape_target(x, shape, y)
    src = _reshaped_from(b, x)
    if src is not None:
        x = src
    if tuple(x.shape) == tuple(y[0].shape) and tuple(x.ex[1].shape) == tuple(y[1].shape):
        return x                                      # a no-op (e.g. undoing tf-keras's Tensordot flatten)
    return b.method("reshape", x, target)


def _val(a, i):
    return a.ex[i] if isinstance(a, (Sym, ShapeVal)) else a.value


@handles("OnnxFlatten")
def _flatten(b, name, mod, x):
    axis = mod.axis + _rank(x) if mod.axis < 0 else mod.axis
    if axis == 1:
        return b.fn(torch.flatten, x, 1)
    return b.method("reshape", x, (-1, math.prod(x.shape[axis:])) if axis > 0 else (1, -1))


_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
           "_onnx_div": operator.truediv}


@handles("OnnxBinaryMathOperation")
def _binary(b, name, mod, x, y):
    fname = getattr(mod.math_op_function, "__name__", "")
    op = _BINARY.get(fname)
    if op is None or getattr(mod, "broadcast", 0) == 1:
        raise _Unsupported(f"binary op {fname}")
    for a in (x, y):
        if isinstance(a, Sym) and not a.ex[0].is_floating_point():
            raise _Unsupported("integer arithmetic")
    if isinstance(x, Const):
        x = b.tensor_arg(x.value, y)
    if isinstance(y, Const):
        # Dense bias: fold `linear(x) + b` into the Linear module.
        if op is operator.add and _fold_bias(b, x, y.value):
            return x
        y = b.tensor_arg(y.value, x)
    return b.fn(op, x, y)


def _fold_bias(b, x, bias) -> bool:
    node = x.node if isinstance(x, Sym) else None
    if node is None or node.op != "call_module" or node.meta.get("old_users") != 1 or node.meta.get("bias_folded"):
        return False
    lin = b.root.get_submodule(node.target)
    if not isinstance(lin, nn.Linear) or lin.bias is not None or not isinstance(bias, torch.Tensor):
        return False
    if bias.numel() != lin.out_features or bias.dim() > 1 and any(s != 1 for s in bias.shape[:-1]):
        return False
    lin.bias = nn.Parameter(bias.detach().reshape(-1).clone().float(), requires_grad=False)
    node.meta["bias_folded"] = True
    x.ex = tuple(e + bias for e in x.ex)
    return True


@handles("OnnxMatMul")
def _matmul(b, name, mod, x, w):
    if isinstance(w, Const) and isinstance(x, Sym) and w.value.dim() == 2:
        W = w.value.float()
        lin = nn.Linear(W.shape[0], W.shape[1], bias=False)
        lin.weight = nn.Parameter(W.t().contiguous(), requires_grad=False)
        src = _reshaped_from(b, x)
        if src is not None and len(src.shape) > 2 and x.shape == (math.prod(src.shape[:-1]), src.shape[-1]):
            # Dense on (N, L, C) written as flatten -> MatMul (tf-keras's Tensordot): keep the batch axis apart
            y = b.module(name, lin, src)
            return b.method("reshape", y, (-1, W.shape[1]))
        return b.module(name, lin, x)
    x = b.tensor_arg(x.value) if isinstance(x, Const) else x
    w = b.tensor_arg(w.value) if isinstance(w, Const) else w
    return b.fn(torch.matmul, x, w)


@handles("OnnxGemm")
def _gemm(b, name, mod, a, w, c=None):
    if not (isinstance(a, Sym) and isinstance(w, Const) and (c is None or isinstance(c, Const))) or mod.trans_a:
        raise _Unsupported("Gemm with a non-constant weight")
    W = w.value.float() * mod.alpha
    W = W if mod.trans_b else W.t()                      # (out, in)
    lin = nn.Linear(W.shape[1], W.shape[0], bias=c is not None)
    lin.weight = nn.Parameter(W.contiguous(), requires_grad=False)
    if c is not None:
        lin.bias = nn.Parameter((c.value.float() * mod.beta).expand(W.shape[0]).clone(), requires_grad=False)
    return b.module(name, lin, a)


@handles("OnnxConcat")
def _concat(b, name, mod, *xs):
    like = next(x for x in xs if isinstance(x, Sym))
    dim = mod.axis + _rank(like) if mod.axis < 0 else mod.axis
    parts = [b.tensor_arg(x.value) if isinstance(x, Const) else x for x in xs]
    parts = [p if isinstance(p, Sym) else b.tensor_arg(torch.as_tensor(p)) for p in parts]
    return b.fn(torch.cat, list(parts), dim)


@handles("OnnxSlice")
def _slice(b, name, mod, x, starts, ends, axes=None, steps=None):
    if not all(isinstance(a, Const) or a is None for a in (starts, ends, axes, steps)):
        raise _Unsupported("Slice with computed bounds")
    starts, ends = _ints(starts.value), _ints(ends.value)
    axes = list(range(len(starts))) if axes is None else _ints(axes.value)
    steps = [1] * len(starts) if steps is None else _ints(steps.value)
    idx = [slice(None)] * _rank(x)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + _rank(x) if a < 0 else a
        n = x.shape[a]
        if a == 0:
            if s == 0 and e >= 2 ** 31 - 1 and st == 1:        # the whole batch
                continue
            raise _Unsupported("Slice along the batch axis")
        lo, hi, step = slice(s, e, st).indices(n)
        if step < 0:
            raise _Unsupported("Slice with a negative step")
        idx[a] = slice(lo, hi, None if step == 1 else step)
    while idx and idx[-1] == slice(None):
        idx.pop()
    if not idx:
        return x
    return b.fn(operator.getitem, x, tuple(idx))


_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}


@handles("OnnxReduceStaticAxes")
def _reduce(b, name, mod, x):
    fn = _REDUCE.get(mod.operation_type)
    if mod.operation_type == "ReduceSumSquare":
        fn, x = torch.sum, b.fn(operator.mul, x, x)
    if fn is None:
        raise _Unsupported(mod.operation_type)
    axes = list(range(_rank(x))) if mod.axes is None else _axes(mod.axes, _rank(x))
    return b.fn(fn, x, tuple(axes), keepdim=bool(mod.keepdims))


@handles("OnnxReduceSumStaticAxes", "OnnxReduceSumDynamicAxes")
def _reduce_sum(b, name, mod, x, axes=None):
    axes = getattr(mod, "_axes", None) if axes is None else _ints(axes.value)
    if not axes:
        if getattr(mod, "_noop_with_empty_axes", 0):
            return x
        axes = list(range(_rank(x)))
    return b.fn(torch.sum, x, tuple(_axes(axes, _rank(x))), keepdim=bool(mod._keepdims))


@handles("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape")
def _gap(b, name, mod, x):
    return b.fn(torch.mean, x, tuple(range(2, _rank(x))), keepdim=True)


@handles("OnnxPadStatic")
def _pad(b, name, mod, x):
    if mod.mode != "constant":
        raise _Unsupported(f"Pad mode {mod.mode}")
    return b.fn(F.pad, x, tuple(int(p) for p in mod.pads), value=float(mod.constant_value or 0.0))


@handles("OnnxPadDynamic")
def _pad_dynamic(b, name, mod, x, pads, value=None, axes=None):
    from onnx2torch.node_converters.pad import _onnx_padding_to_torch
    if not isinstance(pads, Const) or axes is not None:
        raise _Unsupported("Pad with computed pads")
    if mod.mode != "constant":
        raise _Unsupported(f"Pad mode {mod.mode}")
    p = _onnx_padding_to_torch(_ints(pads.value))
    v = 0.0 if value is None else float(value.value)
    return b.fn(F.pad, x, tuple(int(i) for i in p), value=v)


@handles("OnnxCast")
def _cast(b, name, mod, x):
    if mod.torch_dtype == x.ex[0].dtype:
        return x
    return b.method("to", x, mod.torch_dtype)


@handles("OnnxCopyIdentity", "Identity", "Dropout", "OnnxDropoutDynamic")
def _identity(b, name, mod, x, *rest):
    return x


@handles("OnnxFunction")
def _function(b, name, mod, x):
    return b.fn(mod.function, x)


def _unary(fn):
    def handler(b, name, mod, x):
        return b.fn(fn, x)
    return handler


for _cls, _fn in (("OnnxNeg", operator.neg), ("OnnxSqrt", torch.sqrt), ("OnnxReciprocal", torch.reciprocal),
                  ("OnnxErf", torch.erf)):
    handles(_cls)(_unary(_fn))


@handles("OnnxErfc")
def _erfc(b, name, mod, x):
    return b.fn(operator.sub, 1.0, b.fn(torch.erf, x))


@handles("OnnxClip")
def _clip(b, name, mod, x, lo=None, hi=None):
    def bound(v):
        v = v.value if isinstance(v, Const) else v
        if isinstance(v, (Sym, ShapeVal)):
            raise _Unsupported("Clip with computed bounds")
        return None if v is None else float(v)
    return b.fn(torch.clamp, x, bound(mod.min_val if lo is None else lo), bound(mod.max_val if hi is None else hi))


@handles("OnnxHardSigmoid")
def _hard_sigmoid(b, name, mod, x):
    y = b.fn(operator.add, b.fn(operator.mul, x, float(mod.alpha)), float(mod.beta))
    return b.fn(torch.clamp, y, 0.0, 1.0)


@handles("OnnxSoftmaxV1V11")
def _softmax_v1(b, name, mod, x):
    axis = mod.axis + _rank(x) if mod.axis < 0 else mod.axis
    if axis != _rank(x) - 1:
        raise _Unsupported("Softmax-1/11 on a non-last axis")
    return b.fn(F.log_softmax if mod.is_log else F.softmax, x, -1)


@handles("OnnxPReLU")
def _prelu(b, name, mod, x, slope):
    s = b.tensor_arg(slope.value, x) if isinstance(slope, Const) else slope
    pos = b.fn(F.relu, x)
    neg = b.fn(F.relu, b.fn(operator.neg, x))
    return b.fn(operator.sub, pos, b.fn(operator.mul, neg, s))


@handles("OnnxMinMax")
def _minmax(b, name, mod, *xs):
    f = torch.maximum if mod._operator is torch.amax else torch.minimum
    xs = [b.tensor_arg(a.value, xs[0]) if isinstance(a, Const) else a for a in xs]
    out = xs[0]
    for y in xs[1:]:
        out = b.fn(f, out, y)
    return out


@handles("OnnxPow")
def _pow(b, name, mod, x, y):
    if isinstance(y, Const) and y.value.numel() == 1:
        return b.fn(operator.pow, x, float(y.value))
    raise _Unsupported("Pow with a tensor exponent")


@handles("OnnxSum", "OnnxMean")
def _sum(b, name, mod, *xs):
    xs = [b.tensor_arg(a.value, xs[0]) if isinstance(a, Const) else a for a in xs]
    out = xs[0]
    for y in xs[1:]:
        out = b.fn(operator.add, out, y)
    if type(mod).__name__ == "OnnxMean":
        out = b.fn(operator.truediv, out, float(len(xs)))
    return out


@handles("Sequential")
def _sequential(b, name, mod, x):
    for i, child in enumerate(mod):
        x = _convert_module(b, f"{name}_{i}", child, [x])
    return x


def _squeeze_spatial(x: Sym, mod, kernel, stride, padding, dilation=(1, 1)) -> int | None:
    """Which spatial axis (2 or 3) of a 4-D input is a trivial singleton for this 2-D op, if any."""
    if _rank(x) != 4:
        return None
    kernel, stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (v, v)
                                         for v in (kernel, stride, padding, dilation))
    for ax, other in ((2, 1), (3, 0)):
        o = 1 - other
        if x.shape[ax] == 1 and kernel[o] == 1 and stride[o] == 1 and padding[o] == 0:
            return ax
    return None


@handles("Conv2d")
def _conv2d(b, name, mod, x):
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        return b.module(name, mod, x)
    ax = _squeeze_spatial(x, mod, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if ax is None:
        return b.module(name, mod, x)
    sp = 3 - ax                                  # index into (kh, kw) of the sliding axis: ax 2 -> kw
    c = nn.Conv1d(mod.in_channels, mod.out_channels, mod.kernel_size[sp], stride=mod.stride[sp],
                  padding=mod.padding[sp], dilation=mod.dilation[sp], groups=mod.groups, bias=mod.bias is not None)
    c.weight = nn.Parameter(mod.weight.detach().squeeze(ax).clone(), requires_grad=False)
    if mod.bias is not None:
        c.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=False)
    y = b.module(name, c, b.fn(torch.squeeze, x, ax))
    return b.fn(torch.unsqueeze, y, ax)


@handles("ConvTranspose2d")
def _conv_transpose2d(b, name, mod, x):
    ax = _squeeze_spatial(x, mod, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if ax is None:
        return b.module(name, mod, x)
    sp = 3 - ax
    if mod.output_padding[1 - sp] != 0:
        return b.module(name, mod, x)
    c = nn.ConvTranspose1d(mod.in_channels, mod.out_channels, mod.kernel_size[sp], stride=mod.stride[sp],
                           padding=mod.padding[sp], output_padding=mod.output_padding[sp],
                           dilation=mod.dilation[sp], groups=mod.groups, bias=mod.bias is not None)
    c.weight = nn.Parameter(mod.weight.detach().squeeze(ax).clone(), requires_grad=False)
    if mod.bias is not None:
        c.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=False)
    y = b.module(name, c, b.fn(torch.squeeze, x, ax))
    return b.fn(torch.unsqueeze, y, ax)


@handles("OnnxConvTransposeCropped")
def _conv_transpose_cropped(b, name, mod, x):
    import copy
    crops = mod.crop(x.shape[2:])
    conv = copy.deepcopy(mod.conv)
    conv.padding = tuple(min(bg, en) for bg, en in crops)
    y = _convert_module(b, name, conv, [x])
    extra = [(bg - p, en - p) for (bg, en), p in zip(crops, conv.padding)]
    if not any(bg or en for bg, en in extra):
        return y
    idx = (slice(None), slice(None)) + tuple(slice(bg, y.shape[2 + i] - en) for i, (bg, en) in enumerate(extra))
    return b.fn(operator.getitem, y, idx)


@handles("OnnxPadded")
def _padded(b, name, mod, x):
    pads = tuple(int(p) for p in mod.torch_pads(x.shape[2:]))
    xp = b.fn(F.pad, x, pads, value=float(mod.value)) if any(pads) else x
    y = _convert_module(b, name, mod.inner, [xp])
    if not mod.divide_by_count or not any(pads):
        return y
    frac = mod.inner(F.pad(torch.ones((1, 1, *x.shape[2:])), pads))    # share of real inputs in each window
    frac = frac.reshape(frac.shape[:2] + tuple(y.shape[2:]))
    return b.fn(operator.truediv, y, b.tensor_arg(frac, y))


@handles("MaxPool2d", "AvgPool2d")
def _pool2d(b, name, mod, x):
    dil = getattr(mod, "dilation", 1)
    ax = _squeeze_spatial(x, mod, mod.kernel_size, mod.stride, mod.padding, dil)
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
    y = b.module(name, p, b.fn(torch.squeeze, x, ax))
    return b.fn(torch.unsqueeze, y, ax)


def _convert_module(b: Builder, name: str, mod: nn.Module, args: list):
    handler = _HANDLERS.get(type(mod).__name__)
    if handler is not None:
        try:
            return handler(b, name, mod, *args)
        except _Unsupported as e:
            warnings.warn(f"ONNX node {b.onnx_name!r} ({type(mod).__name__}) kept as is: {e}", stacklevel=3)
    elif type(mod).__module__.startswith("torch.nn") and all(isinstance(a, Sym) for a in args):
        return b.module(name, mod, *args)             # ReLU, Sigmoid, Softmax, Conv1d, BatchNorm, ...
    args = [b.tensor_arg(a.value) if isinstance(a, Const) and isinstance(a.value, torch.Tensor) else a
            for a in args]
    return b.module(name, mod, *args)


# --------------------------------------------------------------------------- normalisation
def _is_const(a, shapes_too: bool = False) -> bool:
    if isinstance(a, Const) or (shapes_too and isinstance(a, ShapeVal)):
        return True
    if isinstance(a, (list, tuple)):
        return all(_is_const(x, shapes_too) for x in a)
    if isinstance(a, dict):
        return all(_is_const(x, shapes_too) for x in a.values())
    return not isinstance(a, (Sym, ShapeVal))


def _has_shapeval(a) -> bool:
    if isinstance(a, ShapeVal):
        return True
    if isinstance(a, (list, tuple)):
        return any(_has_shapeval(x) for x in a)
    return False


def _ex(a, i):
    if isinstance(a, (Sym, ShapeVal)):
        return a.ex[i]
    if isinstance(a, Const):
        return a.value
    if isinstance(a, (list, tuple)):
        return type(a)(_ex(x, i) for x in a)
    return a


def normalise(gm: fx.GraphModule, examples: tuple[list, list]) -> fx.GraphModule:
    """Rewrite onnx2torch's GraphModule into canonical torch ops (see the module docstring)."""
    b = Builder()
    env: dict = {}
    outputs = None
    for node in gm.graph.nodes:
        b.onnx_name = None
        if node.op == "placeholder":
            i = len([n for n in env if n.op == "placeholder"])
            ph = b.graph.placeholder(b._unique(node.name))
            ph.meta["ex_shape"] = tuple(examples[0][i].shape)
            env[node] = Sym(ph, (examples[0][i], examples[1][i]))
            continue
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            env[node] = Const(obj)
            continue
        if node.op == "output":
            outputs = fx.node.map_arg(node.args[0], lambda n: env[n])
            continue
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            fn = mod
        elif node.op == "call_function":
            fn = node.target
        else:
            def fn(obj, *a, __m=node.target, **k):
                return getattr(obj, __m)(*a, **k)
        want = tuple(fn(*_ex(args, i), **_ex(kwargs, i)) for i in (0, 1))
        shape_only = node.op == "call_module" and type(mod).__name__ == "OnnxShape"
        if shape_only or (_is_const(args, True) and _is_const(kwargs, True)):
            env[node] = Const(want[0]) if _same(want[0], want[1]) else ShapeVal(want)
            continue
        if _has_shapeval(args) or _has_shapeval(list(kwargs.values())):
            if not (node.op == "call_module" and type(mod).__name__ == "OnnxReshape"):
                raise ValueError(f"ONNX node {node.target!r} uses a batch-size-dependent shape in a way the importer "
                                 "cannot fold; please report this model")
        b.onnx_name = str(node.target) if node.op == "call_module" else node.name
        if node.op == "call_module":
            if kwargs:
                raise _Unsupported(f"keyword arguments to {node.target}")
            res = _convert_module(b, node.name, mod, list(args))
        elif node.op == "call_function" and node.target is operator.getitem:
            res = _getitem(b, args)
        else:
            res = b.emit(node.op, node.target, args, kwargs)
        if isinstance(res, Const):
            env[node] = res
            continue
        for i in (0, 1):
            if not _close(res.ex[i] if isinstance(res, Sym) else res, want[i]):
                what = type(mod).__name__ if node.op == "call_module" else node.target
                raise RuntimeError(f"normalising ONNX node {b.onnx_name!r} ({what}) changed its value; please "
                                   "report this model")
        if isinstance(res, Sym):
            res.ex = want
            res.node.meta["old_users"] = len(node.users)
        env[node] = res
    b.onnx_name = None

    def out_arg(a):
        if isinstance(a, Sym):
            return a.node
        if isinstance(a, Const):
            raise ValueError("an ONNX model output does not depend on the inputs")
        return a
    b.graph.output(fx.node.map_aggregate(outputs, out_arg))
    out = fx.GraphModule(b.root, b.graph, class_name="ImportedOnnxModel")
    out.graph.eliminate_dead_code()
    _collapse_layout_chains(out.graph)
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.delete_all_unused_submodules()
    out.recompile()
    return out


def _getitem(b, args):
    seq, idx = args
    if isinstance(seq, (list, tuple)):
        return seq[idx]
    return b.fn(operator.getitem, seq, idx)


def _close(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool((a == b).all())
        scale = float(b.abs().max()) if b.numel() else 0.0
        return bool(((a - b).abs() <= 1e-5 * max(scale, 1.0)).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return _same(a, b)


# --------------------------------------------------------------------------- layout chains
_LAYOUT = {torch.unsqueeze, torch.squeeze, torch.permute}


def _dim_map(node: fx.Node, in_shape, out_shape) -> list | None:
    """For a layout node: the input dim each output dim comes from (``None`` for an inserted singleton)."""
    r = len(in_shape)
    if node.op == "call_function" and node.target is torch.unsqueeze:
        d = node.args[1]
        return list(range(d)) + [None] + list(range(d, r))
    if node.op == "call_function" and node.target is torch.squeeze:
        dims = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        return [i for i in range(r) if i not in dims]
    if node.op == "call_function" and node.target is torch.permute:
        return list(node.args[1])
    if node.op == "call_method" and node.target == "reshape":
        big_in = [i for i, s in enumerate(in_shape) if s != 1]
        big_out = [i for i, s in enumerate(out_shape) if s != 1]
        if [in_shape[i] for i in big_in] != [out_shape[i] for i in big_out] or 0 not in big_in[:1] or \
                0 not in big_out[:1]:
            return None
        m = [None] * len(out_shape)
        for i, o in zip(big_in, big_out):
            m[o] = i
        return m
    return None


def _collapse_layout_chains(graph: fx.Graph) -> None:
    """Replace each maximal single-user chain of layout ops by at most squeeze -> permute -> unsqueeze."""
    for node in list(graph.nodes):
        m = _layout_map(node)
        if m is None:
            continue
        # Only start at the end of a chain: skip if the single user continues the chain.
        users = list(node.users)
        if len(users) == 1 and _layout_map(users[0]) is not None:
            continue
        chain = [node]
        while True:
            src = chain[-1].args[0]
            if isinstance(src, fx.Node) and len(src.users) == 1 and _layout_map(src) is not None:
                chain.append(src)
            else:
                break
        total = None
        for n in chain:                      # chain is end -> start
            mn = _layout_map(n)
            total = mn if total is None else [None if t is None else mn[t] for t in total]
        src = chain[-1].args[0]
        in_shape = src.meta["ex_shape"]
        if len(chain) == 1 and total != list(range(len(in_shape))):
            continue                         # a lone layout op that is not an identity: already canonical
        kept = [d for d in total if d is not None]
        removed = [i for i in range(len(in_shape)) if i not in kept]
        if any(in_shape[i] != 1 for i in removed):
            continue
        with graph.inserting_before(node):
            x = src
            if removed:
                x = graph.call_function(torch.squeeze, (x, tuple(removed)))
            order = sorted(kept)
            perm = tuple(order.index(d) for d in kept)
            if perm != tuple(range(len(perm))):
                x = graph.call_function(torch.permute, (x, perm))
            for i, d in enumerate(total):
                if d is None:
                    x = graph.call_function(torch.unsqueeze, (x, i))
        for n in (x,) if x is not src else ():
            n.meta["onnx_name"] = node.meta.get("onnx_name")
        node.replace_all_uses_with(x)
        for n in chain:
            if not n.users:
                graph.erase_node(n)


def _layout_map(node):
    if "ex_shape" not in node.meta or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if not ((node.op == "call_function" and node.target in _LAYOUT) or
            (node.op == "call_method" and node.target == "reshape")):
        return None
    in_shape = node.args[0].meta.get("ex_shape")
    if in_shape is None:
        return None
    return _dim_map(node, in_shape, node.meta["ex_shape"])


# --------------------------------------------------------------------------- public API
def input_specs(model) -> list[tuple[str, list]]:
    """``(name, shape)`` of each graph input of an ONNX model (``None`` for symbolic dims)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        out.append((inp.name, dims))
    return out


def _load(path):
    import onnx
    if isinstance(path, onnx.ModelProto):
        return path
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        return onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from e


def _example_inputs(specs, seq_len, num_chars, batch, seed=0, layout="NLC"):
    g = torch.Generator().manual_seed(seed + batch)
    xs = []
    for name, dims in specs:
        dims = list(dims)
        ncl = layout == "NCL" and len(dims) == 3
        if ncl:
            dims = [dims[0], dims[2], dims[1]]
        if not dims:
            raise ValueError(f"ONNX input {name!r} is a scalar; only batched inputs are supported")
        dims[0] = batch
        for i in range(1, len(dims)):
            if dims[i] in (None, 0):
                if len(dims) == 3 and i == 1 and seq_len is not None:
                    dims[i] = seq_len
                elif len(dims) == 3 and i == 2:
                    dims[i] = num_chars
                else:
                    raise ValueError(f"ONNX input {name!r} has a symbolic dimension {i} ({dims}); pass seq_len")
        if len(dims) == 3:
            x = F.one_hot(torch.randint(0, dims[2], (batch, dims[1]), generator=g), dims[2]).float()
            x = x.transpose(1, 2).contiguous() if ncl else x
        else:
            x = torch.randn(dims, generator=g)
        xs.append(x)
    return xs


def onnx_to_torch(path, seq_len: int | None = None, num_chars: int = 4, layout: str = "NLC") -> fx.GraphModule:
    """Convert an ONNX model to a normalised ``torch.fx.GraphModule`` taking the ONNX inputs in order.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
    seq_len : int, optional
        Length of a rank-3 input whose length axis is symbolic.
    num_chars : int, default 4
        Size of a symbolic channel axis of a rank-3 input.
    layout : {"NLC", "NCL"}, default "NLC"
        Axis order of rank-3 inputs (for the example batches used to fold shapes).

    Returns
    -------
    torch.fx.GraphModule, in eval mode; node.meta["onnx_name"] names the ONNX node each op came from.
    """
    _register_converters()
    import onnx2torch
    model = _load(path)
    specs = input_specs(model)
    missing = unconvertible_nodes(model)
    if missing:
        raise UnsupportedOnnxOps(missing, _tensor_names(model, [n for _, n in missing]))
    try:
        gm = onnx2torch.convert(model)
    except NotImplementedError as e:
        raise ValueError(f"the ONNX model uses an operator onnx2torch cannot convert: {e}") from e
    gm.eval()
    examples = tuple(_example_inputs(specs, seq_len, num_chars, b, layout=layout) for b in (2, 3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"onnx2torch.*")
        warnings.filterwarnings("ignore", message=r"Using a non-tuple sequence for multidimensional indexing")
        out = normalise(gm, examples)
    return out.eval()


class UnsupportedOnnxOps(ValueError):
    """The model has ONNX operators no converter handles; ``nodes`` lists ``(op_type, node name)``."""

    def __init__(self, nodes, tensors=None):
        self.nodes = list(nodes)
        self.tensors = tensors or {}             # node name -> its input and output tensor names
        ops = sorted({op for op, _ in self.nodes})
        names = ", ".join(repr(n) for _, n in self.nodes[:8]) + (" ..." if len(self.nodes) > 8 else "")
        super().__init__(f"the ONNX model uses operator(s) {ops} that cannot be converted to PyTorch "
                         f"(onnx2torch has no converter), at node(s) {names}")


def unconvertible_nodes(model) -> list[tuple[str, str]]:
    """``(op_type, node name)`` of every node onnx2torch has no converter for (at the model's opset)."""
    from onnx2torch.node_converters.registry import get_converter
    opsets = {o.domain: o.version for o in model.opset_import}
    out = []
    for node in model.graph.node:
        try:
            get_converter(node.op_type, opsets.get(node.domain, 1), node.domain)
        except NotImplementedError:
            out.append((node.op_type, node.name or node.op_type))
    return out


def _tensor_names(model, node_names) -> dict:
    want = set(node_names)
    return {n.name: [t for t in (*n.output, *n.input) if t] for n in model.graph.node if n.name in want}


def sequence_input(specs, num_chars: int = 4) -> int:
    """Index of the sequence input: the rank-3 input, preferring last axis ``num_chars`` and the longest."""
    cands = [(i, d) for i, (_, d) in enumerate(specs) if len(d) == 3]
    if not cands:
        raise ValueError("the model has no sequence-shaped input (rank 3: batch, length, channels); inputs: "
                         + ", ".join(f"{n} {d}" for n, d in specs))
    best = sorted(cands, key=lambda c: (c[1][2] not in (num_chars, None), -(c[1][1] or 0)))
    return best[0][0]


def from_onnx(path, *, seq_len: int | None = None, num_chars: int = 4, seq_input_idx: int | None = None,
              **fastism_kwargs):
    """A :class:`~fastism_torch.FastISM` for an ONNX model taking sequences as ``(N, L, C)``.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
    seq_len : int, optional
        Sequence length; read from the model's sequence input when fixed there.
    num_chars : int, default 4
    seq_input_idx : int, optional
        Which input is the sequence; default: the rank-3 input (channel axis ``num_chars``, longest).
    layout : {"NLC", "NCL"}, optional
        Axis order of the sequence input; default ``"NCL"`` when the inputs' middle axis is ``num_chars`` (and
        the last is not), else ``"NLC"`` (Keras's ``(N, L, C)``).
    **fastism_kwargs
        Passed to :class:`~fastism_torch.FastISM` (``change_ranges``, ``early_stop_layers``, ``device``, ...).
    """
    from ..ism import FastISM
    model = _load(path)
    specs = input_specs(model)
    layout = fastism_kwargs.pop("layout", None)
    if layout is None:                              # (N, C, L) when only the middle axis is num_chars
        r3 = [d for _, d in specs if len(d) == 3]
        layout = "NCL" if r3 and all(d[1] == num_chars and d[2] != num_chars for d in r3) else "NLC"
    if layout not in ("NLC", "NCL"):
        raise ValueError(f"layout must be 'NLC' or 'NCL'; got {layout!r}")
    if layout == "NCL":       # (N, C, L) input: find it as if it were (N, L, C)
        specs_lc = [(n, [d[0], d[2], d[1]] if len(d) == 3 else d) for n, d in specs]
    else:
        specs_lc = specs
    idx = sequence_input(specs_lc, num_chars) if seq_input_idx is None else int(seq_input_idx)
    if not 0 <= idx < len(specs):
        raise ValueError(f"seq_input_idx={idx} but the model has {len(specs)} input(s)")
    dims = specs_lc[idx][1]
    if len(dims) != 3:
        raise ValueError(f"input {idx} ({specs[idx][0]}) is not sequence-shaped (batch, length, channels): {dims}")
    L = dims[1] or seq_len
    if L is None:
        raise ValueError("the sequence input's length is symbolic; pass seq_len")
    if seq_len is not None and dims[1] and seq_len != dims[1]:
        raise ValueError(f"seq_len={seq_len} but the model's sequence input has length {dims[1]}")
    C = dims[2] or num_chars
    gm = onnx_to_torch(model, seq_len=L, num_chars=C, layout=layout)
    return FastISM(gm, L, num_chars=C, layout=layout, seq_input_idx=idx, **fastism_kwargs)


# --------------------------------------------------------------------------- onnx2torch corrections
_REGISTERED = False


def _guard_triton() -> None:
    """onnx2torch imports torchvision, which imports torch._dynamo and Triton; Triton's import crashes a process
    that has already imported TensorFlow (a user passing a keras.Model).  There, torch runs without Triton."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None          # `import triton` now raises ImportError: torch treats it as absent


def _register_converters() -> None:
    """Converters onnx2torch lacks or gets wrong (registered once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _guard_triton()
    _REGISTERED = True
    from . import _onnx_converters  # noqa: F401  (registers on import)
