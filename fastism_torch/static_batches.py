"""Batches of the static path (GPUs, ``torch.compile``): which edits share a batch, and the window widths each
batch runs at, so that it multiplies little more than the plan (:func:`.macs.mac_summary`'s planned MACs).

The static kernels run every edit of a batch at one width per node, and an incremental dense layer multiplies
one frame spanning all of its batch's window starts (:func:`~fastism_torch.kernels.inc_linear_static`).  Three
things make a batch multiply more than its edits need, and this module keeps each small:

- **widths**: a batch runs at its windows' widest changed range.  Mutation windows are cut into at most
  :data:`WIDTH_CLASSES` runs of neighbouring windows (*width classes*), chosen by dynamic programming to
  multiply the fewest MACs; each class runs at its own widest ranges.  Interior windows share one class; the
  classes at the sequence's ends run narrower (a dilated tower's changes are cut off by the ends over hundreds
  of positions).  Few classes, so compiled graphs and CUDA graphs see few shapes.
- **the dense frame**: with an incremental dense layer, a batch never mixes windows whose dense input windows
  start at different positions (*atoms*), so its frame is the window itself (unless the dense layer is so
  small that a wider frame costs under :data:`DENSE_SPAN_GAIN` of an edit: then a few atoms, fewer batches).
- **padding**: a class's (or an atom's) edits are cut into batches of balanced sizes, none padded (compiled
  graphs: to :data:`MIN_BATCH` edits at least, as dynamo specialises a size of one and guards on sizes under 16).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: width classes per plan, at most: each is one set of window widths (under ``torch.compile``, a graph of its own
#: where the widths reach a pooling layer)
WIDTH_CLASSES = 8
MIN_BATCH = 16           # compiled: smaller batches are padded to this size (dynamo guards on sizes under 16)
CLASS_GAIN = 0.002       # a further class must save this share of the MACs that depend on widths
DENSE_SPAN_GAIN = 0.01   # a batch spans one more dense start where that column costs under this share of an edit
MIN_ROWS = 128           # atoms of fewer edits are merged with their neighbours (of one class) up to this many
MAX_UNITS = 256          # the width classes are cut between runs of windows, at most this many per plan


@dataclass(frozen=True)
class Layout:
    """Width classes of a plan's mutation windows."""
    klass: np.ndarray         # (R,) width class of each mutation window (non-decreasing)
    atom: np.ndarray | None   # (R,) atom of each window (runs of one dense window start); None: no dense layer
    widths: tuple             # class -> {node: width}

    def batches(self, windows: np.ndarray, cap: int):
        """``(lo, hi, class)`` slices of the edits sorted by mutation window (``windows``, non-decreasing):
        within one class and one atom, at most ``cap`` edits each, of balanced sizes."""
        klass = self.klass[windows]
        change = np.diff(klass) != 0
        if self.atom is not None:
            change |= np.diff(self.atom[windows]) != 0
        cuts = np.flatnonzero(change) + 1
        for lo, hi in _merge_small(np.r_[0, cuts], np.r_[cuts, len(windows)], klass, min(cap, MIN_ROWS)):
            k = -(-(hi - lo) // cap)
            bounds = lo + ((hi - lo) * np.arange(k + 1)) // k
            for a, b in zip(bounds[:-1], bounds[1:]):
                yield int(a), int(b), int(self.klass[windows[a]])


def _merge_small(los, his, klass: np.ndarray, rows: int):
    """Runs ``[lo, hi)`` of one class and one atom, neighbours of one class merged until they hold ``rows`` edits
    (few sequences and a small pooling factor give atoms of a few edits: a GPU runs a batch of that size no
    faster than one of ``rows``)."""
    start = None
    for lo, hi in zip(los, his):
        if start is not None and klass[lo] != klass[start]:
            yield int(start), int(lo)
            start = None
        if start is None:
            start = lo
        if hi - start >= rows:
            yield int(start), int(hi)
            start = None
    if start is not None:
        yield int(start), int(his[-1])


def layout(plan, costs: dict, dense: dict, n_classes: int = WIDTH_CLASSES) -> Layout:
    """The width classes of ``plan``'s windows (in the order of ``plan.ranges``).

    Parameters
    ----------
    plan : Plan
    costs : dict
        Node name -> MACs per edit that one more position of the node's window costs (linear sliding ops).
    dense : dict
        Windowed node read by an incremental dense layer -> MACs per edit of one more position of its window
        (runs of one window start of theirs make the atoms; a batch spans several only where one more
        position of the dense frame costs under :data:`DENSE_SPAN_GAIN` of an edit's MACs).
    n_classes : int
        At most this many classes.
    """
    n = len(plan.ranges)
    names = list(plan.nodes)
    wid = np.stack([np.minimum(np.maximum(1, r.hi - r.lo), r.bounds[1] - r.bounds[0]) for r in plan.nodes.values()],
                   axis=1)                                                           # (R, nodes)
    weight = np.array([float(costs.get(x, 0.0)) + float(dense.get(x, 0.0)) for x in names])
    atom = None
    if dense:
        change = np.zeros(n, dtype=bool)
        for x in dense:
            lo = plan.nodes[x].lo
            change[1:] |= lo[1:] != lo[:-1]
        spread = int(DENSE_SPAN_GAIN * float((wid @ weight).mean()) // max(1.0, sum(dense.values())))
        atom = np.cumsum(change) // (spread + 1)
    unit = np.arange(n) * min(n, MAX_UNITS) // n            # the programme's unit: runs of neighbouring windows
    n_units = int(unit[-1]) + 1
    umax = np.maximum.reduceat(wid, np.flatnonzero(np.r_[True, np.diff(unit) != 0]), axis=0).astype(np.float64)
    count = np.bincount(unit, minlength=n_units).astype(np.float64)
    first = _partition(umax, count, weight, n_classes)
    klass = (np.cumsum(np.isin(np.arange(n_units), first)) - 1)[unit]
    widths = tuple({x: int(v) for x, v in zip(names, wid[klass == c].max(0))} for c in range(int(klass[-1]) + 1))
    return Layout(klass, atom, widths)


def column_costs(plan, gm, dense: dict) -> tuple[dict, dict]:
    """``(costs, dense costs)``, node name -> MACs per edit that one more position of its window costs: a linear
    op's weight size, counted on the window it multiplies (its own, or its input's where it propagates the
    change); and, for each windowed node read by an incremental dense layer (``dense``: dense node name -> the
    windowed node it reads), the features times the outputs."""
    out: dict = {}
    cols: dict = {}
    for r in plan.nodes.values():
        if r.macs:
            key = r.delta_from or r.name
            out[key] = out.get(key, 0.0) + r.macs
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, x in dense.items():
        shape = tuple(nodes[x].meta["tensor_meta"].shape)
        feat = int(np.prod([s for i, s in enumerate(shape) if i not in (0, plan.nodes[x].laxis)]))
        cols[x] = cols.get(x, 0.0) + feat * int(np.prod(tuple(nodes[name].meta["tensor_meta"].shape)[1:]))
    return out, cols


def _partition(umax: np.ndarray, count: np.ndarray, weight: np.ndarray, k: int) -> list:
    """First units of at most ``k`` runs of units minimising ``sum over runs of count * (max widths) . weight``
    (``umax``: each unit's widest windows, ``count``: its windows): the fewest runs within :data:`CLASS_GAIN` of
    the least cost that ``k`` runs reach."""
    a = len(count)
    cost = np.full((a, a + 1), np.inf)              # cost[i, j]: units i..j-1 as one run
    csum = np.r_[0.0, np.cumsum(count)]
    for i in range(a):
        run = np.maximum.accumulate(umax[i:], axis=0) @ weight
        cost[i, i + 1:] = (csum[i + 1:] - csum[i]) * run
    best = [cost[0].copy()]                         # best[m][j]: units 0..j-1 in at most m + 1 runs
    choice = [None]                                 # choice[m][j]: the last run's first unit (-1: m runs do)
    for _ in range(1, k):
        total = best[-1][:a, None] + cost
        arg = np.argmin(total, axis=0)
        new = total[arg, np.arange(a + 1)]
        choice.append(np.where(new < best[-1], arg, -1))
        best.append(np.minimum(best[-1], new))
    m = next(m for m in range(k) if best[m][a] <= (1 + CLASS_GAIN) * best[-1][a])
    starts, j = [0], a
    for level in range(m, 0, -1):                   # walk back from the end
        i = choice[level][j]
        if i > 0:
            starts.append(int(i))
            j = i
    return sorted(starts)
