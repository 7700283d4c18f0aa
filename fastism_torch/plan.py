"""The plan: pure data between analysis and execution.

For one set of mutation windows (``ranges``) the plan holds, for every windowed node, the changed range of
its output for each mutation (``lo``, ``hi``), and one :class:`Gather` for every place where an op needs an
input window that is not simply that input's own recomputed window: the gathered window is read from the
reference (padded as the op pads) and the recomputed positions are slice-assigned into it.  Each gather
starts a *segment*; the ops up to the next gathers recompute only their window.

Execution groups mutations; within a group every node's window has one width (the group's widest changed
range) and windows are shifted inward at the edges (:func:`~fastism_torch.ranges.window_starts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from torch import fx

from .kinds import GatherKind, Kind, State
from .ranges import IDENTITY, Window, hull, window_starts
from .rules.registry import is_linear


@dataclass(frozen=True)
class Gather:
    """How ``consumer`` reads ``source``: a window of ``source`` (or all of it) with recomputed parts."""
    consumer: str
    source: str
    kind: GatherKind
    window: Window            # sliding window of the consumer over the source (IDENTITY for full/ref)
    laxis: int                # source's length axis
    length: int               # source's full length
    pad: tuple                # (left, right) padding the reference cache needs
    source_state: State       # WINDOW (a reference cache) or STATIC (the edits' own rows of another input)
    reuse: tuple | None = None  # (k, offset, shrink): a slice of gather k's window instead of a new gather
    via: str | None = None    # DELTA: the input whose window's start places the change (consumer == source)
    feat: tuple = ()          # source's sizes on the axes other than the batch and the length (channels, ...)
    itemsize: int = 4         # bytes per element of the source

    def delta_origin(self, input_starts: np.ndarray) -> np.ndarray:
        """DELTA: the output position of the first column of the change computed from an input window starting
        at ``input_starts`` (stride 1: ``extent - 1 - pad_left`` positions before it)."""
        return input_starts + self.window.pad_left - (self.window.extent - 1)


@dataclass(frozen=True)
class NodeRanges:
    name: str
    laxis: int
    length: int
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    needed: tuple = None      # (lo, hi): the positions any output depends on (windows stay inside); None: all
    delta_from: str | None = None  # computed as reference + the change propagated from this input's change
    delta_input: str | None = None  # the input a delta form would propagate from (None: no delta form)
    macs: int = 0             # multiply-adds per output position (linear sliding ops; 0: not counted here)
    recompute_macs: float = 0.0    # per edit, averaged: recomputing the changed range from a gathered window
    delta_macs: float = 0.0        # per edit, averaged: propagating the change of the input (linear ops)
    feat: tuple = ()          # sizes on the axes other than the batch and the length (channels, ...)
    itemsize: int = 4         # bytes per element

    @property
    def bounds(self) -> tuple:
        return self.needed if self.needed is not None else (0, self.length)


@dataclass(frozen=True)
class Plan:
    ranges: tuple
    nodes: dict               # name -> NodeRanges, for every windowed node
    gathers: tuple            # Gather, in graph order
    stops: tuple              # (node name, reason) of the stop points reached from the sequence
    delta: bool | str = True  # whether linear ops may propagate changes (False: never; "always": wherever they can)
    additive_from: int | None = None  # two edits whose starts are >= this apart add exactly (None: no two do)

    def widths(self, idx: np.ndarray) -> dict:
        """Window width of every windowed node for a group of mutations ``idx``."""
        return {n: int(min(max(1, (r.hi[idx] - r.lo[idx]).max()), r.bounds[1] - r.bounds[0]))
                for n, r in self.nodes.items()}

    def starts(self, name: str, idx: np.ndarray, width: int) -> np.ndarray:
        r = self.nodes[name]
        return window_starts(r.lo[idx], r.hi[idx], width, r.length, r.bounds)

    def __str__(self) -> str:
        rows = [f"Plan for {len(self.ranges)} mutation window(s) of width {self.ranges[0][1] - self.ranges[0][0]}"]
        rows.append(f"  {'node':<28}{'axis':>5}{'length':>8}{'changed width min/mean/max':>30}")
        for r in self.nodes.values():
            w = r.hi - r.lo
            need = "" if r.needed is None else f"  needed [{r.needed[0]}, {r.needed[1]})"
            how = ""
            if r.macs:
                mode = f"delta from {r.delta_from}" if r.delta_from else "recompute"
                how = (f"  {mode} (MACs/edit: recompute {r.recompute_macs / 1e6:.3g} M, "
                       f"delta {r.delta_macs / 1e6:.3g} M)")
            rows.append(f"  {r.name:<28}{r.laxis:>5}{r.length:>8}{f'{w.min()}/{w.mean():.1f}/{w.max()}':>30}"
                        f"{need}{how}")
        rows.append(f"  segments (gathers): {len(self.gathers)}")
        for g in self.gathers:
            win = "" if g.window == IDENTITY else f" extent={g.window.extent} stride={g.window.stride} " \
                                                  f"pad_left={g.window.pad_left} pad_value={g.window.pad_value}"
            share = "" if g.reuse is None else f" (slice of gather {g.reuse[0]} at offset {g.reuse[1]})"
            via = "" if g.via is None else f" (change from {g.via})"
            rows.append(f"    {g.kind:<7} {g.source} -> {g.consumer}{win} cache_pad={g.pad}{share}{via}")
        for name, reason in self.stops:
            rows.append(f"  stop at {name}: {reason}")
        rows.append(f"  pairs >= {self.additive_from} apart add exactly (their changes never meet at a nonlinear op)"
                    if self.additive_from is not None else
                    "  no pairs add exactly (a nonlinear op after the changes meet everywhere)")
        return "\n".join(rows)


def build_plan(gm: fx.GraphModule, infos: dict, seq_node: fx.Node, ranges, delta: bool | str = True) -> Plan:
    """The plan for mutation windows ``ranges``: in graph order, each windowed node's change range (the
    hull of what its windowed inputs' changes reach, kept inside what some output reads), how it is computed
    (recomputed from gathered windows, or, for a linear op where it costs less, its reference plus the
    change propagated from its input's change: :func:`_choose`), the gathers that needs, and the gathers and
    stop points of the nodes that run in full."""
    needed = needed_ranges(gm, infos, seq_node)
    si = infos[seq_node]
    starts, ends = (np.array([r[i] for r in ranges], dtype=np.int64) for i in (0, 1))
    nodes = {seq_node.name: NodeRanges(seq_node.name, si.laxis, si.length, starts, ends,
                                       **_features(seq_node, si.laxis))}
    gathers, stops = [], []
    for node in gm.graph.nodes:
        info = infos[node]
        dec = info.decision
        if info.state == State.WINDOW and node is not seq_node:
            nodes[node.name] = r = _choose(node, infos, nodes, _changed(node, infos, nodes, needed.get(node)), delta)
            gathers += _delta_gathers(node, infos, nodes) if r.delta_from else _window_gathers(node, infos, nodes)
        elif info.state == State.FULL or node.op == "output":
            gathers += _full_gathers(node, infos, nodes)
            if (dec is not None and dec.kind == Kind.STOP
                    and all(infos[x].state != State.FULL for x in node.all_input_nodes)):
                stops.append((node.name, dec.reason))
    return Plan(tuple(ranges), nodes, tuple(_share_gathers(gathers, nodes)), tuple(stops), delta,
                additive_distance(gm, infos, nodes, starts))


def additive_distance(gm: fx.GraphModule, infos: dict, nodes: dict, starts: np.ndarray) -> int | None:
    """The distance ``D`` between the starts of two mutation windows from which on their changes add exactly:
    ``y(x + d_i + d_j) = y(i) + y(j) - y(x)`` (up to rounding).  That holds where their change ranges are
    disjoint at every op that is not affine in the sequence (:func:`~fastism_torch.rules.registry.is_linear`):
    by induction over the graph each node's change is then the sum of the two edits' changes, as an affine op
    adds them and every output position of a nonlinear op sees the change of at most one edit.  A nonlinear op
    that runs in full (after a stop) sees both everywhere: ``None``.  ``D`` bounds every pair conservatively
    (``max (start_m - start_k) + 1`` over pairs ``start_k < start_m`` whose ranges could meet: ``lo_m < hi_k``)."""
    D = 1
    for node in gm.graph.nodes:
        info = infos[node]
        if info.state not in (State.WINDOW, State.FLAT, State.FULL) or node.op == "placeholder":
            continue
        if is_linear(node, gm, infos):
            continue
        if info.state != State.WINDOW:
            return None
        r = nodes[node.name]
        D = max(D, _meeting_distance(starts, r.lo, r.hi) + 1)
    return D if D <= int(starts.max() - starts.min()) else None


def _meeting_distance(starts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """The largest ``starts[m] - starts[k]`` over windows ``k``, ``m`` with non-empty change ranges where ``m``'s
    range begins before ``k``'s ends (``lo[m] < hi[k]``: they may overlap); 0 if none."""
    live = np.flatnonzero(hi > lo)
    if len(live) == 0:
        return 0
    order = live[np.argsort(lo[live], kind="stable")]
    best = np.maximum.accumulate(starts[order])                  # latest start among ranges beginning before ...
    reach = np.searchsorted(lo[order], hi[live], side="left")    # ... each range's end
    ok = reach > 0
    if not ok.any():
        return 0
    return int(max(0, (best[reach[ok] - 1] - starts[live[ok]]).max()))


#: a linear op propagates changes when that costs at most this share of recomputing (the rest pays for reading
#: the input's and the output's reference windows and adding the change)
DELTA_GAIN = 0.85


def _choose(node: fx.Node, infos: dict, nodes: dict, r: NodeRanges, allow: bool | str) -> NodeRanges:
    """Recompute ``node``'s changed range, or add the change propagated from its one windowed input's change
    (a linear sliding op: ``y_new = y_ref + delta(x_new - x_ref)``), whichever costs fewer multiply-adds per
    edit, weighed by the delta form's measured time per multiply-add (``Decision.delta_cost``) and
    :data:`DELTA_GAIN`; both MAC counts go into the plan."""
    dec = infos[node].decision
    if not dec.macs:
        return r
    rec = dec.macs * float(np.mean(r.hi - r.lo))
    reads = [(x, read) for x, read in dec.reads.items() if infos[x].state == State.WINDOW]
    if dec.delta is None or len(reads) != 1 or reads[0][1].window.stride != 1 or reads[0][1].window.reversed:
        return replace(r, macs=dec.macs, recompute_macs=rec, delta_macs=rec)
    x = nodes[reads[0][0].name]
    dlt = dec.macs * float(np.mean(x.hi - x.lo))
    use = allow == "always" or (allow and dlt * dec.delta_cost <= DELTA_GAIN * rec)
    return replace(r, macs=dec.macs, recompute_macs=rec, delta_macs=dlt, delta_from=x.name if use else None,
                   delta_input=x.name)


def _delta_gathers(node: fx.Node, infos: dict, nodes: dict) -> list:
    """A delta op reads its input's reference window (to form the change) and its own reference window (to
    add the change to)."""
    me, x = nodes[node.name], nodes[nodes[node.name].delta_from]
    read = next(rd for n, rd in infos[node].decision.reads.items() if n.name == x.name)
    return [Gather(node.name, x.name, GatherKind.REF, IDENTITY, x.laxis, x.length, (0, 0), State.WINDOW,
                   **_sizes(x)),
            Gather(node.name, node.name, GatherKind.DELTA, read.window, me.laxis, me.length, (0, 0), State.WINDOW,
                   via=x.name, **_sizes(me))]


def _changed(node: fx.Node, infos: dict, nodes: dict, need) -> NodeRanges:
    """A windowed node's change range per mutation window: the hull of where its windowed inputs' changes
    reach, clipped to ``need`` (the positions some output reads; changes nobody reads are not recomputed)."""
    info = infos[node]
    reached = [read.window.forward(nodes[x.name].lo, nodes[x.name].hi, info.length)
               for x, read in info.decision.reads.items() if infos[x].state == State.WINDOW]
    lo, hi = hull(reached)
    if need is not None:
        lo = np.clip(lo, need[0], need[1])
        hi = np.clip(hi, lo, need[1])
    return NodeRanges(node.name, info.laxis, info.length, lo, hi, need, **_features(node, info.laxis))


def _features(node: fx.Node, laxis: int) -> dict:
    """``feat`` and ``itemsize`` of a node's value (of the first tensor of a tuple such as ``torch.max(x, dim)``'s)
    for :class:`NodeRanges` and :class:`Gather`: what execution needs of its shape, besides the length."""
    tm = node.meta.get("tensor_meta")
    if tm is not None and not hasattr(tm, "shape"):
        tm = tm[0]
    if tm is None:
        return {}
    return {"feat": tuple(int(s) for i, s in enumerate(tm.shape) if i not in (0, laxis)),
            "itemsize": tm.dtype.itemsize}


def _sizes(r: NodeRanges) -> dict:
    return {"feat": r.feat, "itemsize": r.itemsize}


def _cache_pad(src: NodeRanges, consumer: NodeRanges, window: Window) -> tuple:
    """Zero padding the reference cache of ``src`` needs on each side for ``consumer``'s reads."""
    if window.reversed:
        return (0, 0)
    last = (consumer.length - 1) * window.stride - window.pad_left + window.extent
    return (max(0, window.pad_left), max(0, last - src.length))


def _window_gathers(node: fx.Node, infos: dict, nodes: dict) -> list:
    """The gathers a windowed node's inputs need (none for an input whose own window it reads as is)."""
    me, out = nodes[node.name], []
    for x, read in infos[node].decision.reads.items():
        if infos[x].state == State.WINDOW:
            r = nodes[x.name]
            if (read.window == IDENTITY and r.length == me.length and r.bounds == me.bounds
                    and np.array_equal(r.lo, me.lo) and np.array_equal(r.hi, me.hi)):
                continue                                   # reads its input's own window
            out.append(Gather(node.name, x.name, GatherKind.WINDOW, read.window, r.laxis, r.length,
                              _cache_pad(r, me, read.window), State.WINDOW, **_sizes(r)))
        else:                                              # a static input that has the length axis
            length = tuple(x.meta["tensor_meta"].shape)[read.laxis]
            out.append(Gather(node.name, x.name, GatherKind.WINDOW, read.window, read.laxis, length, (0, 0),
                              State.STATIC, **_features(x, read.laxis)))
    return out


def _full_gathers(node: fx.Node, infos: dict, nodes: dict) -> list:
    """The gathers a node that runs in full (or the output) needs: each windowed input in full, or, for an
    incremental mean / dense layer, the reference's running sums / reference window."""
    dec = infos[node].decision if node.op != "output" else None
    kind = dec.kind if dec is not None else None
    out = []
    for x in node.all_input_nodes:
        if infos[x].state == State.WINDOW:
            r = nodes[x.name]
            gk = GatherKind.SUM if kind == Kind.INC_MEAN and x in dec.reads else GatherKind.FULL
            out.append(Gather(node.name, x.name, gk, IDENTITY, r.laxis, r.length, (0, 0), State.WINDOW, **_sizes(r)))
    if kind == Kind.INC_LINEAR:          # a dense layer reads its window through a flatten (not one of its inputs)
        r = nodes[next(iter(dec.reads)).name]
        out.append(Gather(node.name, r.name, GatherKind.REF, IDENTITY, r.laxis, r.length, (0, 0), State.WINDOW,
                          **_sizes(r)))
    return out


def needed_ranges(gm: fx.GraphModule, infos: dict, seq_node: fx.Node) -> dict:
    """For each windowed node whose outputs are not all read: the positions ``(lo, hi)`` that some model output
    depends on (e.g. bpnet-lite crops 557 bp on each side after its last convolutions, so its last dilated
    layers need only the middle of their length).  A backward pass over the graph: a node read by a stop,
    an incremental op or the output is needed in full; one read through a sliding window needs what that
    window reads of its reader's needed positions.  Recomputing changes outside these positions is skipped;
    every window then stays inside its node's needed positions, so every position it reads is right.
    """
    full = {}
    for node in reversed(gm.graph.nodes):
        info = infos[node]
        if info.state != State.WINDOW or node is seq_node:
            continue
        lo, hi = info.length, 0
        for u in node.users:
            ui = infos[u]
            read = ui.decision.reads.get(node) if ui.state == State.WINDOW and ui.decision is not None else None
            if read is None or u not in full:
                lo, hi = 0, info.length                                  # read in full
                break
            ulo, uhi = full[u]
            if uhi <= ulo:
                continue
            start, width = read.window.backward(ulo, uhi - ulo)
            lo, hi = min(lo, max(0, int(start))), max(hi, min(info.length, int(start + width)))
        if hi <= lo:
            lo, hi = 0, info.length                                      # read by nothing: keep it whole
        full[node] = (lo, hi)
    return {n: r for n, r in full.items() if r != (0, infos[n].length)}


def _same_windows(a: NodeRanges, b: NodeRanges) -> bool:
    return (a.length == b.length and a.bounds == b.bounds and np.array_equal(a.lo, b.lo)
            and np.array_equal(a.hi, b.hi))


def _share_gathers(gathers: list, nodes: dict) -> list:
    """Let a gather reuse a slice of another gather of the same source when that one covers it.

    Two consumers whose windows always coincide (e.g. a 'same' convolution and the residual add after it)
    read windows of one source at a constant offset from each other: the narrower read is a slice of the
    wider one (``offset = pad_left_A - pad_left_B``), so it needs no gather of its own.
    """
    out = list(gathers)
    for kb, b in enumerate(gathers):
        if b.kind != GatherKind.WINDOW or b.source_state != State.WINDOW or b.window.stride != 1:
            continue
        for ka, a in enumerate(gathers):
            if (ka == kb or a.reuse is not None or out[ka].reuse is not None or a.kind != GatherKind.WINDOW
                    or a.source != b.source or a.window.stride != 1 or a.source_state != State.WINDOW
                    or a.window.pad_value != b.window.pad_value          # the cache is padded with a's value
                    or not _same_windows(nodes[a.consumer], nodes[b.consumer])):
                continue
            off = a.window.pad_left - b.window.pad_left
            if off >= 0 and off + b.window.extent <= a.window.extent:
                out[kb] = replace(b, reuse=(ka, off, a.window.extent - b.window.extent))
                break
    return out

