"""Layout ops that keep or move the length axis (permute/transpose, (un)squeeze, reshape/flatten that leave
it alone), padding and cropping along it (sliding windows of extent 1), and shape queries."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..kinds import Kind
from ..ranges import IDENTITY, Window
from .conv import sliding
from .registry import Decision, Read, RuleContext, functions, mark_linear, methods, module_types, register, stop
from .split import split_length


def _layout(ctx: RuleContext, x, out_laxis: int) -> Decision:
    out = ctx.out_shape
    if out is None or not (0 < out_laxis < len(out)) or out[out_laxis] != ctx.length(x):
        return stop("layout op that moves the batch or changes the length axis")
    return Decision(Kind.LAYOUT, laxis=out_laxis, length=out[out_laxis], reads={x: Read(IDENTITY, ctx.laxis(x))})


def _only_input(ctx: RuleContext):
    x = ctx.the_window_input()
    return x if x is not None and ctx.node.args and ctx.node.args[0] is x else None


# ---------------------------------------------------------------- permute / transpose
@register(*methods("permute"), *functions("permute", modules=(torch,)))
def permute(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("permute of several windowed tensors")
    dims = ctx.node.args[1:] if ctx.node.op == "call_method" else (ctx.arg(1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    nd = len(ctx.shape(x))
    dims = [d % nd for d in dims]
    if dims[0] != 0:
        return stop("permute moves the batch axis")
    return _layout(ctx, x, dims.index(ctx.laxis(x)))


@register(*methods("transpose", "swapaxes"), *functions("transpose", "swapaxes", modules=(torch,)))
def transpose(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("transpose of several windowed tensors")
    nd = len(ctx.shape(x))
    a, b = ctx.arg(1, "dim0") % nd, ctx.arg(2, "dim1") % nd
    if 0 in (a, b):
        return stop("transpose moves the batch axis")
    lax = ctx.laxis(x)
    return _layout(ctx, x, b if lax == a else a if lax == b else lax)


# ---------------------------------------------------------------- (un)squeeze, reshape, flatten
@register(*methods("unsqueeze"), *functions("unsqueeze", modules=(torch,)))
def unsqueeze(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("unsqueeze input")
    d = ctx.arg(1, "dim") % len(ctx.out_shape)
    lax = ctx.laxis(x)
    return _layout(ctx, x, lax + 1 if d <= lax else lax)


def _kept_axis(in_shape, out_shape, lax):
    """Where the length axis lands after a reshape, or None if the reshape touches it or the batch."""
    if out_shape[0] != in_shape[0]:
        return None
    pre = math.prod(in_shape[1:lax])
    post = math.prod(in_shape[lax + 1:])
    for o in range(1, len(out_shape)):
        if (out_shape[o] == in_shape[lax] and math.prod(out_shape[1:o]) == pre
                and math.prod(out_shape[o + 1:]) == post):
            return o
    return None


def reshape_window(x, template, lax_in: int, lax_out: int):
    """Reshape a window tensor like the full tensor was reshaped (batch and window sizes taken from ``x``)."""
    shape = list(template)
    shape[0] = x.shape[0]
    shape[lax_out] = x.shape[lax_in]
    return x.reshape(shape)


def _reshape_like(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("reshape input")
    lax = ctx.laxis(x)
    o = _kept_axis(ctx.shape(x), ctx.out_shape, lax)
    if o is None:
        split = split_length(ctx, x)            # (n p): a pooling window of width p, stride p
        if split is not None:
            return split
        return Decision(Kind.STOP, reason=f"reshape {ctx.shape(x)} -> {ctx.out_shape} merges the length axis",
                        flatten=True, quiet=True)
    dec = _layout(ctx, x, o)
    template = tuple(ctx.out_shape)

    def emit(builder, node, args, kwargs):
        return builder.graph.call_function(reshape_window, (args[0], template, lax, o))
    return Decision(dec.kind, dec.laxis, dec.length, dec.reads, emit) if dec.kind == Kind.LAYOUT else dec


register(*methods("view", "reshape", "squeeze", "flatten", "unflatten"),
         *functions("reshape", "squeeze", "flatten", "unflatten", modules=(torch,)),
         *module_types(nn.Flatten, nn.Unflatten))(_reshape_like)


# ---------------------------------------------------------------- padding and cropping
def _pad_rule(ctx: RuleContext, pads, value, mode="constant") -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("pad input")
    if mode != "constant":
        return stop(f"padding mode {mode!r}")
    nd = len(ctx.shape(x))
    lax = ctx.laxis(x)
    pair = nd - 1 - lax
    pads = list(pads)
    if 2 * pair + 1 >= len(pads):
        return _layout(ctx, x, lax)
    left = pads[2 * pair]
    rest = pads.copy()
    rest[2 * pair] = rest[2 * pair + 1] = 0

    def emit(builder, node, args, kwargs):
        if not any(rest):
            return args[0]
        return builder.graph.call_function(F.pad, (args[0], tuple(rest)), {"value": value})
    return sliding(ctx, x, Window(1, 1, left, float(value or 0.0)), emit)


@register(*functions("pad", modules=(F,)))
def pad_function(ctx: RuleContext) -> Decision:
    return _pad_rule(ctx, ctx.arg(1, "pad"), ctx.arg(3, "value", 0.0) or 0.0, ctx.arg(2, "mode", "constant"))


@register(*module_types(nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ZeroPad2d))
def pad_module(ctx: RuleContext) -> Decision:
    mod = ctx.module()
    return _pad_rule(ctx, mod.padding, getattr(mod, "value", 0.0))


@register(("function", operator.getitem))
def getitem(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    idx = ctx.node.args[1]
    if x is None:
        return stop("indexing with a windowed index")
    if ctx.shape(x) is None and isinstance(idx, int) and ctx.out_shape is not None:
        return _element(ctx, x)                  # (values, indices)[0] of a reduction over another axis
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(not isinstance(i, (slice, type(Ellipsis))) for i in idx) or sum(i is Ellipsis for i in idx) > 1:
        return stop(f"indexing {idx!r} (only slices are analysed)")
    nd = len(ctx.shape(x))
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (nd - len(idx) + 1) + idx[e + 1:]
    idx = idx + (slice(None),) * (nd - len(idx))
    if idx[0] != slice(None):
        return stop("indexing along the batch axis")
    lax = ctx.laxis(x)
    start, _, step = idx[lax].indices(ctx.length(x))
    new_idx = idx[:lax] + (slice(None),) + idx[lax + 1:]

    def emit(builder, node, args, kwargs):
        return builder.graph.call_function(operator.getitem, (args[0], new_idx))
    return sliding(ctx, x, Window(1, step, -start), emit)


def _element(ctx: RuleContext, x) -> Decision:
    """An element of a windowed tuple (``torch.max(x, dim)``'s values or indices): the tuple's windows."""
    lax = ctx.laxis(x)
    if ctx.out_shape[lax] != ctx.length(x):
        return stop(f"element of shape {ctx.out_shape} of a windowed tuple")
    return Decision(Kind.LAYOUT, laxis=lax, length=ctx.length(x), reads={x: Read(IDENTITY, lax)})


@register(*methods("narrow"), *functions("narrow", modules=(torch,)))
def narrow(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("narrow input")
    dim = ctx.arg(1, "dim") % len(ctx.shape(x))
    if dim != ctx.laxis(x):
        return _layout(ctx, x, ctx.laxis(x))
    start = ctx.arg(2, "start")

    def emit(builder, node, args, kwargs):
        return args[0]
    return sliding(ctx, x, Window(1, 1, -start), emit)


@register(*methods("flip"), *functions("flip", modules=(torch,)))
def flip(ctx: RuleContext) -> Decision:
    """Reverse(-complement): a flip of the length axis reverses windows; other flipped axes are pointwise."""
    x = _only_input(ctx)
    if x is None:
        return stop("flip input")
    nd = len(ctx.shape(x))
    dims = ctx.node.args[1:] if ctx.node.op == "call_method" else (ctx.arg(1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    dims = {d % nd for d in dims}
    if 0 in dims:
        return stop("flip of the batch axis")
    if ctx.laxis(x) not in dims:
        return _layout(ctx, x, ctx.laxis(x))
    return sliding(ctx, x, Window.reversal(ctx.length(x)), None)


# ---------------------------------------------------------------- shape queries
def full_size(x, laxis: int, length: int, dim=None):
    """``x.size(dim)`` of the full tensor that the window ``x`` stands for."""
    s = list(x.shape)
    s[laxis] = length
    return torch.Size(s) if dim is None else s[dim]


@register(*methods("size"), ("function", getattr))
def shape_query(ctx: RuleContext) -> Decision:
    x = _only_input(ctx)
    if x is None:
        return stop("shape query")
    if ctx.node.op == "call_function" and ctx.node.args[1] in ("dtype", "device", "ndim", "is_cuda"):
        return Decision(Kind.META)                         # the same for a window as for the full tensor
    if ctx.node.op == "call_function" and ctx.node.args[1] in ("values", "indices") and ctx.shape(x) is None:
        return _element(ctx, x)                            # torch.max(x, dim).values
    if ctx.node.op == "call_function" and ctx.node.args[1] != "shape":
        return stop(f"attribute {ctx.node.args[1]!r} of a windowed tensor")
    dim = ctx.arg(1, "dim") if ctx.node.op == "call_method" else None
    lax, length = ctx.laxis(x), ctx.length(x)

    def emit(builder, node, args, kwargs):
        return builder.graph.call_function(full_size, (args[0], lax, length, dim))
    return Decision(Kind.META, emit=emit)


@register(*methods("dim"))
def ndim_query(ctx: RuleContext) -> Decision:
    return Decision(Kind.META)


# every op above moves, copies or pads values (or reads only shapes): affine in the sequence
mark_linear(*methods("size", "dim"), ("function", getattr),
            *methods("permute", "transpose", "swapaxes", "unsqueeze", "view", "reshape", "squeeze", "flatten",
                     "unflatten", "narrow", "flip"),
            *functions("permute", "transpose", "swapaxes", "unsqueeze", "reshape", "squeeze", "flatten", "unflatten",
                       "narrow", "flip", modules=(torch,)),
            *functions("pad", modules=(F,)), ("function", operator.getitem),
            *module_types(nn.Flatten, nn.Unflatten, nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ZeroPad2d))
