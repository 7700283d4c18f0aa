"""Pointwise functions: Neg/Sqrt/Reciprocal/Erf, onnx2torch's function wrappers, Clip, HardSigmoid,
Softmax-1/11, PReLU."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.activations import (
    OnnxErf,
    OnnxHardSigmoid,
    OnnxPReLU,
    OnnxSoftmaxV1V11,
)
from onnx2torch.node_converters.clip import OnnxClip
from onnx2torch.node_converters.functions import OnnxFunction
from onnx2torch.node_converters.neg import OnnxNeg
from onnx2torch.node_converters.pow import OnnxSqrt
from onnx2torch.node_converters.reciprocal import OnnxReciprocal

from ..registry import handles
from ..values import Const, ShapeVal, Sym, Unsupported, rank


@handles(OnnxFunction)
def _function(b, name, mod, x):
    return b.fn(mod.function, x)


def _unary(fn):
    def handler(b, name, mod, x):
        return b.fn(fn, x)
    handler.__name__ = f"_unary_{fn.__name__}"
    return handler


for _cls, _fn in ((OnnxNeg, operator.neg), (OnnxSqrt, torch.sqrt), (OnnxReciprocal, torch.reciprocal),
                  (OnnxErf, torch.erf)):
    handles(_cls)(_unary(_fn))


@handles(OnnxClip)
def _clip(b, name, mod, x, lo=None, hi=None):
    def bound(v):
        v = v.value if isinstance(v, Const) else v
        if isinstance(v, (Sym, ShapeVal)):
            raise Unsupported("Clip with computed bounds")
        return None if v is None else float(v)
    return b.fn(torch.clamp, x, bound(mod.min_val if lo is None else lo), bound(mod.max_val if hi is None else hi))


@handles(OnnxHardSigmoid)
def _hard_sigmoid(b, name, mod, x):
    y = b.fn(operator.add, b.fn(operator.mul, x, float(mod.alpha)), float(mod.beta))
    return b.fn(torch.clamp, y, 0.0, 1.0)


@handles(OnnxSoftmaxV1V11)
def _softmax_v1(b, name, mod, x):
    axis = mod.axis + rank(x) if mod.axis < 0 else mod.axis
    if axis != rank(x) - 1:
        raise Unsupported("Softmax-1/11 on a non-last axis")
    return b.fn(F.log_softmax if mod.is_log else F.softmax, x, -1)


@handles(OnnxPReLU)
def _prelu(b, name, mod, x, slope):
    s = b.tensor_arg(slope.value, x) if isinstance(slope, Const) else slope
    pos = b.fn(F.relu, x)
    neg = b.fn(F.relu, b.fn(operator.neg, x))
    return b.fn(operator.sub, pos, b.fn(operator.mul, neg, s))
