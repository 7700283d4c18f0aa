"""The table of normalisers: onnx2torch (or torch) module class -> handler.

A handler is ``handler(b, name, mod, *args) -> Sym | Const``: it emits canonical torch ops for one onnx2torch
module through the :class:`~.builder.Builder` ``b``, or raises :class:`~.values.Unsupported` (the module is
then kept as a leaf, and the core engine makes it a stop point).  Handlers are keyed by the module *class*, so a
misspelt key fails at import; registering a class twice raises.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .builder import Builder
from .values import Const, Sym, Unsupported

HANDLERS: dict[type, Callable] = {}
SHAPE_ARGS: set[type] = set()        # classes whose handler takes batch-dependent shape values (ShapeVal)


def takes_shapes(mod: nn.Module) -> bool:
    """Whether ``mod``'s handler accepts :class:`~.values.ShapeVal` arguments (e.g. a Reshape target)."""
    return type(mod) in SHAPE_ARGS


def handles(*classes: type, shape_args: bool = False):
    """Register the decorated function as the normaliser for these module classes; ``shape_args``: it accepts
    :class:`~.values.ShapeVal` arguments (values computed from the input's shape, batch size included)."""
    for c in classes:
        if not (isinstance(c, type) and issubclass(c, nn.Module)):
            raise TypeError(f"handles() takes nn.Module subclasses; got {c!r}")

    def deco(fn):
        for c in classes:
            if c in HANDLERS:
                raise KeyError(f"a normaliser for {c.__module__}.{c.__qualname__} is already registered "
                               f"({HANDLERS[c].__module__}.{HANDLERS[c].__name__})")
            HANDLERS[c] = fn
            if shape_args:
                SHAPE_ARGS.add(c)
        return fn
    return deco


def convert_module(b: Builder, name: str, mod: nn.Module, args: list):
    """Emit ``mod(*args)``: through its handler when there is one, else as a leaf module."""
    handler = HANDLERS.get(type(mod))
    if handler is not None:
        try:
            return handler(b, name, mod, *args)
        except Unsupported as e:
            warnings.warn(f"ONNX node {b.onnx_name!r} ({type(mod).__name__}) kept as is: {e}", stacklevel=3)
    elif type(mod).__module__.startswith("torch.nn") and all(isinstance(a, Sym) for a in args):
        return b.module(name, mod, *args)             # ReLU, Sigmoid, Softmax, Conv1d, BatchNorm, ...
    args = [b.tensor_arg(a.value) if isinstance(a, Const) and isinstance(a.value, torch.Tensor) else a
            for a in args]
    return b.module(name, mod, *args)
