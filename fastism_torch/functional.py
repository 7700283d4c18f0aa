"""Making a captured graph functional: in-place ops (``ReLU(inplace=True)``, ``x += y``, ``x.relu_()``) become
their out-of-place forms and later readers of the mutated tensor read the new value (the engine caches
reference outputs and slices of them; an in-place op must never write into one); identity modules (dropout in
eval mode) are removed."""
from __future__ import annotations

import copy
import inspect
import operator

import torch
from torch import fx, nn


_INPLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                      operator.ipow: operator.pow, operator.iand: operator.and_, operator.ior: operator.or_}


def _out_of_place(node: fx.Node, gm: fx.GraphModule, made: dict) -> bool:
    """Rewrite ``node`` to its out-of-place form if it mutates its first input; True if it did.  An in-place
    module is replaced, in the graph only, by an out-of-place copy (``made``: module -> its copy's name); the
    model itself keeps its modules (its eager forward gives the reference predictions)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if getattr(mod, "inplace", False) is not True:
            return False
        if mod not in made:
            twin = copy.copy(mod)
            twin.inplace = False
            made[mod] = f"_fastism_functional_{len(made)}"
            gm.add_submodule(made[mod], twin)
        node.target = made[mod]
        return True
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            if not isinstance(node.args[0], fx.Node):
                return False
            node.target = _INPLACE_OPERATORS[node.target]
            return True
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
            return True
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            for mod in (torch, torch.nn.functional):
                if getattr(mod, name, None) is node.target and hasattr(mod, name[:-1]):
                    node.target = getattr(mod, name[:-1])
                    return True
        if getattr(node.target, "__module__", "") == "torch.nn.functional" and len(node.args) > 1 \
                and "inplace" in _params(node.target) and node.args[_params(node.target).index("inplace")] is True:
            args = list(node.args)
            args[_params(node.target).index("inplace")] = False
            node.args = tuple(args)
            return True
        return False
    if node.op == "call_method":
        t = node.target
        if t.endswith("_") and not t.startswith("_") and hasattr(torch.Tensor, t[:-1]):
            node.target = t[:-1]
            return True
    return False


def _params(fn) -> list:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


def drop_identities(gm: fx.GraphModule) -> None:
    """Remove identity modules (``nn.Identity``; dropout in eval mode): their readers read the input itself,
    so two branches that read one tensor through different identities share one gathered window."""
    identities = [n for n in gm.graph.nodes if n.op == "call_module" and len(n.args) == 1 and not n.kwargs
                  and isinstance(n.args[0], fx.Node) and isinstance(gm.get_submodule(n.target), IDENTITY_MODULES)
                  and not gm.get_submodule(n.target).training]
    for node in identities:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
    if identities:
        gm.recompile()


def functionalize(gm: fx.GraphModule) -> None:
    """In-place ops become out-of-place; later readers of the mutated tensor read the op's result."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed, made = False, {}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method") or not node.args:
            continue
        target = node.args[0]
        if not isinstance(target, fx.Node) or not _out_of_place(node, gm, made):
            continue
        changed = True
        for user in list(target.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(target, node)
    if changed:
        gm.graph.lint()
        gm.recompile()
