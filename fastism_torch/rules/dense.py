"""Dense layers: position-wise over channels when the length is not their last axis; a stop across the length
axis, except the first dense layer after a flatten of a windowed tensor, which is linear in the changed
positions and is updated from them only (``INC_LINEAR``: ``y_ref + W[:, window] @ delta``).

The incremental update spans two nodes: the flatten (a quiet stop marked ``flatten``, state ``FLAT``) and its
only user, the Linear.  :func:`inc_linear_user` finds that pair (for the analysis); :func:`inc_linear` is the
Linear's decision (its reads and MACs), :func:`emit_inc_linear` its form in the edit graph.  Also here: the MAC
counts of dense layers and products, and their faster CPU form in the edit graph (:func:`linear_through_onednn`).
"""
from __future__ import annotations

import math
import operator
from functools import partial

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import kernels
from ..kernels import linear as kernel_linear
from ..kinds import InputRole, Kind, State
from ..ranges import IDENTITY
from .registry import (Decision, EditGraphBuilder, Read, RuleContext, counts_macs, functions, mark_linear, methods,
                       module_types, peephole, per_output_element, register, stop, varying_first)


@register(*module_types(nn.Linear), *functions("linear", modules=(F,)))
def linear(ctx: RuleContext) -> Decision:
    """Position-wise when the length is not the last axis; otherwise a stop (see :func:`inc_linear`)."""
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("dense layer whose weights depend on the sequence")
    nd = len(ctx.shape(x))
    if ctx.laxis(x) == nd - 1:
        return stop("dense layer across the length axis", quiet=True)
    return Decision(Kind.POINTWISE, laxis=ctx.laxis(x), length=ctx.length(x),
                    reads={x: Read(IDENTITY, ctx.laxis(x))})


@register(*functions("matmul", modules=(torch,)), ("function", operator.matmul), *methods("matmul"))
def matmul(ctx: RuleContext) -> Decision:
    x = ctx.the_window_input()
    w = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if x is None or ctx.node.args[0] is not x or ctx.infos.get(w) is None or ctx.infos[w].state != State.CONST:
        return stop("matmul with a sequence-dependent right operand")
    if len(ctx.shape(w)) != 2 or ctx.laxis(x) == len(ctx.shape(x)) - 1:
        return stop("matmul across the length axis")
    return Decision(Kind.POINTWISE, laxis=ctx.laxis(x), length=ctx.length(x), reads={x: Read(IDENTITY, ctx.laxis(x))})


mark_linear(*module_types(nn.Linear))
mark_linear(*functions("linear", modules=(F,)), *functions("matmul", modules=(torch,)),
            ("function", operator.matmul), *methods("matmul"), when=varying_first)


def inc_linear_user(node: fx.Node, gm: fx.GraphModule, early: set) -> fx.Node | None:
    """The Linear that consumes ``node`` (a flatten to ``(N, F)``) as its only user, if any."""
    users = list(node.users)
    tm = node.meta.get("tensor_meta")
    if len(users) != 1 or tm is None or len(getattr(tm, "shape", ())) != 2:    # (N, F): the update is (N, out)
        return None
    u = users[0]
    if not u.args or u.args[0] is not node or u in early:
        return None
    if u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.Linear):
        return u
    if u.op == "call_function" and u.target is F.linear and isinstance(u.args[1] if len(u.args) > 1 else None,
                                                                       fx.Node) and u.args[1].op == "get_attr":
        return u
    return None


def inc_linear(node: fx.Node, infos: dict) -> Decision:
    """The decision for the Linear user of a ``FLAT`` node: read the flatten's input's reference window (the
    plan's ``REF`` gather), emit the update (:func:`emit_inc_linear`); its multiply-adds per changed position are
    its outputs times the features of one position of that input."""
    flat = next(n for n in node.all_input_nodes if infos[n].state == State.FLAT)
    x = flat.all_input_nodes[0]
    laxis, in_shape = infos[x].laxis, RuleContext.shape(x)
    per_position = math.prod(in_shape[1:]) // in_shape[laxis]
    return Decision(Kind.INC_LINEAR, reads={x: Read(laxis=laxis)}, emit=partial(emit_inc_linear, x=x, laxis=laxis),
                    macs=math.prod(RuleContext.shape(node)[1:]) * per_position)


def emit_inc_linear(builder: EditGraphBuilder, node: fx.Node, args, kwargs, x: fx.Node, laxis: int) -> fx.Node:
    """``Linear(flatten(x))`` for a batch of edits, from the changed window of ``x`` only: the reference output
    plus ``W[:, window] @ (window - reference window)`` (:func:`fastism_torch.kernels.inc_linear`; the static
    form, :func:`~fastism_torch.kernels.inc_linear_static`, takes the span of the edits' window starts)."""
    from ..kernels import ops  # noqa: F401  (torch.ops.fastism.inc_linear: registered by the rewrite already)
    g = builder.graph
    weight = g.get_attr(node.target + ".weight") if node.op == "call_module" else builder.value(node.args[1])
    in_shape = tuple(RuleContext.shape(x))[1:]
    kw = {"new": builder.value(x), "ref_window": builder.ref_window(node, x),
          "ref_out": builder.node_input(InputRole.REF_OUTPUT, node.name), "weight": weight,
          "starts": builder.node_input(InputRole.DENSE_START, node.name, x.name), "laxis": laxis}
    if builder.static:
        span = builder.node_input(InputRole.DENSE_SPAN, node.name, x.name)
        return g.call_function(kernels.inc_linear_static, (), {**kw, "in_shape": in_shape, "span": span})
    return g.call_function(torch.ops.fastism.inc_linear, (), {**kw, "in_shape": list(in_shape)})


# ---------------------------------------------------------------- the edit graph's faster form (CPU eager)
@peephole(*module_types(nn.Linear), *functions("linear", modules=(F,)))
def linear_through_onednn(g: fx.Graph, node: fx.Node, root: nn.Module) -> None:
    """A dense layer of the edit graph -> :func:`fastism_torch.kernels.linear`, which runs float32 CPU products
    with oneDNN (about 2x PyTorch's MKL ``addmm`` on AMD CPUs) and is ``F.linear`` otherwise.  ``nn.Linear``
    modules (exactly, not subclasses; their parameters read as attributes) and ``F.linear`` calls."""
    if node.op == "call_module" and type(root.get_submodule(node.target)) is nn.Linear and len(node.args) == 1 \
            and not node.kwargs:
        mod = root.get_submodule(node.target)
        with g.inserting_before(node):
            weight = g.get_attr(node.target + ".weight")
            bias = g.get_attr(node.target + ".bias") if mod.bias is not None else None
            new = g.call_function(kernel_linear, (node.args[0], weight, bias))
        node.replace_all_uses_with(new)
        g.erase_node(node)
    elif node.op == "call_function" and node.target is F.linear and set(node.kwargs) <= {"bias"}:
        node.target = kernel_linear


# ---------------------------------------------------------------- multiply-adds (per output element)
@counts_macs(*module_types(nn.Linear))
@per_output_element
def linear_module_macs(ctx: RuleContext) -> int:
    return ctx.module().in_features


@counts_macs(*functions("linear", modules=(F,)))
@per_output_element
def linear_function_macs(ctx: RuleContext) -> int:
    return ctx.shape(ctx.arg(1, "weight"))[-1]


@counts_macs(*functions("matmul", "bmm", modules=(torch,)), ("function", operator.matmul), *methods("matmul", "bmm"))
@per_output_element
def product_macs(ctx: RuleContext) -> int:
    """A product of two tensors (attention written by hand): the contracted size per output element."""
    a = ctx.shape(ctx.node.args[0])
    return a[-1] if a else 0
