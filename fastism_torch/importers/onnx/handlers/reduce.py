"""Reductions: ReduceMean/Sum/Max/Min/SumSquare and GlobalAveragePool."""
from __future__ import annotations

import operator

import torch
from onnx2torch.node_converters.global_average_pool import (
    OnnxGlobalAveragePool,
    OnnxGlobalAveragePoolWithKnownInputShape,
)
from onnx2torch.node_converters.reduce import (
    OnnxReduceStaticAxes,
    OnnxReduceSumDynamicAxes,
    OnnxReduceSumStaticAxes,
)

from ..registry import handles
from ..values import Unsupported, axes, ints, rank

_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}


@handles(OnnxReduceStaticAxes)
def _reduce(b, name, mod, x):
    fn = _REDUCE.get(mod.operation_type)
    if mod.operation_type == "ReduceSumSquare":
        fn, x = torch.sum, b.fn(operator.mul, x, x)
    if fn is None:
        raise Unsupported(mod.operation_type)
    ax = list(range(rank(x))) if mod.axes is None else axes(mod.axes, rank(x))
    return b.fn(fn, x, tuple(ax), keepdim=bool(mod.keepdims))


@handles(OnnxReduceSumStaticAxes, OnnxReduceSumDynamicAxes)
def _reduce_sum(b, name, mod, x, ax=None):
    ax = getattr(mod, "_axes", None) if ax is None else ints(ax.value)
    if not ax:
        if getattr(mod, "_noop_with_empty_axes", 0):
            return x
        ax = list(range(rank(x)))
    return b.fn(torch.sum, x, tuple(axes(ax, rank(x))), keepdim=bool(mod._keepdims))


@handles(OnnxGlobalAveragePool, OnnxGlobalAveragePoolWithKnownInputShape)
def _gap(b, name, mod, x):
    return b.fn(torch.mean, x, tuple(range(2, rank(x))), keepdim=True)
