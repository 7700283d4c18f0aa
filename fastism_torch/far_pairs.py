"""Far pairs through the model's tail: double mutants whose changes meet only in the part that runs in full.

When two edits' change ranges never meet at a nonlinear op of the windowed part of the model (convolution
towers with a receptive field shorter than their distance), every value up to the first nonlinear op that
runs in full (after a flatten + dense layer, a global mean) is the reference plus the two single-mutant
changes.  The model splits there into a *head* (sequence -> the values the nonlinear tail reads) and a
*tail* (those values -> outputs): the double mutant is ``tail(h(ref) + dh(i) + dh(j))``, exact up to
rounding, and costs one pass of the tail (Basset: 1 M multiply-adds, against ~17 M for a fast edit of the
whole model).  :func:`split` builds the two parts from a FastISM engine's graph for a dependency map, whose
single mutants come from one saturation scan of the head (:func:`fastism_torch.dependency._head_singles`);
:func:`reach` builds them for :func:`fastism_torch.multi_edits`' sum form (edits of far windows).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import fx

from .common import Inputs, as_output_list
from .kinds import State
from .rules.registry import count_macs, is_linear, varying

#: largest head outputs kept per sequence for every single mutant (bytes, float32); above it no split
MAX_HEAD_BYTES = 512 << 20
MAX_TAIL_ROWS = 4096


class Split(NamedTuple):
    head: object            # FastISM of the model up to the tail's inputs (a tuple of them)
    tail: fx.GraphModule    # the tail's inputs -> the model's outputs
    far: np.ndarray | None  # (P1, P2): the pairs of first and second positions that go through the tail (None:
    #                         the caller checks its edits itself, as multi_edits does)
    rows: int               # rows of the tail per call (its activations within the engine's memory budget)


def _bytes_per_row(nodes) -> int:
    """float32 bytes of one row of ``nodes``' outputs (their recorded shapes)."""
    shapes = [n.meta.get("tensor_meta") for n in nodes]
    return 4 * sum(math.prod(s.shape[1:]) for s in shapes if hasattr(s, "shape"))


def _post_nodes(gm: fx.GraphModule, infos: dict) -> set:
    """The nonlinear ops that run in full and everything after them (not the output node)."""
    post = set()
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if any(u in post for u in node.all_input_nodes) or (
                infos[node].state == State.FULL and not is_linear(node, gm, infos)):
            post.add(node)
    return post


def _graphs(gm: fx.GraphModule, infos: dict, post: set):
    """``(head graph, tail graph)``, or None where a tail reads a model input other than the sequence."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    cut = [n for n in gm.graph.nodes if n not in post and n.op != "output"
           and any(u in post or u is out_node for u in n.users) and varying(n, infos)]
    head, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        if n.op != "output" and n not in post:
            env[n] = head.node_copy(n, lambda a: env[a])
    head.output(tuple(env[n] for n in cut))
    tail, tenv = fx.Graph(), {}
    for k, n in enumerate(cut):
        tenv[n] = tail.placeholder(f"h{k}")
    for n in gm.graph.nodes:
        if n in tenv or n.op == "output":
            continue
        if n in post and any(a not in tenv for a in n.all_input_nodes):
            return None                     # reads a model input other than the sequence
        if n in post or infos[n].state == State.CONST:     # (constants: copied, unused ones are harmless)
            tenv[n] = tail.node_copy(n, lambda a: tenv[a])
    tail.output(fx.graph.map_arg(out_node.args[0], lambda a: tenv[a]))
    return (head, tail, cut) if _row_per_sequence(gm, infos, cut) else None


def _row_per_sequence(gm: fx.GraphModule, infos: dict, cut: list) -> bool:
    """Whether every value the tail reads has one row per sequence (its recorded batch size is the
    sequence's): a head that stacks a sequence and its reverse complement along the batch axis cannot be cut,
    as its rows are not the sequences' (found by the fuzzer)."""
    seq = next(n for n in gm.graph.nodes if n.op == "placeholder" and infos[n].state == State.WINDOW)
    shapes = [getattr(n.meta.get("tensor_meta"), "shape", None) for n in [seq, *cut]]
    return all(s is not None and len(s) > 0 for s in shapes) and all(s[0] == shapes[0][0] for s in shapes)


def meeting_nodes(gm: fx.GraphModule, infos: dict) -> list:
    """Names of the nonlinear ops of the windowed part: where two edits' changes must not meet to add."""
    return [node.name for node in gm.graph.nodes if infos[node].state == State.WINDOW and node.op != "placeholder"
            and not is_linear(node, gm, infos)]


def far_pairs(gm: fx.GraphModule, infos: dict, nodes: dict, first: np.ndarray) -> np.ndarray:
    """``(P1, P)``: whether the change ranges of window ``first[k]`` and window ``m`` (indices into the plan's
    windows) are disjoint at every nonlinear op of the windowed part (exactly, pair by pair: the plan's
    :func:`~fastism_torch.plan.additive_distance` bounds the same by one distance)."""
    meet = np.zeros((len(first), len(next(iter(nodes.values())).lo)), dtype=bool)
    for name in meeting_nodes(gm, infos):
        r = nodes[name]
        live = r.hi > r.lo
        lo, hi = r.lo[first, None], r.hi[first, None]
        meet |= live[first, None] & live[None, :] & (r.lo[None, :] < hi) & (lo < r.hi[None, :])
    return ~meet


def split(ism, inp: Inputs, positions: np.ndarray, first: np.ndarray):
    """The :class:`Split` of ``ism`` (a FastISM) for pairs of a position of ``first`` and one of ``positions``
    (``first`` among them), or None: no nonlinear op runs in full, no pair is far enough apart, the tail reads
    other inputs, or the head's outputs would be too large."""
    if not hasattr(ism, "plan_for") or len(inp.args) != 1:
        return None
    plan = ism.plan_for(tuple((int(p), int(p) + 1) for p in positions))      # (builds an engine not built yet)
    gm, infos = ism.gm, ism.infos
    post = _post_nodes(gm, infos)
    if not post:
        return None
    far = far_pairs(gm, infos, plan.nodes, np.searchsorted(positions, first))
    graphs = _graphs(gm, infos, post) if far.any() else None
    if graphs is None:
        return None
    if _bytes_per_row(graphs[2]) * len(positions) * ism.num_chars > MAX_HEAD_BYTES:
        return None
    return _split_at(ism, post, graphs, far)


def head_and_tail(ism) -> tuple[Split | None, int] | None:
    """``ism``'s model split at its first nonlinear ops that run in full (a :class:`Split` with ``far`` None) and
    the multiply-adds of one row of the tail, or None: the tail reads other inputs.  ``(None, 0)`` where no
    nonlinear op runs in full (changes add up to the outputs).  The caller's engine must be built."""
    post = _post_nodes(ism.gm, ism.infos)
    if not post:
        return None, 0
    graphs = _graphs(ism.gm, ism.infos, post)
    if graphs is None:
        return None
    return _split_at(ism, post, graphs, None), int(sum(count_macs(n, ism.gm) or 0 for n in post))


def _split_at(ism, post: set, graphs: tuple, far) -> Split:
    """The head engine (``ism``'s class, built at its first call, no naive probe) and the tail module of
    ``graphs``."""
    head_graph, tail_graph, cut = graphs
    gm = ism.gm
    head = type(ism)(fx.GraphModule(gm, head_graph), ism.seq_len, test_correctness=False, copy_model=False,
                     batch_size=ism.batch_size, delta=ism.delta, **ism.settings())
    head.naive_when_cheaper = False      # a scan of many windows: build at its call, no naive probe
    rows = int(np.clip(ism.memory_budget // max(1, _bytes_per_row(list(post) + cut)), 1, MAX_TAIL_ROWS))
    return Split(head, fx.GraphModule(gm, tail_graph), far, rows)


class Reach(NamedTuple):
    """What :func:`fastism_torch.multi_edits`' sum form needs of an engine: where single positions' changes
    reach at the nonlinear ops of the windowed part (the plan of every single-position window), and the
    model's head and tail (:func:`head_and_tail`)."""
    lo: np.ndarray          # (ops, L)
    hi: np.ndarray          # (ops, L)
    split: Split | None     # None: no nonlinear op runs in full (changes add up to the outputs)
    tail: int               # multiply-adds of one row of the tail

    def apart(self, ws: list) -> bool:
        """Whether no two windows of ``ws`` (``.start``, ``.end``) have changes that meet at one of the ops."""
        for k, a in enumerate(ws):
            la, ha = self.lo[:, a.start:a.end, None], self.hi[:, a.start:a.end, None]
            for b in ws[k + 1:]:
                lb, hb = self.lo[:, None, b.start:b.end], self.hi[:, None, b.start:b.end]
                if ((ha > la) & (hb > lb) & (lb < ha) & (la < hb)).any():
                    return False
        return True

    def outputs(self, ism, hs: list) -> list:
        """The model's outputs from summed values ``hs`` of the head (through the tail), or ``hs`` themselves."""
        return hs if self.split is None else tail(self.split, ism, hs)


def reach(ism) -> Reach | None:
    """``ism``'s :class:`Reach` (a built engine), or None: the model does not split at its first nonlinear op
    that runs in full."""
    ht = head_and_tail(ism)
    if ht is None:
        return None
    plan = ism.plan_for(tuple((p, p + 1) for p in range(ism.seq_len)))
    names = meeting_nodes(ism.gm, ism.infos)
    empty = np.zeros((0, ism.seq_len), dtype=np.int64)
    lo = np.stack([plan.nodes[n].lo for n in names]) if names else empty
    hi = np.stack([plan.nodes[n].hi for n in names]) if names else empty
    return Reach(lo, hi, *ht)


@torch.no_grad()
def tail(sp: Split, ism, hs: list) -> list:
    """The model's outputs ``(R, *out)`` per output, on the CPU, from the head's outputs ``hs`` (``(R, ...)``
    each), ``sp.rows`` rows a call."""
    parts = []
    for lo in range(0, len(hs[0]), sp.rows):
        args = [h[lo:lo + sp.rows].to(ism.device) for h in hs]
        with ism._precision():
            out = sp.tail(*args)
        parts.append([o.float().cpu() for o in as_output_list(out)])             # (a tuple, a dict, ...)
    return [torch.cat(p) for p in zip(*parts)]
