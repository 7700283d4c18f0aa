"""An fx pass: each maximal single-user chain of ``unsqueeze``/``squeeze``/``permute``/singleton-``reshape``
becomes at most one squeeze, one permute and one unsqueeze (tf2onnx's ``ExpandDims`` -> ``Transpose`` ->
``Conv`` -> ``Squeeze`` sandwiches).  Reads ``node.meta["ex_shape"]`` written by the builder."""
from __future__ import annotations

import torch
from torch import fx

_LAYOUT = {torch.unsqueeze, torch.squeeze, torch.permute}


def _dim_map(node: fx.Node, in_shape, out_shape) -> list | None:
    """For a layout node: the input dim each output dim comes from (``None`` for an inserted singleton)."""
    r = len(in_shape)
    if node.op == "call_function" and node.target is torch.unsqueeze:
        d = node.args[1]
        return list(range(d)) + [None] + list(range(d, r))
    if node.op == "call_function" and node.target is torch.squeeze:
        dims = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        return [i for i in range(r) if i not in dims]
    if node.op == "call_function" and node.target is torch.permute:
        return list(node.args[1])
    if node.op == "call_method" and node.target == "reshape":
        big_in = [i for i, s in enumerate(in_shape) if s != 1]
        big_out = [i for i, s in enumerate(out_shape) if s != 1]
        if [in_shape[i] for i in big_in] != [out_shape[i] for i in big_out] or 0 not in big_in[:1] or \
                0 not in big_out[:1]:
            return None
        m = [None] * len(out_shape)
        for i, o in zip(big_in, big_out):
            m[o] = i
        return m
    return None


def _layout_map(node: fx.Node) -> list | None:
    if "ex_shape" not in node.meta or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if not ((node.op == "call_function" and node.target in _LAYOUT) or
            (node.op == "call_method" and node.target == "reshape")):
        return None
    in_shape = node.args[0].meta.get("ex_shape")
    if in_shape is None:
        return None
    return _dim_map(node, in_shape, node.meta["ex_shape"])


def _chain_ending_at(node: fx.Node) -> list[fx.Node]:
    """``node`` and the single-user layout nodes feeding it, end first."""
    chain = [node]
    while True:
        src = chain[-1].args[0]
        if isinstance(src, fx.Node) and len(src.users) == 1 and _layout_map(src) is not None:
            chain.append(src)
        else:
            return chain


def _emit_canonical(graph: fx.Graph, src: fx.Node, total: list, removed: list) -> fx.Node:
    """squeeze(removed) -> permute -> unsqueeze, each only when needed; ``total`` maps output dims to input dims."""
    x = src
    if removed:
        x = graph.call_function(torch.squeeze, (x, tuple(removed)))
    kept = [d for d in total if d is not None]
    order = sorted(kept)
    perm = tuple(order.index(d) for d in kept)
    if perm != tuple(range(len(perm))):
        x = graph.call_function(torch.permute, (x, perm))
    for i, d in enumerate(total):
        if d is None:
            x = graph.call_function(torch.unsqueeze, (x, i))
    return x


def collapse_layout_chains(graph: fx.Graph) -> None:
    """Replace each maximal single-user chain of layout ops by at most squeeze -> permute -> unsqueeze."""
    for node in list(graph.nodes):
        if _layout_map(node) is None:
            continue
        users = list(node.users)              # only start at the end of a chain
        if len(users) == 1 and _layout_map(users[0]) is not None:
            continue
        chain = _chain_ending_at(node)
        total = None
        for n in chain:                      # chain is end -> start
            mn = _layout_map(n)
            total = mn if total is None else [None if t is None else mn[t] for t in total]
        src = chain[-1].args[0]
        in_shape = src.meta["ex_shape"]
        if len(chain) == 1 and total != list(range(len(in_shape))):
            continue                         # a lone layout op that is not an identity: already canonical
        kept = [d for d in total if d is not None]
        removed = [i for i in range(len(in_shape)) if i not in kept]
        if any(in_shape[i] != 1 for i in removed):
            continue
        with graph.inserting_before(node):
            x = _emit_canonical(graph, src, total, removed)
        if x is not src:
            x.meta["onnx_name"] = node.meta.get("onnx_name")
        node.replace_all_uses_with(x)
        for n in chain:
            if not n.users:
                graph.erase_node(n)
