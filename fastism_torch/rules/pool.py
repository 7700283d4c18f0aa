"""Pooling along the length axis (stride = kernel or not), max and average; global pooling lives in
reduce.py.  Max pooling pads with -inf; average pooling only where its divisor stays the kernel size."""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch.nn.functional as F
from torch import nn

from ..ranges import Window
from .conv import emit_module, sliding
from .registry import (Decision, RuleContext, counts_macs, functions, kernel_elements, mark_linear, module_types,
                       per_output_element, register, stop)

NEG_INF = float("-inf")


def _first(v):
    return v[0] if isinstance(v, (tuple, list)) else v


class Pool(NamedTuple):
    """One pooling op along the length axis (``ceil_mode`` needs nothing: a partial last window is caught by
    the average's divisor check, and max pooling pads with -inf)."""
    kind: str                    # "max" or "avg"
    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    count_include_pad: bool = True


def _pool(ctx: RuleContext, pool: Pool, emit) -> Decision:
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("pooling input is not the windowed tensor")
    k, s, p = pool.kernel, pool.stride, pool.padding
    in_len, out_len = ctx.length(x), ctx.out_shape[ctx.laxis(x)]
    if pool.kind == "avg":
        partial = (out_len - 1) * s + k > in_len + 2 * p
        if (p and not pool.count_include_pad) or partial:
            return stop("average pooling with a divisor that varies at the edges")
    window = Window(pool.dilation * (k - 1) + 1, s, p, NEG_INF if pool.kind == "max" else 0.0)
    return sliding(ctx, x, window, emit)


@register(*module_types(nn.MaxPool1d, nn.AvgPool1d))
def pool1d_module(ctx: RuleContext) -> Decision:
    mod = ctx.module()
    x = ctx.the_window_input()
    if x is None or ctx.laxis(x) != len(ctx.shape(x)) - 1:
        return stop("pooling input's length axis is not the last")
    if getattr(mod, "return_indices", False):
        return stop("max pooling with return_indices")
    kind = "max" if isinstance(mod, nn.MaxPool1d) else "avg"
    new = copy.copy(mod)
    new.padding = 0
    pool = Pool(kind, _first(mod.kernel_size), _first(mod.stride or mod.kernel_size), _first(mod.padding),
                _first(getattr(mod, "dilation", 1)), getattr(mod, "count_include_pad", True))
    return _pool(ctx, pool, emit_module(new))


@register(*module_types(nn.MaxPool2d, nn.AvgPool2d))
def pool2d_module(ctx: RuleContext) -> Decision:
    mod = ctx.module()
    x = ctx.the_window_input()
    if x is None or ctx.laxis(x) not in (2, 3):
        return stop("2-d pooling whose length axis is not spatial")
    sp = ctx.laxis(x) - 2
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k, s, p = pair(mod.kernel_size), pair(mod.stride or mod.kernel_size), pair(mod.padding)
    d = pair(getattr(mod, "dilation", 1))
    o = 1 - sp
    if (k[o], s[o], p[o]) != (1, 1, 0) or getattr(mod, "return_indices", False):
        return stop(f"pooling kernel {k} also slides along a non-length axis")
    new = copy.copy(mod)
    new.padding = 0
    pool = Pool("max" if isinstance(mod, nn.MaxPool2d) else "avg", k[sp], s[sp], p[sp], d[sp],
                getattr(mod, "count_include_pad", True))
    return _pool(ctx, pool, emit_module(new))


def _pool_function(kind):
    def rule(ctx: RuleContext) -> Decision:
        x = ctx.the_window_input()
        if x is None or ctx.laxis(x) != len(ctx.shape(x)) - 1:
            return stop("pooling input's length axis is not the last")
        k = _first(ctx.arg(1, "kernel_size"))
        s = _first(ctx.arg(2, "stride", None) or k)
        p = _first(ctx.arg(3, "padding", 0))
        if kind == "max":
            pool = Pool(kind, k, s, p, dilation=_first(ctx.arg(4, "dilation", 1)))
            if ctx.arg(6, "return_indices", False):
                return stop("max pooling with return_indices")
        else:
            pool = Pool(kind, k, s, p, count_include_pad=ctx.arg(5, "count_include_pad", True))

        def emit(builder, node, args, kwargs):
            args = list(args)
            if len(args) > 3:
                args[3] = 0
            return builder.graph.call_function(node.target, tuple(args), {**kwargs, "padding": 0}
                                               if len(args) <= 3 else kwargs)
        return _pool(ctx, pool, emit)
    return rule


register(*functions("max_pool1d", modules=(F,)))(_pool_function("max"))
register(*functions("avg_pool1d", modules=(F,)))(_pool_function("avg"))


@counts_macs(*module_types(nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool2d, nn.AvgPool2d))
@per_output_element
def pool_module_macs(ctx: RuleContext) -> int:
    """One op per output element and kernel element."""
    return kernel_elements(ctx.module().kernel_size)


@counts_macs(*functions("max_pool1d", "avg_pool1d", modules=(F,)))
@per_output_element
def pool_function_macs(ctx: RuleContext) -> int:
    return kernel_elements(ctx.arg(1, "kernel_size", 1))


mark_linear(*module_types(nn.AvgPool1d, nn.AvgPool2d), *functions("avg_pool1d", modules=(F,)))     # (max: not affine)
