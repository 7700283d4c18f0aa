"""The vocabularies shared by analysis, plan, rewrite and execution, as enums.

They are ``str`` enums: each member equals its name in lower case (``Kind.STOP == "stop"``), so plans print
and compare readably.
"""
from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """What a rule says an op is (:class:`~fastism_torch.rules.registry.Decision`)."""
    POINTWISE = "pointwise"     # output position j depends on input position j only
    SLIDING = "sliding"         # a local op along the length axis, described by a Window
    LAYOUT = "layout"           # moves the length axis
    META = "meta"               # reads a shape; reports the full length
    INC_LINEAR = "inc_linear"   # a dense layer after a flatten, updated from the changed positions
    INC_MEAN = "inc_mean"       # a mean/sum over the length axis, updated from the changed positions
    STOP = "stop"               # from here on the model runs in full

    def __str__(self) -> str:
        return self.value


class State(str, Enum):
    """How a node is computed for a batch of edits (:class:`~fastism_torch.analysis.NodeInfo`)."""
    CONST = "const"             # depends on no input (parameters, constants)
    STATIC = "static"           # depends on model inputs other than the sequence: replayed per batch
    WINDOW = "window"           # depends on the sequence; recomputed on a window of its length axis
    FLAT = "flat"               # a flatten read only by an incrementally updated dense layer
    FULL = "full"               # at or after a stop point: recomputed in full
    OUTPUT = "output"           # the graph's output node

    def __str__(self) -> str:
        return self.value


class GatherKind(str, Enum):
    """How a consumer reads a windowed source (:class:`~fastism_torch.plan.Gather`)."""
    WINDOW = "window"           # a window of the source around the consumer's window (op input)
    FULL = "full"               # the whole source, materialised for a stop point or an output
    REF = "ref"                 # the source's reference window only (INC_LINEAR; the input of a delta op)
    DELTA = "delta"             # the consumer's own reference window plus its change, computed from its
    #                             input's change by the op's linear part (delta propagation)
    SUM = "sum"                 # running sums of the source's reference (INC_MEAN reads one window sum per edit)

    def __str__(self) -> str:
        return self.value
