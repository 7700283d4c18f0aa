"""Reshapes that split the length axis into ``(n, p)``, ``p`` innermost (einops ``b d (n p) -> b d n p``), as a
pooling window: new position ``j`` along ``n`` holds old positions ``[j*p, (j+1)*p)``, so the reshape is a
sliding window of extent ``p`` and stride ``p`` whose output's length axis is ``n``.  The ``p`` axis is then an
ordinary feature axis for the ops after it: a softmax, sum, mean or max over ``p`` (Enformer's and gReLU's
attention pooling), element-wise ops and 1x1 convolutions are position-wise along ``n`` by their own rules, and
an op that mixes ``n`` positions is seen as acting along the length axis (a stop, or a window of its own).

A split the other way round (``(p n)``: old position ``i*n + j`` goes to ``j``) is not local and stays a stop.
"""
from __future__ import annotations

import math

from ..ranges import Window
from .conv import sliding
from .registry import Decision, RuleContext


def split_axes(in_shape, out_shape, lax: int) -> tuple[int, int] | None:
    """``(o, k)`` if ``out_shape`` splits input axis ``lax`` into output axes ``o .. o+k`` (``k >= 1`` axes after
    ``o`` make up ``p``), leaving the batch and every other axis as they were; None otherwise.  Of several
    readings (size-1 axes), the one with the longest ``n``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if out_shape[:1] != in_shape[:1]:
        return None
    pre, length, post = math.prod(in_shape[1:lax]), in_shape[lax], math.prod(in_shape[lax + 1:])
    best = None
    for o in range(1, len(out_shape) - 1):
        if math.prod(out_shape[1:o]) != pre:
            continue
        for k in range(1, len(out_shape) - o):
            if math.prod(out_shape[o:o + k + 1]) == length and math.prod(out_shape[o + k + 1:]) == post:
                if out_shape[o] < length and (best is None or out_shape[o] > out_shape[best[0]]):
                    best = (o, k)
    return best


def split_window(x, template, lax_in: int, lax_out: int, pool: int):
    """Reshape a window of ``x`` (its length a multiple of ``pool``) as the full tensor was split: ``template``
    is the full output shape; batch and window sizes come from ``x``."""
    shape = list(template)
    shape[0] = x.shape[0]
    shape[lax_out] = x.shape[lax_in] // pool
    return x.reshape(shape)


def split_length(ctx: RuleContext, x) -> Decision | None:
    """The decision for a reshape of the windowed ``x`` that splits its length axis ``(n p)``, or None if the
    reshape does something else."""
    lax, out = ctx.laxis(x), ctx.out_shape
    axes = split_axes(ctx.shape(x), out, lax)
    if axes is None:
        return None
    o, k = axes
    pool = math.prod(out[o + 1:o + k + 1])
    template = tuple(out)

    def emit(builder, node, args, kwargs):
        return builder.graph.call_function(split_window, (args[0], template, lax, o, pool))
    return sliding(ctx, x, Window(pool, pool, 0, 0.0), emit, out_laxis=o)
