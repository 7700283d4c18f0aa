"""Analysis pass: classify every fx node and decide, with the per-op rules, how it is recomputed.

States:
- ``const``: depends on no input (parameters, constants);
- ``static``: depends on model inputs other than the sequence (replayed for each batch of edits);
- ``window``: depends on the sequence and is recomputed only on a window of its length axis;
- ``flat``: a flatten of a window node whose only user is a Linear updated incrementally;
- ``full``: from a stop point on: recomputed in full for every edit.

The result is a :class:`NodeInfo` per node in ``node.meta["fastism"]``; the graph itself is never edited.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import fx, nn
import torch.nn.functional as F

from .rules import Decision, RuleContext, describe, lookup, stop
from .rules.registry import Read


class ISMUndefinedError(ValueError):
    """The model's prediction for one sequence depends on the other sequences of its batch (e.g. BatchNorm
    with batch statistics in eval mode): no ISM, fast or naive, is defined for it."""


BATCH_STATS = ("normalises with the statistics of the batch (no running statistics): each prediction depends on "
               "the other sequences of its batch, so ISM is not defined; give it running statistics "
               "(track_running_stats=True) or use it in training mode only")


class UnsupportedOpWarning(UserWarning):
    """An op without a change-range rule (or with unsupported settings) became a stop point."""


@dataclass(frozen=True)
class NodeInfo:
    state: str
    laxis: int | None = None
    length: int | None = None
    decision: Decision | None = None


def _early_stop_nodes(gm: fx.GraphModule, names) -> set:
    names = list(names or [])
    found, hits = set(), set()
    for node in gm.graph.nodes:
        for name in names:
            tgt = node.target if node.op == "call_module" else None
            if node.name == name or tgt == name or (isinstance(tgt, str) and tgt.startswith(name + ".")):
                found.add(node)
                hits.add(name)
    missing = [n for n in names if n not in hits]
    if missing:
        known = [n.target if n.op == "call_module" else n.name for n in gm.graph.nodes
                 if n.op not in ("placeholder", "output", "get_attr")]
        raise ValueError(f"early_stop_layers not found in the model: {missing}; layer names include: "
                         f"{', '.join(map(str, known[:40]))}")
    return found


def _check_batch_independent(gm: fx.GraphModule) -> None:
    """Refuse a model whose predictions depend on the other sequences of their batch, wherever the op is."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None:
                raise ISMUndefinedError(f"{node.target}: {BATCH_STATS}")
        elif node.op == "call_function" and node.target is F.batch_norm:
            mean = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
            if mean is None:
                raise ISMUndefinedError(f"{node.name} (batch_norm): {BATCH_STATS}")


def _inc_linear_user(node: fx.Node, gm: fx.GraphModule, early: set):
    """The Linear that consumes ``node`` (a flatten) as its only user, if any."""
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


def analyse(gm: fx.GraphModule, seq_node: fx.Node, seq_laxis: int, seq_len: int,
            early_stop_layers=None, strict: bool = False) -> dict:
    """Annotate ``node.meta["fastism"]`` for every node; return ``{node: NodeInfo}``."""
    _check_batch_independent(gm)
    infos: dict = {}
    early = _early_stop_nodes(gm, early_stop_layers)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            info = NodeInfo("window", seq_laxis, seq_len) if node is seq_node else NodeInfo("static")
        elif node.op == "get_attr":
            info = NodeInfo("const")
        elif node.op == "output":
            info = NodeInfo("output")
        else:
            info = _classify(node, gm, infos, early, strict)
        infos[node] = info
        node.meta["fastism"] = info
    return infos


def _classify(node, gm, infos, early, strict) -> NodeInfo:
    states = {infos[n].state for n in node.all_input_nodes}
    if states <= {"const"}:
        return NodeInfo("const")
    if states <= {"const", "static"}:
        return NodeInfo("static")
    if "flat" in states:
        flat = next(n for n in node.all_input_nodes if infos[n].state == "flat")
        x = flat.all_input_nodes[0]
        weight = (gm.get_submodule(node.target).weight if node.op == "call_module" else None)
        return NodeInfo("full", decision=Decision(
            "inc_linear", reads={x: Read(laxis=infos[x].laxis)},
            extra={"flat": flat, "weight": weight, "weight_node": None if weight is not None else node.args[1]}))
    if "full" in states:
        return NodeInfo("full", decision=stop("after a stop point", quiet=True))
    if node in early:
        return NodeInfo("full", decision=stop("early_stop_layers", quiet=True))
    rule = lookup(node, gm)
    if rule is None:
        dec = stop("no change-range rule for this op")
    else:
        try:
            dec = rule(RuleContext(node, gm, infos))
        except Exception as e:  # a rule that cannot read its op's settings must not give a wrong answer
            dec = stop(f"rule failed ({type(e).__name__}: {e})")
    if dec.kind == "stop":
        if dec.extra.get("flatten") and _inc_linear_user(node, gm, early) is not None:
            return NodeInfo("flat", decision=dec)
        if not dec.extra.get("quiet"):
            msg = (f"fastism_torch: {describe(node, gm)}: {dec.reason}; it becomes a stop point "
                   "(it and everything after it run in full)")
            if strict:
                raise ValueError(msg.replace("; it becomes a stop point", " (strict mode)"))
            warnings.warn(msg, UnsupportedOpWarning, stacklevel=4)
        return NodeInfo("full", decision=dec)
    if dec.kind == "meta":
        return NodeInfo("static", decision=dec)
    if dec.kind in ("inc_mean", "inc_linear"):
        return NodeInfo("full", decision=dec)
    return NodeInfo("window", dec.laxis, dec.length, dec)
