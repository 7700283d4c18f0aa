"""Analysis pass: classify every fx node and decide, with the per-op rules, how it is recomputed.

States (:class:`~fastism_torch.kinds.State`): ``CONST`` (depends on no input), ``STATIC`` (on model inputs
other than the sequence: replayed for each batch of edits), ``WINDOW`` (on the sequence: recomputed on a
window of its length axis), ``FLAT`` (a flatten of a window node whose only user is a Linear updated
incrementally), ``FULL`` (from a stop point on: recomputed in full for every edit), ``OUTPUT``.

The result is a dict ``{node: NodeInfo}`` (the one channel: the plan, the rewrite and the MAC counts read it);
the graph itself is never edited.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import fx, nn
import torch.nn.functional as F

from .errors import ISMUndefinedError, UnsupportedOpWarning
from .kinds import Kind, State
from .rules import Decision, RuleContext, describe, lookup, stop
from .rules.dense import inc_linear, inc_linear_user


BATCH_STATS = ("normalises with the statistics of the batch (no running statistics): each prediction depends on "
               "the other sequences of its batch, so ISM is not defined; give it running statistics "
               "(track_running_stats=True) or use it in training mode only")


def _batch_statistics(mod: nn.Module) -> bool:
    """A BatchNorm module without running statistics (it normalises with the batch's)."""
    return isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None


def refuse_batch_statistics(model: nn.Module) -> None:
    """``ISMUndefinedError`` for a BatchNorm module of ``model`` without running statistics, found from its modules
    alone (a lazy engine runs naive ISM before any capture, so the graph's own check has not run yet)."""
    for name, mod in model.named_modules():
        if _batch_statistics(mod):
            raise ISMUndefinedError(f"{name}: {BATCH_STATS}")


@dataclass(frozen=True)
class NodeInfo:
    state: State
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
            if _batch_statistics(gm.get_submodule(node.target)):
                raise ISMUndefinedError(f"{node.target}: {BATCH_STATS}")
        elif node.op == "call_function" and node.target is F.batch_norm:
            mean = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
            if mean is None:
                raise ISMUndefinedError(f"{node.name} (batch_norm): {BATCH_STATS}")


def analyse(gm: fx.GraphModule, seq_node: fx.Node, seq_laxis: int, seq_len: int,
            early_stop_layers=None, strict: bool = False) -> dict:
    """Classify every node; return ``{node: NodeInfo}``."""
    _check_batch_independent(gm)
    infos: dict = {}
    early = _early_stop_nodes(gm, early_stop_layers)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            info = NodeInfo(State.WINDOW, seq_laxis, seq_len) if node is seq_node else NodeInfo(State.STATIC)
        elif node.op == "get_attr":
            info = NodeInfo(State.CONST)
        elif node.op == "output":
            info = NodeInfo(State.OUTPUT)
        else:
            info = _classify(node, gm, infos, early, strict)
        infos[node] = info
    return infos


def _classify(node, gm, infos, early, strict) -> NodeInfo:
    states = {infos[n].state for n in node.all_input_nodes}
    if states <= {State.CONST}:
        return NodeInfo(State.CONST)
    if states <= {State.CONST, State.STATIC}:
        return NodeInfo(State.STATIC)
    if State.FLAT in states:
        return NodeInfo(State.FULL, decision=inc_linear(node, infos))
    if State.FULL in states:
        return NodeInfo(State.FULL, decision=stop("after a stop point", quiet=True))
    if node in early:
        return NodeInfo(State.FULL, decision=stop("early_stop_layers", quiet=True))
    rule = lookup(node, gm)
    if rule is None:
        dec = stop("no change-range rule for this op")
    else:
        try:
            dec = rule(RuleContext(node, gm, infos))
        except Exception as e:  # a rule that cannot read its op's settings must not give a wrong answer
            dec = stop(f"rule failed ({type(e).__name__}: {e})")
    if dec.kind == Kind.STOP:
        if dec.flatten and inc_linear_user(node, gm, early) is not None:
            return NodeInfo(State.FLAT, decision=dec)
        if not dec.quiet:
            msg = (f"fastism_torch: {describe(node, gm)}: {dec.reason}; it becomes a stop point "
                   "(it and everything after it run in full)")
            if strict:
                raise ValueError(msg.replace("; it becomes a stop point", " (strict mode)"))
            warnings.warn(UnsupportedOpWarning(msg, node.name, dec.reason), stacklevel=4)
        return NodeInfo(State.FULL, decision=dec)
    if dec.kind == Kind.META:
        return NodeInfo(State.STATIC, decision=dec)
    if dec.kind in (Kind.INC_MEAN, Kind.INC_LINEAR):
        return NodeInfo(State.FULL, decision=dec)
    return NodeInfo(State.WINDOW, dec.laxis, dec.length, dec)
