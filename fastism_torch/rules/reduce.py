"""Reductions and dense layers: position-wise when they act on other axes, otherwise *stops*, except the
two that are linear in the changed positions and are updated from them only (``inc_mean``, ``inc_linear``):
mean/sum over the length axis (global average pooling) and a Linear right after a flatten."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import WholeModel
from ..ranges import IDENTITY
from .registry import Decision, Read, RuleContext, functions, methods, module_types, register, stop


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
        return Decision("pointwise", laxis=out_lax, length=length, reads={x: Read(IDENTITY, lax)})
    if dims != [lax]:
        return stop("reduction over the length axis and others", quiet=True)
    return Decision("inc_mean", reads={x: Read(IDENTITY, lax)},
                    extra={"scale": 1.0 / length if scale_by_length else 1.0})


def _mean_sum(scale):
    def rule(ctx: RuleContext) -> Decision:
        return _reduce(ctx, ctx.arg(1, "dim"), bool(ctx.arg(2, "keepdim", False)), scale)
    return rule


register(*methods("mean"), *functions("mean", modules=(torch,)))(_mean_sum(True))
register(*methods("sum"), *functions("sum", modules=(torch,)))(_mean_sum(False))


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


def linear_rule(ctx: RuleContext, weight) -> Decision:
    """Position-wise when the length is not the last axis; otherwise a stop."""
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("dense layer whose weights depend on the sequence")
    nd = len(ctx.shape(x))
    if ctx.laxis(x) == nd - 1:
        return stop("dense layer across the length axis", quiet=True)
    return Decision("pointwise", laxis=ctx.laxis(x), length=ctx.length(x),
                    reads={x: Read(IDENTITY, ctx.laxis(x))}, extra={"weight": weight})


@register(*module_types(nn.Linear))
def linear_module(ctx: RuleContext) -> Decision:
    return linear_rule(ctx, ctx.module().weight)


@register(*functions("linear", modules=(F,)))
def linear_function(ctx: RuleContext) -> Decision:
    return linear_rule(ctx, None)


@register(*functions("matmul", modules=(torch,)), ("function", __import__("operator").matmul), *methods("matmul"))
def matmul(ctx: RuleContext) -> Decision:
    x = ctx.the_window_input()
    w = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if x is None or ctx.node.args[0] is not x or ctx.infos.get(w) is None or ctx.infos[w].state != "const":
        return stop("matmul with a sequence-dependent right operand")
    if len(ctx.shape(w)) != 2 or ctx.laxis(x) == len(ctx.shape(x)) - 1:
        return stop("matmul across the length axis")
    return Decision("pointwise", laxis=ctx.laxis(x), length=ctx.length(x), reads={x: Read(IDENTITY, ctx.laxis(x))})


# Known stops, named so that they stop quietly (no "unknown op" warning).
QUIET_STOPS = (nn.MultiheadAttention, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.LSTM, nn.GRU, nn.RNN, nn.TransformerEncoderLayer, nn.TransformerEncoder)


@register(*module_types(*QUIET_STOPS), *functions("adaptive_max_pool1d", "scaled_dot_product_attention",
                                                  "logsumexp", "amax", "amin", "stack", "einsum", "bmm",
                                                  "cumsum", "roll", "sort", "topk"),
          *methods("amax", "amin", "logsumexp", "cumsum", "roll", "sort", "topk", "expand"))
def known_stop(ctx: RuleContext) -> Decision:
    return stop("global or sequence-wide op", quiet=True)


@register(("module", WholeModel))
def whole_model(ctx: RuleContext) -> Decision:
    return stop(f"the whole model, which could not be traced ({ctx.module().reason})", quiet=True)
