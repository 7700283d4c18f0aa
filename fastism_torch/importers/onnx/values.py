"""What the normaliser knows about each onnx2torch node's value: a constant, a shape-only value, or an emitted
node of the new graph (with its values on the two example batches)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx


@dataclass
class Const:
    """A value that does not depend on the model inputs (one value; identical for both examples)."""
    value: Any


@dataclass
class Sym:
    """A value computed by the new graph's ``node``; ``ex`` holds its values on the two example batches."""
    node: fx.Node
    ex: tuple

    @property
    def shape(self):
        return tuple(self.ex[0].shape)


@dataclass
class ShapeVal:
    """A value computed from input *shapes* only (``Shape`` and arithmetic on it): folded at conversion time,
    with its values on both example batches (entries that differ are the batch size)."""
    ex: tuple


class Unsupported(Exception):
    """Raised by a handler for a setting it has no canonical form for: the onnx2torch module is kept as is."""


def same(a, b) -> bool:
    """Exact equality of two example values (tensors, sequences or Python values)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all()) if a.numel() else a.shape == b.shape
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def close(a, b) -> bool:
    """Equality up to float32 rounding (relative 1e-5 of the largest magnitude)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool((a == b).all())
        scale = float(b.abs().max()) if b.numel() else 0.0
        return bool(((a - b).abs() <= 1e-5 * max(scale, 1.0)).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return same(a, b)


def ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.flatten().tolist()]
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


def rank(x: Sym) -> int:
    return len(x.shape)


def axes(v, r: int) -> list[int]:
    """ONNX axes (negative allowed) as sorted non-negative ints for rank ``r``."""
    return sorted(a + r if a < 0 else a for a in ints(v))


def example(a, i: int):
    """``a``'s value on example batch ``i`` (a Const's value, or as is for anything else)."""
    if isinstance(a, (Sym, ShapeVal)):
        return a.ex[i]
    if isinstance(a, Const):
        return a.value
    if isinstance(a, (list, tuple)):
        return type(a)(example(x, i) for x in a)
    return a
