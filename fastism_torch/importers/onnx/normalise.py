"""The normalisation driver: walk onnx2torch's GraphModule once, evaluating every node on two example batches,
and emit a new graph of canonical torch ops (see the package docstring).  Each emitted value is checked against
onnx2torch's own value for the same node, so a normalisation bug raises instead of changing the model."""
from __future__ import annotations

import operator

import torch
from onnx2torch.node_converters.shape import OnnxShape
from torch import fx

from . import handlers  # noqa: F401  (registers the normalisers)
from .builder import Builder
from .layout_chains import collapse_layout_chains
from .registry import convert_module, takes_shapes
from .values import Const, ShapeVal, Sym, Unsupported, close, example, same


def _is_const(a, shapes_too: bool = False) -> bool:
    if isinstance(a, Const) or (shapes_too and isinstance(a, ShapeVal)):
        return True
    if isinstance(a, (list, tuple)):
        return all(_is_const(x, shapes_too) for x in a)
    if isinstance(a, dict):
        return all(_is_const(x, shapes_too) for x in a.values())
    return not isinstance(a, (Sym, ShapeVal))


def _has_shapeval(a) -> bool:
    if isinstance(a, ShapeVal):
        return True
    if isinstance(a, (list, tuple)):
        return any(_has_shapeval(x) for x in a)
    return False


def _as_rows(a):
    """A batch-dependent float constant whose rows are all equal (Keras's zero initial RNN states, built from
    ``Shape``): its first row, which broadcasts the same against the batch.  Anything else is returned as is."""
    if isinstance(a, (list, tuple)):
        return type(a)(_as_rows(x) for x in a)
    if not isinstance(a, ShapeVal) or not all(isinstance(e, torch.Tensor) for e in a.ex):
        return a
    e0, e1 = a.ex
    if not (e0.is_floating_point() and e0.dim() >= 2 and e0.shape[1:] == e1.shape[1:] and len(e0) and len(e1)):
        return a
    row = e0[:1]
    if not (bool((e0 == row).all()) and bool((e1 == row).all())):
        return a
    return Const(row.clone())


def _getitem(b: Builder, args):
    seq, idx = args
    if isinstance(seq, (list, tuple)):
        return seq[idx]
    return b.fn(operator.getitem, seq, idx)


def _old_values(gm: fx.GraphModule, node: fx.Node, args, kwargs) -> tuple:
    """onnx2torch's value of ``node`` on both example batches."""
    if node.op == "call_module":
        fn = gm.get_submodule(node.target)
    elif node.op == "call_function":
        fn = node.target
    else:
        def fn(obj, *a, **k):
            return getattr(obj, node.target)(*a, **k)
    return tuple(fn(*example(args, i), **example(kwargs, i)) for i in (0, 1))


def _emit(b: Builder, gm: fx.GraphModule, node: fx.Node, args, kwargs):
    """The new graph's value for a node that depends on the inputs."""
    if node.op == "call_module":
        if kwargs:
            raise Unsupported(f"keyword arguments to {node.target}")
        return convert_module(b, node.name, gm.get_submodule(node.target), list(args))
    if node.op == "call_function" and node.target is operator.getitem:
        return _getitem(b, args)
    return b.emit(node.op, node.target, args, kwargs)


def _check(b: Builder, node: fx.Node, res, want: tuple, what) -> None:
    for i in (0, 1):
        if not close(res.ex[i] if isinstance(res, Sym) else res, want[i]):
            raise RuntimeError(f"normalising ONNX node {b.onnx_name!r} ({what}) changed its value; please "
                               "report this model")


class _Walk:
    """State of one walk over onnx2torch's graph: the builder, the old node -> value map, the example batches."""

    def __init__(self, gm: fx.GraphModule, examples: tuple[list, list]):
        self.gm, self.examples, self.b, self.env = gm, examples, Builder(), {}
        self.n_placeholders = 0
        self.outputs = None

    def placeholder(self, node: fx.Node) -> None:
        i, b = self.n_placeholders, self.b
        ph = b.graph.placeholder(b.unique(node.name))
        ph.meta["ex_shape"] = tuple(self.examples[0][i].shape)
        self.env[node] = Sym(ph, (self.examples[0][i], self.examples[1][i]))
        self.n_placeholders += 1

    def get_attr(self, node: fx.Node) -> None:
        obj = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        self.env[node] = Const(obj)

    def output(self, node: fx.Node) -> None:
        self.outputs = fx.node.map_arg(node.args[0], lambda n: self.env[n])

    def call(self, node: fx.Node) -> None:
        b, gm = self.b, self.gm
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        want = _old_values(gm, node, args, kwargs)
        if isinstance(mod, OnnxShape) or (_is_const(args, True) and _is_const(kwargs, True)):
            self.env[node] = Const(want[0]) if same(want[0], want[1]) else ShapeVal(want)
            return
        if not (mod is not None and takes_shapes(mod)):
            args = _as_rows(args)
            if _has_shapeval(args) or _has_shapeval(list(kwargs.values())):
                raise ValueError(f"ONNX node {node.target!r} uses a batch-size-dependent shape in a way the "
                                 "importer cannot fold; please report this model")
        b.onnx_name = str(node.target) if mod is not None else node.name
        res = _emit(b, gm, node, args, kwargs)
        if not isinstance(res, Const):
            _check(b, node, res, want, type(mod).__name__ if mod is not None else node.target)
            if isinstance(res, Sym):
                res.ex = want
                res.node.meta["old_users"] = len(node.users)
        self.env[node] = res
        b.onnx_name = None


def _finish(b: Builder, outputs) -> fx.GraphModule:
    def out_arg(a):
        if isinstance(a, Sym):
            return a.node
        if isinstance(a, Const):
            raise ValueError("an ONNX model output does not depend on the inputs")
        return a
    b.graph.output(fx.node.map_aggregate(outputs, out_arg))
    out = fx.GraphModule(b.root, b.graph, class_name="ImportedOnnxModel")
    out.graph.eliminate_dead_code()
    collapse_layout_chains(out.graph)
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.delete_all_unused_submodules()
    out.recompile()
    return out


def normalise(gm: fx.GraphModule, examples: tuple[list, list]) -> fx.GraphModule:
    """Rewrite onnx2torch's GraphModule into canonical torch ops, evaluated on ``examples`` (two input lists)."""
    walk = _Walk(gm, examples)
    for node in gm.graph.nodes:
        walk.b.onnx_name = None
        if node.op in ("placeholder", "get_attr", "output"):
            getattr(walk, node.op)(node)
        else:
            walk.call(node)
    return _finish(walk.b, walk.outputs)
