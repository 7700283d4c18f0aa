"""Execution of a plan: the reference pass (caches), then batches of edits through the edit graph.

Edits are sorted by mutation window and cut into groups of neighbouring windows; within a group every node
has one window width (:meth:`Plan.widths`), so each batch has static shapes.  Index tensors for every gather
are built here, with numpy, from the plan, once per group, and moved to the device in one asynchronous copy;
the edit graph does the rest.  Outputs are written straight into the caller's result tensors (``dest`` rows),
on the engine's device.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import fx

from .common import Edits, as_output_list, bucket, check_output_shape, to_device
from .deferred_dynamo import dynamo_import_deferred
from .kernels import to_cache, to_prefix_sums
from .kinds import GatherKind, InputRole, State
from .plan import Plan
from .rewrite import VALUES, EditModule, TailSplit, split_tail
from .static_batches import WIDTH_CLASSES, Layout, column_costs, layout


class Reference(NamedTuple):
    """What the reference pass leaves for the edits of one chunk of sequences."""
    outputs: object          # the model's outputs on the reference inputs
    caches: dict             # (source, pad_left, pad_right, pad_value, is_sum) -> (N, F, L_padded), or running
    #                          sums (N, F, L + 1) for inc_mean
    refs: dict               # node name -> reference output (incrementally updated nodes)
    statics: dict            # placeholder name -> model input (the sequences' other inputs)


def _graph_inputs(d: dict) -> dict:
    """``d`` as inputs of a compiled graph that keep its guards: every tensor with storage of its own (dynamo
    guards on a view's base) and at least two rows (it specialises a size-1 dimension; edits index row 0)."""
    def own(v):
        if not isinstance(v, torch.Tensor) or not v.dim():
            return v
        if len(v) == 1:
            return v.expand(2, *v.shape[1:]).contiguous()
        return v.clone() if v._base is not None else v
    return {k: own(v) for k, v in d.items()}


class Batching(NamedTuple):
    """How a run is cut (chosen by :meth:`fastism_torch.fast.FastISM._batching`, the one owner of batch sizes):
    ``size`` edits per batch, and with a tail split (:attr:`Executor.tail`) ``chunk`` edits at a time through the
    tail (0: the whole batch)."""
    size: int
    chunk: int = 0


class _Recorder(fx.Interpreter):
    def __init__(self, gm, keep):
        super().__init__(gm)
        self.keep = keep
        self.saved = {}

    def run_node(self, n):
        v = super().run_node(n)
        if n.name in self.keep:
            self.saved[n.name] = v
        return v


class Executor:
    #: static kernels: at most this many sets of window widths (width classes), one compiled graph each
    width_classes = WIDTH_CLASSES
    min_batch = 1                   # static kernels: smaller batches are padded (compiled graphs: MIN_BATCH)

    def __init__(self, gm: fx.GraphModule, plan: Plan, edit: EditModule, device: torch.device, seq_laxis: int):
        self.gm, self.plan, self.edit, self.device, self.seq_laxis = gm, plan, edit, device, seq_laxis
        self.keep = {ga.source for ga in plan.gathers if ga.source_state == State.WINDOW and ga.reuse is None} \
            | set(edit.ref_nodes)
        self.placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        # a defaulted argument the caller did not give (traced as a constant) is fed its default
        self.defaults = {n.name: n.args[0] for n in gm.graph.nodes if n.op == "placeholder" and n.args}
        self.row_inputs = {x.name for x in edit.inputs if x.per_edit}            # per-edit rows of the feed
        self.rebased = {x.name for x in edit.inputs if x.role == InputRole.OWN_ROWS}
        self.mark_step = False          # set for CUDA graphs (torch.compile mode "reduce-overhead")
        # static kernels: a few width classes of neighbouring windows, each with one width per node (windows shift
        # inward at the edges), so compiled graphs see few shapes (:mod:`.static_batches`)
        self._layout = None
        self.tail: TailSplit | None = None
        self.tail_nodes: frozenset = frozenset()     # plan nodes the tail computes
        self.tail_window = 0                         # bytes of the tail's widest gathered window, per edit
        if not edit.static and device.type == "cpu":
            self._split_tail()

    # ------------------------------------------------------------------ tail in chunks (CPU)
    def _split_tail(self) -> None:
        """Where the edit graph's windows get wide (at least :data:`TAIL_MIN_BYTES` per edit), run the segments
        from the first window at least half as wide as the widest on chunks of a batch's rows
        (:class:`Batching`), so that each op's input and output stay in the CPU's caches between ops; the
        segments before run on the whole batch, where a large batch spreads the per-call costs of many small
        ops.  Measured on BPNet (1 thread, interleaved in one process): batch 252 with chunks of 13 edits from
        its next-to-last dilated layer on, 3.18 s/seq at L=1000 and 7.07 at L=2114, against 3.61 and 8.16 at
        batch 78 unchunked."""
        sizes = window_bytes(self.plan)
        segs = [(i, sizes.get(k, 0)) for i, k in enumerate(self.edit.segment_gathers) if k is not None]
        widest = max((b for _, b in segs), default=0)
        if widest < TAIL_MIN_BYTES:
            return
        first = next(i for i, b in segs if 2 * b >= widest)
        self.tail = split_tail(self.edit.module, first, self.row_inputs)
        if self.tail is None:
            return
        self.tail_window = widest
        consumer = self.plan.gathers[self.edit.segment_gathers[first]].consumer      # a windowed node
        names = list(self.plan.nodes)
        self.tail_nodes = frozenset(names[names.index(consumer):])

    # ------------------------------------------------------------------ reference
    def reference(self, args: list) -> Reference:
        """Run the model once on the reference inputs; keep what the gathers and incremental ops read."""
        rec = _Recorder(self.gm, self.keep)
        out = rec.run(*args)
        caches = {}
        for ga in self.plan.gathers:
            if ga.source_state != State.WINDOW or ga.reuse is not None:
                continue
            key = self._cache_key(ga)
            if key in caches:
                continue
            if ga.kind == GatherKind.SUM:
                caches[key] = to_prefix_sums(rec.saved[ga.source], ga.laxis)
            else:
                caches[key] = to_cache(rec.saved[ga.source], ga.laxis, ga.pad[0], ga.pad[1], ga.window.pad_value)
        refs = {n: rec.saved[n] for n in self.edit.ref_nodes}
        statics = {**self.defaults, **dict(zip(self.placeholders, args))}
        if self.edit.static:
            caches, refs, statics = (_graph_inputs(d) for d in (caches, refs, statics))
        return Reference(out, caches, refs, statics)

    @staticmethod
    def _cache_key(ga):
        return ga.source, ga.pad[0], ga.pad[1], ga.window.pad_value, ga.kind == GatherKind.SUM

    # ------------------------------------------------------------------ edits
    def run(self, ref: Reference, edits: "Edits", sinks: list, batching: "Batching") -> None:
        """Write the outputs of ``edits`` to rows ``edits.dest`` of each ``sinks`` tensor (one per model output),
        all batches (:meth:`batches`)."""
        for _ in self.batches(ref, edits, sinks, batching):
            pass

    def batches(self, ref: Reference, edits: "Edits", sinks: list, batching: "Batching") -> Iterator[np.ndarray]:
        """Write the outputs of ``edits`` to rows ``edits.dest`` of each ``sinks`` tensor, batch by batch; yield,
        after each batch, the indices (into ``edits``) of the edits written (a retry after running out of memory
        resumes after them).

        Per group of neighbouring windows, everything the kernels need is computed here on the host (numpy),
        moved to the device in one transfer, and sliced per batch: the edit graph only launches device work.
        With ``edit.static`` each batch is a group of one width class, of balanced size (:meth:`_groups`), so
        compiled graphs see few shapes and multiply little more than the plan.  With a tail split
        (:meth:`_split_tail`), ``batching.chunk`` edits at a time run through the tail.
        """
        with dynamo_import_deferred():      # the custom ops' first call would import torch._dynamo (0.6-1.3 s)
            yield from self._run(ref, edits, sinks, batching)

    def _run(self, ref: Reference, edits: "Edits", sink: list, batching: "Batching") -> Iterator[np.ndarray]:
        batch_size, chunk = batching
        for blk, e, padded, widths, size in self._groups(edits, batch_size):
            arrays, ints = self._group_inputs(blk, padded, edits, widths)
            dev = to_device(arrays, self.device)
            for b0 in range(0, len(e), size):
                n = min(size, len(e) - b0)
                rows = {k: v[b0:b0 + size] for k, v in dev.items()}
                if self.mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                feed = self._feed(rows, ints, ref, edits.values)
                for r0, outs in self._outputs(feed, n, chunk):
                    for out, o in zip(sink, outs):
                        check_output_shape(o, out)
                        m = min(len(o), n - r0)                     # rows past n: static padding
                        out.index_copy_(0, rows["dest"][r0:r0 + m], o[:m].to(out.dtype))
                yield e[b0:b0 + n]

    @property
    def layout(self) -> Layout | None:
        """The static kernels' width classes and batches (:func:`.static_batches.layout`); None for the CPU eager
        kernels."""
        if self.edit.static and (self._layout is None or len(self._layout.widths) > self.width_classes):
            dense = {x.owner: x.node for x in self.edit.inputs if x.role == InputRole.DENSE_START}
            self._layout = layout(self.plan, *column_costs(self.plan, self.gm, dense), self.width_classes)
        return self._layout

    def _groups(self, edits: "Edits", batch_size: int):
        """``(windows, edits, padded, widths, rows)`` of each group: its mutation windows (sorted), its edits
        (indices into ``edits``), the same padded (repeats of the last edit, whose outputs are dropped), the window
        width of every node, and the rows of its batches.  CPU eager: neighbouring windows, about ``batch_size``
        edits, the group's own widths, unpadded.  Static kernels: one batch per group, from :attr:`layout` (one
        width class, balanced sizes; CUDA graphs: sizes rounded up to :func:`bucket`, few sizes to record)."""
        order = np.argsort(edits.window, kind="stable")
        w_sorted = edits.window[order]
        lay = self.layout
        if lay is not None:
            for lo, hi, c in lay.batches(w_sorted, batch_size):
                e = order[lo:hi]
                size = max(self.min_batch, bucket(len(e)) if self.mark_step else len(e))
                padded = np.concatenate([e, np.repeat(e[-1:], size - len(e))])
                yield np.unique(w_sorted[lo:hi]), e, padded, lay.widths[c], size
            return
        uniq = np.unique(w_sorted)
        per_range = max(1, len(order) // max(1, len(uniq)))
        per_group = max(1, batch_size // per_range)          # mutation windows per group
        for g0 in range(0, len(uniq), per_group):
            blk = uniq[g0:g0 + per_group]
            lo = np.searchsorted(w_sorted, blk[0], "left")
            hi = np.searchsorted(w_sorted, blk[-1], "right")
            yield blk, order[lo:hi], order[lo:hi], self.plan.widths(blk), batch_size

    def _outputs(self, feed: dict, n: int, chunk: int):
        """``(first row, output list)`` of the edit graph on a batch's ``feed``: once, or (with a tail
        split and a batch of more than ``chunk`` edits) the head once and the tail on chunks of rows."""
        split = self.tail
        if split is None or not chunk or n <= chunk:
            yield 0, as_output_list(self.edit.module(**feed))
            return
        carried = dict(zip(split.carried, split.head(**feed)))
        rows = len(feed[VALUES])
        if any(not isinstance(v, torch.Tensor) or v.dim() == 0 or len(v) != rows
               for k, v in carried.items() if k in split.rows):
            yield 0, as_output_list(split.tail(**{k: feed[k] for k in split.feed}, **carried))   # not per-edit rows
            return
        for r0 in range(0, n, chunk):
            part = {k: self._rows(k, feed[k], r0, chunk) for k in split.feed}
            part.update((k, v[r0:r0 + chunk] if k in split.rows else v) for k, v in carried.items())
            yield r0, as_output_list(split.tail(**part))

    def _rows(self, name: str, value, r0: int, chunk: int):
        """Feed entry ``name`` for rows ``[r0, r0 + chunk)`` of the batch: the edits' own rows of every
        per-edit input; caches and integers whole; a static source's row numbers counted from the chunk."""
        if name not in self.row_inputs or not isinstance(value, torch.Tensor):
            return value
        if name in self.rebased:
            return value[:min(chunk, len(value) - r0)]
        return value[r0:r0 + chunk]

    def _group_inputs(self, blk: np.ndarray, e: np.ndarray, edits: "Edits", widths: dict) -> tuple[dict, dict]:
        """Host-side index arrays (one entry per edit ``e``) and integers for the edits of one group, whose
        windows are ``blk`` and run at ``widths``: the edit graph's per-group inputs
        (:class:`~fastism_torch.rewrite.EditInput`), plus each edit's ``edit``, ``seq`` and ``dest``."""
        starts = {n: self.plan.starts(n, blk, w) for n, w in widths.items()}
        pos = np.searchsorted(blk, edits.window[e])
        arrays = {"edit": e, "seq": edits.seq[e], "dest": edits.dest[e]}
        ints = {}
        reads: dict = {}                 # gather -> (first position read per edit, width)
        for x in self.edit.inputs:
            if x.role == InputRole.DENSE_START:
                arrays[x.name] = starts[x.node][pos]
            elif x.role == InputRole.DENSE_SPAN:
                s = starts[x.node][pos]
                ints[x.name] = int(min(self.plan.nodes[x.node].length, s.max() - s.min() + widths[x.node]))
            elif x.role in (InputRole.START, InputRole.WIDTH, InputRole.SHIFT, InputRole.DELTA_ORIGIN):
                ga = self.plan.gathers[x.gather]
                if x.gather not in reads:
                    reads[x.gather] = _read(ga, starts, widths, pos)
                r, wreq = reads[x.gather]
                if x.role == InputRole.START:
                    arrays[x.name] = r + ga.pad[0] if ga.source_state == State.WINDOW else r
                elif x.role == InputRole.WIDTH:
                    ints[x.name] = int(wreq)
                elif x.role == InputRole.SHIFT:
                    arrays[x.name] = starts[ga.source][pos] - r
                else:
                    arrays[x.name] = ga.delta_origin(starts[ga.via][pos]) - r
        return arrays, ints

    def _feed(self, rows: dict, ints: dict, ref: Reference, values: torch.Tensor) -> dict:
        """The edit graph's inputs for one batch (``rows``: the batch's slices of the group's index tensors)."""
        st = rows["seq"]
        feed = {}
        for x in self.edit.inputs:
            if x.role == InputRole.VALUES:
                # (B, w, C) or (B, C, w): a tensor of its own, never a view, as compiled graphs guard on views' bases
                feed[x.name] = (values if self.seq_laxis == 1 else values.transpose(1, 2)).index_select(0, rows["edit"])
            elif x.role == InputRole.STATIC_ROWS:
                a = ref.statics[x.node]
                feed[x.name] = a.index_select(0, st) if isinstance(a, torch.Tensor) else a
            elif x.role == InputRole.REF_OUTPUT:
                feed[x.name] = ref.refs[x.node].index_select(0, st)
            elif x.role == InputRole.CACHE:
                feed[x.name] = ref.caches[self._cache_key(self.plan.gathers[x.gather])]
            elif x.role == InputRole.SEQ:
                feed[x.name] = st
            elif x.role == InputRole.OWN_ROWS:                # static source: the edits' own rows, unpadded
                feed[x.name] = torch.arange(len(st), device=st.device)
            elif x.role in (InputRole.WIDTH, InputRole.DENSE_SPAN):
                feed[x.name] = ints[x.name]
            else:
                feed[x.name] = rows[x.name]
        return feed


def _read(ga, starts: dict, widths: dict, pos: np.ndarray) -> tuple:
    """The first position gather ``ga`` reads of its source for each edit (unpadded), and its width."""
    if ga.kind == GatherKind.WINDOW:
        return ga.window.backward(starts[ga.consumer][pos], widths[ga.consumer])
    if ga.kind == GatherKind.FULL:
        return np.zeros(len(pos), dtype=np.int64), ga.length
    return starts[ga.source][pos], widths[ga.source]          # REF, SUM, DELTA: the source's own window


TAIL_MIN_BYTES = 128 * 2 ** 10    # chunk the tail only where some gathered window is this large per edit


def window_bytes(plan: Plan) -> dict:
    """Bytes per edit of each sliding-window gather's widest window (plan gather index -> bytes)."""
    widths = plan.widths(np.arange(len(plan.ranges)))
    out = {}
    for k, ga in enumerate(plan.gathers):
        if ga.kind != GatherKind.WINDOW or ga.reuse is not None or ga.consumer not in widths:
            continue
        _, width = ga.window.backward(0, widths[ga.consumer])
        out[k] = int(np.prod(ga.feat)) * int(width) * ga.itemsize
    return out
