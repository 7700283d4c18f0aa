"""The builder that emits the normalised graph and evaluates each new node on both example batches."""
from __future__ import annotations

import re

import torch
from torch import fx, nn

from .values import Const, Sym


class Builder:
    """Emits the normalised graph; every emitted node is evaluated on both example batches at once."""

    def __init__(self):
        self.graph = fx.Graph()
        self.root = nn.Module()
        self._names: set = set()
        self._buffers: dict = {}
        self.onnx_name: str | None = None       # ONNX node being converted (recorded in node.meta)
        self.syms: dict = {}                    # emitted node -> its Sym

    def unique(self, base: str) -> str:
        """A fresh identifier derived from ``base`` (used for node, module and buffer names)."""
        base = re.sub(r"[^0-9a-zA-Z_]", "_", base).strip("_") or "m"
        if base[0].isdigit():
            base = "m_" + base
        name, i = base, 1
        while name in self._names or hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add_module(self, base: str, mod: nn.Module) -> str:
        name = self.unique(base)
        self.root.add_module(name, mod)
        return name

    def tensor_arg(self, c: torch.Tensor, like: Sym | None = None):
        """A constant tensor as a graph argument: a Python number when that broadcasts the same, else a buffer."""
        if not isinstance(c, torch.Tensor):
            return c
        if c.numel() == 1 and (like is None or c.dim() <= len(like.shape)) and c.is_floating_point():
            return float(c.item())
        key = id(c)
        if key not in self._buffers:
            name = self.unique("const")
            self.root.register_buffer(name, c.detach().clone())
            node = self.graph.get_attr(name)
            self._buffers[key] = Sym(node, (c, c))
        return self._buffers[key]

    def _unwrap(self, a, i):
        if isinstance(a, Sym):
            return a.node if i is None else a.ex[i]
        if isinstance(a, Const):
            return a.value
        if isinstance(a, (list, tuple)):
            return type(a)(self._unwrap(x, i) for x in a)
        if isinstance(a, dict):
            return {k: self._unwrap(v, i) for k, v in a.items()}
        return a

    def _evaluate(self, op: str, target, args, kwargs, i: int):
        a, k = self._unwrap(tuple(args), i), self._unwrap(kwargs, i)
        if op == "call_function":
            return target(*a, **k)
        if op == "call_method":
            return getattr(a[0], target)(*a[1:], **k)
        if op == "call_module":
            return self.root.get_submodule(target)(*a, **k)
        raise ValueError(f"cannot emit an fx node with op={op!r}")

    def emit(self, op: str, target, args=(), kwargs=None, name: str | None = None) -> Sym:
        kwargs = kwargs or {}
        if name is None and self.onnx_name:
            name = self.onnx_name                 # readable plans and warnings: named after the ONNX node
        node = self.graph.create_node(op, target, self._unwrap(tuple(args), None), self._unwrap(kwargs, None),
                                      name=self.unique(name) if name else None)
        if self.onnx_name:
            node.meta["onnx_name"] = self.onnx_name
        ex = tuple(self._evaluate(op, target, args, kwargs, i) for i in (0, 1))
        if isinstance(ex[0], torch.Tensor):
            node.meta["ex_shape"] = tuple(ex[0].shape)
        sym = Sym(node, ex)
        self.syms[node] = sym
        return sym

    def fn(self, f, *args, **kwargs) -> Sym:
        return self.emit("call_function", f, args, kwargs)

    def method(self, name, *args, **kwargs) -> Sym:
        return self.emit("call_method", name, args, kwargs)

    def module(self, base: str, mod: nn.Module, *args) -> Sym:
        return self.emit("call_module", self.add_module(base, mod), args)

    def reshaped_from(self, x: Sym) -> Sym | None:
        """The input of ``x`` when ``x`` is a reshape used only here (reshapes of reshapes compose)."""
        n = x.node
        if n.op == "call_method" and n.target == "reshape" and n.meta.get("old_users") == 1 and not n.users:
            return self.syms.get(n.args[0])
        return None
