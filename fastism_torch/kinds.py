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


class InputRole(str, Enum):
    """What one input of the edit graph holds, so the executor knows how to feed it
    (:class:`~fastism_torch.rewrite.EditInput`: the rewrite lists every input it made, with its role)."""
    VALUES = "values"           # the edits' new values, (B, width, C)
    STATIC_ROWS = "static_rows"  # the edits' rows of another model input (``node``: its placeholder)
    REF_OUTPUT = "ref_output"   # the edits' rows of an incrementally updated node's reference output (``node``)
    CACHE = "cache"             # gather ``k``'s reference cache (or running sums), every sequence: fed whole
    SEQ = "seq"                 # gather ``k``: each edit's row in the cache (its sequence)
    OWN_ROWS = "own_rows"       # gather ``k`` of a static source (the edits' own rows): 0 .. B-1, rebased per chunk
    START = "start"             # gather ``k``: each edit's first position read
    SHIFT = "shift"             # gather ``k``: where each edit's recomputed window of the source lands in it
    DELTA_ORIGIN = "delta_origin"  # DELTA gather ``k``: where each edit's propagated change lands in it
    WIDTH = "width"             # gather ``k``: the window width (an int per group of edits)
    DENSE_START = "dense_start"  # an incremental dense layer: each edit's window start of ``node`` (its input)
    DENSE_SPAN = "dense_span"   # static kernels: the span of those starts (an int per group)

    def __str__(self) -> str:
        return self.value
