"""Pointwise ops: output position j depends on input position j only.

Covers activations, BatchNorm/Dropout in eval, channel-wise Linear/LayerNorm/softmax, scalar arithmetic and
element-wise ops of several tensors (add, sub, mul, div, max, min, where) and concatenation along channels.
The output's changed range is the hull of the inputs' (resolved by the plan).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import kernels

from ..kinds import Kind, State
from .conv import TransposedAsConv, ValidConv1d
from .reduce import max_min_along
from .registry import (Decision, Read, RuleContext, functions, mark_linear, methods, module_types, one_varying,
                       peephole, register, stop, varying_first)


def _norm_dim(d, ndim):
    return d + ndim if d < 0 else d


def elementwise(ctx: RuleContext) -> Decision:
    """Shared rule for every element-wise op, with broadcasting of the other inputs."""
    out = ctx.out_shape
    win = ctx.windowed()
    if out is None or not win:
        return stop("output is not a tensor")
    x = win[0]
    lax = ctx.laxis(x) + len(out) - len(ctx.shape(x))
    length = ctx.length(x)
    if not (0 < lax < len(out)) or out[lax] != length:
        return stop(f"broadcasting changes the length axis (output shape {out})")
    reads = {}
    for n in ctx.input_nodes():
        s = ctx.shape(n)
        if s is None:
            continue
        info = ctx.infos[n]
        d = lax - (len(out) - len(s))          # n's dim aligned with the output's length axis
        if info.state == State.WINDOW:
            if d != info.laxis or info.length != length:
                return stop(f"inputs' length axes differ ({n.name}: axis {info.laxis}, length {info.length})")
            reads[n] = Read(laxis=d)
        elif d >= 0 and s[d] != 1:
            if s[d] != length or info.state != State.STATIC or len(s) != len(out):   # needs its own batch axis
                return stop(f"input {n.name} of shape {s} has the length axis but does not depend on the batch")
            reads[n] = Read(laxis=d)
    return Decision(Kind.POINTWISE, laxis=lax, length=length, reads=reads)


def acting_along(dims_of):
    """A pointwise rule for ops that act along some dims (softmax, LayerNorm): a stop if one is the length.

    ``dims_of(ctx, ndim)`` returns the set of (non-negative) dims the op acts along, or None if unknown.
    """
    def rule(ctx: RuleContext) -> Decision:
        dec = elementwise(ctx)
        if dec.kind != Kind.POINTWISE:
            return dec
        dims = dims_of(ctx, len(ctx.out_shape))
        if dims is None or dec.laxis in dims:
            return stop(f"acts along the length axis (dims {sorted(dims) if dims else dims})")
        return dec
    return rule


def _one_dim(get):
    def dims_of(ctx, nd):
        d = get(ctx)
        return None if d is None else {_norm_dim(d, nd)}
    return dims_of


def _last_dims(get_count):
    return lambda ctx, nd: set(range(nd - get_count(ctx), nd))


ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Mish, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Threshold,
)
register(*module_types(*ACTIVATION_MODULES))(elementwise)

register(*functions(
    "relu", "relu6", "gelu", "elu", "selu", "celu", "softplus", "silu", "sigmoid", "tanh", "leaky_relu",
    "prelu", "hardtanh", "hardsigmoid", "hardswish", "mish", "softsign", "logsigmoid", "dropout", "dropout1d",
    "dropout2d", "alpha_dropout", "threshold", "exp", "log", "log1p", "expm1", "abs", "neg", "sqrt", "rsqrt",
    "square", "sin", "cos", "erf", "clamp", "clip", "pow", "add", "sub", "subtract", "mul", "multiply", "div",
    "divide", "true_divide", "maximum", "minimum", "fmax", "fmin", "where", "sign", "reciprocal", "floor",
    "ceil", "round", "relu_", "sigmoid_", "tanh_",
))(elementwise)
register(*[("function", f) for f in (operator.add, operator.sub, operator.mul, operator.truediv,
                                      operator.neg, operator.pow, operator.iadd, operator.imul,
                                      operator.isub, operator.itruediv, operator.floordiv)])(elementwise)
register(*methods(
    "relu", "relu_", "sigmoid", "tanh", "exp", "log", "log1p", "abs", "neg", "sqrt", "rsqrt", "square", "clamp",
    "clip", "pow", "add", "add_", "sub", "mul", "mul_", "div", "div_", "maximum", "minimum", "sign",
    "reciprocal", "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as", "detach",
    "sin", "cos", "erf", "masked_fill", "where",
))(elementwise)


def _max_min(ctx: RuleContext) -> Decision:
    # torch.max(a, b) is element-wise; torch.max(x, dim) reduces (position-wise unless dim is the length axis);
    # torch.max(x) reduces everything (a stop).
    other = ctx.arg(1, "other")
    if hasattr(other, "op"):
        return elementwise(ctx)
    if isinstance(ctx.arg(1, "dim"), int):
        return max_min_along(ctx)
    return stop("max/min reduction")


register(*functions("max", "min", modules=(torch,)), *methods("max", "min"))(_max_min)


@register(*module_types(nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d))
def batch_norm(ctx: RuleContext) -> Decision:
    mod = ctx.module()
    dec = elementwise(ctx)
    if dec.kind != Kind.POINTWISE:
        return dec
    if isinstance(mod, nn.InstanceNorm1d) or mod.training:
        return stop("normalisation statistics over the length axis")
    if dec.laxis == 1:
        return stop("BatchNorm's channel axis is the length axis")
    return dec


@register(*functions("batch_norm", modules=(nn.functional,)))
def batch_norm_fn(ctx: RuleContext) -> Decision:
    dec = elementwise(ctx)
    if dec.kind == Kind.POINTWISE and (dec.laxis == 1 or ctx.arg(5, "training", False)):
        return stop("batch statistics over the length axis")
    return dec


def _ln_module_ndims(ctx):
    return len(ctx.module().normalized_shape)


def _ln_fn_ndims(ctx):
    s = ctx.arg(1, "normalized_shape")
    return 1 if isinstance(s, int) else len(s)


register(*module_types(nn.LayerNorm, nn.RMSNorm) if hasattr(nn, "RMSNorm") else module_types(nn.LayerNorm))(
    acting_along(_last_dims(_ln_module_ndims)))
register(*functions("layer_norm", "rms_norm", modules=(nn.functional,)))(acting_along(_last_dims(_ln_fn_ndims)))


register(*module_types(nn.Softmax, nn.LogSoftmax))(acting_along(_one_dim(lambda c: c.module().dim)))
# GLU halves one dim (a gate over channels is pointwise along the length; its default dim=-1 usually is the length)
register(*module_types(nn.GLU))(acting_along(_one_dim(lambda c: c.module().dim)))
register(*functions("glu", modules=(nn.functional,)))(acting_along(_one_dim(lambda c: c.arg(1, "dim", -1))))
register(*functions("softmax", "log_softmax"), *methods("softmax", "log_softmax"))(
    acting_along(_one_dim(lambda c: c.arg(1, "dim"))))


@register(*functions("cat", "concat", "concatenate", modules=(torch,)))
def cat(ctx: RuleContext) -> Decision:
    dec = elementwise(ctx)
    if dec.kind != Kind.POINTWISE:
        return dec
    dim = _norm_dim(ctx.arg(1, "dim", 0), len(ctx.out_shape))
    if dim == dec.laxis:
        return stop("concatenation along the length axis")
    if dim == 0:
        return stop("concatenation along the batch axis (edits would mix sequences)")
    return dec


# ---------------------------------------------------------------- the edit graph's faster form (CPU eager)
#: ops of the edit graph that return a fresh tensor (recomputed convolutions, a reference window plus a change)
FRESH_MODULES = (ValidConv1d, TransposedAsConv, nn.Conv1d, nn.Conv2d)


def _fresh(src: fx.Node, root: nn.Module) -> bool:
    from ..kernels import ops  # noqa: F401  (the custom ops: registered by the rewrite already)
    if src.op == "call_module":
        return type(root.get_submodule(src.target)) in FRESH_MODULES
    return src.op == "call_function" and src.target in (F.conv1d, torch.ops.fastism.gather_window_delta,
                                                         kernels.gather_window_delta)


@peephole(*module_types(nn.ReLU), *functions("relu", modules=(torch, F)), *methods("relu"))
def relu_in_place_after_conv(g: fx.Graph, node: fx.Node, root: nn.Module) -> None:
    """``relu(conv(x))`` where the convolution's output has no other reader -> ``torch.relu_`` on it: a
    convolution (recomputed, or its reference window plus a propagated change) returns a fresh tensor, so the
    ReLU need not write a new one (measured 3% of BPNet's fast path at L=1000, 1 and 2 threads)."""
    if not node.args or node.kwargs or len(node.args) != 1:
        return
    if node.op == "call_module" and type(root.get_submodule(node.target)) is not nn.ReLU:
        return
    src = node.args[0]
    if not (isinstance(src, fx.Node) and len(src.users) == 1 and _fresh(src, root)):
        return
    with g.inserting_before(node):
        new = g.call_function(torch.relu_, (src,))
    node.replace_all_uses_with(new)
    g.erase_node(node)


# ---------------------------------------------------------------- which of these are affine in the sequence
mark_linear(*module_types(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
                         nn.BatchNorm1d, nn.BatchNorm2d),                  # (eval mode: identity, affine)
            *functions("dropout", "dropout1d", "dropout2d", "alpha_dropout", "neg", "add", "sub", "subtract",
                       "cat", "concat", "concatenate"),
            *[("function", f) for f in (operator.add, operator.sub, operator.neg, operator.iadd, operator.isub)],
            *methods("add", "add_", "sub", "neg", "contiguous", "clone", "float", "double", "to", "type_as",
                     "detach"))
mark_linear(*functions("mul", "multiply"), *[("function", f) for f in (operator.mul, operator.imul)],
            *methods("mul", "mul_"), when=one_varying)
mark_linear(*functions("div", "divide", "true_divide"),
            *[("function", f) for f in (operator.truediv, operator.itruediv)],
            *methods("div", "div_"), *functions("batch_norm", modules=(nn.functional,)), when=varying_first)
