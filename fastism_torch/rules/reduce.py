"""Reductions: position-wise when they act on other axes, otherwise *stops*, except a mean/sum over the
length axis (global average pooling), which is linear in the changed positions and is updated from them only
(``INC_MEAN``).  Also the named, quiet stops (attention, recurrent layers, ...)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import WholeModel
from ..kinds import Kind
from ..ranges import IDENTITY
from .registry import (Decision, Read, RuleContext, counts_macs, functions, mark_linear, methods, module_types,
                       register, stop)


def _reduce(ctx: RuleContext, dims, keepdim: bool, scale_by_length: bool) -> Decision:
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("reduction of several windowed tensors")
    nd = len(ctx.shape(x))
    lax, length = ctx.laxis(x), ctx.length(x)
    if dims is None:
        return stop("reduction over every axis", quiet=True)
    dims = sorted({d % nd for d in ((dims,) if isinstance(dims, int) else dims)})
    if 0 in dims:
        return stop("reduction over the batch axis")
    if lax not in dims:                           # e.g. sum over channels: still position-wise
        out_lax = lax if keepdim else lax - sum(d < lax for d in dims)
        return Decision(Kind.POINTWISE, laxis=out_lax, length=length, reads={x: Read(IDENTITY, lax)})
    if dims != [lax]:
        return stop("reduction over the length axis and others", quiet=True)
    return Decision(Kind.INC_MEAN, reads={x: Read(IDENTITY, lax)},
                    scale=1.0 / length if scale_by_length else 1.0)


def _mean_sum(scale):
    def rule(ctx: RuleContext) -> Decision:
        return _reduce(ctx, ctx.arg(1, "dim"), bool(ctx.arg(2, "keepdim", False)), scale)
    return rule


register(*methods("mean"), *functions("mean", modules=(torch,)))(_mean_sum(True))
register(*methods("sum"), *functions("sum", modules=(torch,)))(_mean_sum(False))


def _along_other_axes(ctx: RuleContext, dims, keepdim: bool) -> Decision:
    """A max, min or log-sum-exp: position-wise when it reduces other axes (e.g. the ``p`` of a split length,
    :mod:`.split`); a stop over the length axis (not linear in the changed positions)."""
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("reduction of several windowed tensors")
    nd = len(ctx.shape(x))
    lax = ctx.laxis(x)
    if dims is None or dims == ():
        return stop("reduction over every axis", quiet=True)
    dims = {d % nd for d in ((dims,) if isinstance(dims, int) else dims)}
    if 0 in dims or lax in dims:
        return stop("max/min/logsumexp over the batch or the length axis", quiet=True)
    out_lax = lax if keepdim else lax - sum(d < lax for d in dims)
    return Decision(Kind.POINTWISE, laxis=out_lax, length=ctx.length(x), reads={x: Read(IDENTITY, lax)})


def max_min_along(ctx: RuleContext) -> Decision:
    """``torch.max(x, dim)`` / ``x.min(dim=...)``: (values, indices) of a reduction over ``dim``."""
    return _along_other_axes(ctx, ctx.arg(1, "dim"), bool(ctx.arg(2, "keepdim", False)))


@register(*methods("amax", "amin", "logsumexp"), *functions("amax", "amin", "logsumexp", modules=(torch,)))
def amax_like(ctx: RuleContext) -> Decision:
    return _along_other_axes(ctx, ctx.arg(1, "dim", None), bool(ctx.arg(2, "keepdim", False)))


@register(*module_types(nn.AdaptiveAvgPool1d))
def adaptive_avg(ctx: RuleContext) -> Decision:
    x = ctx.the_window_input()
    size = ctx.module().output_size
    if x is None or (size if isinstance(size, int) else size[0]) != 1:
        return stop("adaptive pooling to more than one position", quiet=True)
    return _reduce(ctx, ctx.laxis(x), True, True)


@register(*functions("adaptive_avg_pool1d", modules=(F,)))
def adaptive_avg_fn(ctx: RuleContext) -> Decision:
    x = ctx.the_window_input()
    size = ctx.arg(1, "output_size")
    if x is None or (size if isinstance(size, int) else size[0]) != 1:
        return stop("adaptive pooling to more than one position", quiet=True)
    return _reduce(ctx, ctx.laxis(x), True, True)


# Known stops, named so that they stop quietly (no "unknown op" warning).
QUIET_STOPS = (nn.MultiheadAttention, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.LSTM, nn.GRU, nn.RNN, nn.TransformerEncoderLayer, nn.TransformerEncoder)


@register(*module_types(*QUIET_STOPS), *functions("adaptive_max_pool1d", "scaled_dot_product_attention",
                                                  "stack", "einsum", "bmm", "cumsum", "roll", "sort", "topk"),
          *methods("cumsum", "roll", "sort", "topk", "expand"))
def known_stop(ctx: RuleContext) -> Decision:
    return stop("global or sequence-wide op", quiet=True)


@register(("module", WholeModel))
def whole_model(ctx: RuleContext) -> Decision:
    return stop(f"the whole model, which could not be traced ({ctx.module().reason})", quiet=True)


# ---------------------------------------------------------------- multiply-adds of the costly stops
@counts_macs(*module_types(nn.LSTM, nn.GRU, nn.RNN))
def recurrent_macs(ctx: RuleContext) -> float:
    m = ctx.module()
    gates = 4 if isinstance(m, nn.LSTM) else 3 if isinstance(m, nn.GRU) else 1
    x = ctx.shape(ctx.node.args[0])
    steps = x[0] if not m.batch_first else x[1]
    dirs = 2 if m.bidirectional else 1
    macs, inp = 0, m.input_size
    for _ in range(m.num_layers):
        macs += dirs * gates * (inp + m.hidden_size) * m.hidden_size
        inp = m.hidden_size * dirs
    return float(steps * macs)


@counts_macs(*module_types(nn.MultiheadAttention))
def attention_macs(ctx: RuleContext) -> float:
    m, args = ctx.module(), ctx.node.args
    q = ctx.shape(args[0])
    k = ctx.shape(args[1]) if len(args) > 1 else q
    lq, lk = (q[1], k[1]) if m.batch_first else (q[0], k[0])
    e = m.embed_dim
    return float(2 * lq * e * e + 2 * lk * e * e + 2 * lq * lk * e)


@counts_macs(*functions("einsum", modules=(torch,)))
def einsum_macs(ctx: RuleContext) -> float:
    sizes = {}
    eq = ctx.node.args[0].replace(" ", "").split("->")[0].split(",")
    for spec, op in zip(eq, ctx.node.args[1:]):
        for letter, n in zip(spec, ctx.shape(op) or ()):
            sizes[letter] = n
    batch = ctx.out_shape[0] if ctx.out_shape else 1
    return math.prod(sizes.values()) / max(1, batch)


mark_linear(*methods("mean", "sum"), *functions("mean", "sum", modules=(torch,)),
            *module_types(nn.AdaptiveAvgPool1d), *functions("adaptive_avg_pool1d", modules=(F,)))
