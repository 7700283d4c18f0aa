"""Arithmetic: Add/Sub/Mul/Div, MatMul and Gemm (as ``nn.Linear``), Pow, Sum/Mean, Min/Max."""
from __future__ import annotations

import math
import operator

import torch
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.gemm import OnnxGemm
from onnx2torch.node_converters.matmul import OnnxMatMul
from onnx2torch.node_converters.mean import OnnxMean
from onnx2torch.node_converters.min_max import OnnxMinMax
from onnx2torch.node_converters.pow import OnnxPow
from onnx2torch.node_converters.sum import OnnxSum
from torch import nn

from ..registry import handles
from ..values import Const, Sym, Unsupported

_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
           "_onnx_div": operator.truediv}


@handles(OnnxBinaryMathOperation)
def _binary(b, name, mod, x, y):
    fname = getattr(mod.math_op_function, "__name__", "")
    op = _BINARY.get(fname)
    if op is None or getattr(mod, "broadcast", 0) == 1:
        raise Unsupported(f"binary op {fname}")
    for a in (x, y):
        if isinstance(a, Sym) and not a.ex[0].is_floating_point():
            raise Unsupported("integer arithmetic")
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


@handles(OnnxMatMul)
def _matmul(b, name, mod, x, w):
    if isinstance(w, Const) and isinstance(x, Sym) and w.value.dim() == 2:
        W = w.value.float()
        lin = nn.Linear(W.shape[0], W.shape[1], bias=False)
        lin.weight = nn.Parameter(W.t().contiguous(), requires_grad=False)
        src = b.reshaped_from(x)
        if src is not None and len(src.shape) > 2 and x.shape == (math.prod(src.shape[:-1]), src.shape[-1]):
            # Dense on (N, L, C) written as flatten -> MatMul (tf-keras's Tensordot): keep the batch axis apart
            y = b.module(name, lin, src)
            return b.method("reshape", y, (-1, W.shape[1]))
        return b.module(name, lin, x)
    x = b.tensor_arg(x.value) if isinstance(x, Const) else x
    w = b.tensor_arg(w.value) if isinstance(w, Const) else w
    return b.fn(torch.matmul, x, w)


@handles(OnnxGemm)
def _gemm(b, name, mod, a, w, c=None):
    if not (isinstance(a, Sym) and isinstance(w, Const) and (c is None or isinstance(c, Const))) or mod.trans_a:
        raise Unsupported("Gemm with a non-constant weight")
    W = w.value.float() * mod.alpha
    W = W if mod.trans_b else W.t()                      # (out, in)
    lin = nn.Linear(W.shape[1], W.shape[0], bias=c is not None)
    lin.weight = nn.Parameter(W.contiguous(), requires_grad=False)
    if c is not None:
        lin.bias = nn.Parameter((c.value.float() * mod.beta).expand(W.shape[0]).clone(), requires_grad=False)
    return b.module(name, lin, a)


@handles(OnnxPow)
def _pow(b, name, mod, x, y):
    if isinstance(y, Const) and y.value.numel() == 1:
        return b.fn(operator.pow, x, float(y.value))
    raise Unsupported("Pow with a tensor exponent")


def _fold(b, f, xs):
    xs = [b.tensor_arg(a.value, xs[0]) if isinstance(a, Const) else a for a in xs]
    out = xs[0]
    for y in xs[1:]:
        out = b.fn(f, out, y)
    return out


@handles(OnnxSum)
def _sum(b, name, mod, *xs):
    return _fold(b, operator.add, xs)


@handles(OnnxMean)
def _mean(b, name, mod, *xs):
    return b.fn(operator.truediv, _fold(b, operator.add, xs), float(len(xs)))


@handles(OnnxMinMax)
def _minmax(b, name, mod, *xs):
    return _fold(b, torch.maximum if mod._operator is torch.amax else torch.minimum, xs)
