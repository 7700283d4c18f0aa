"""Execution of a plan: the reference pass (caches), then batches of edits through the edit graph.

Edits are sorted by mutation window and cut into groups of neighbouring windows; within a group every node
has one window width (:meth:`Plan.widths`), so each batch has static shapes.  Index tensors for every gather
are built here, with numpy, from the plan; the edit graph does the rest.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import fx

from .kernels import to_cache
from .plan import Plan
from .rewrite import EditModule


class Reference(NamedTuple):
    """What the reference pass leaves for the edits of one chunk of sequences."""
    outputs: object          # the model's outputs on the reference inputs
    caches: dict             # (source, pad_left, pad_right, pad_value) -> (N, F, L_padded)
    refs: dict               # node name -> reference output (incrementally updated nodes)
    statics: dict            # placeholder name -> model input (the sequences' other inputs)


class Group(NamedTuple):
    """Neighbouring mutation windows computed together: one window width per node."""
    widths: dict             # node name -> width
    starts: dict             # node name -> window start of each mutation window of the group


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
    def __init__(self, gm: fx.GraphModule, plan: Plan, edit: EditModule, device: torch.device, seq_laxis: int):
        self.gm, self.plan, self.edit, self.device, self.seq_laxis = gm, plan, edit, device, seq_laxis
        self.keep = {ga.source for ga in plan.gathers if ga.source_state == "window" and ga.reuse is None} \
            | set(edit.ref_nodes)
        self.placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]

    # ------------------------------------------------------------------ reference
    def reference(self, args: list) -> Reference:
        """Run the model once on the reference inputs; keep what the gathers and incremental ops read."""
        rec = _Recorder(self.gm, self.keep)
        out = rec.run(*args)
        caches = {}
        for ga in self.plan.gathers:
            if ga.source_state != "window" or ga.reuse is not None:
                continue
            key = self._cache_key(ga)
            if key not in caches:
                caches[key] = to_cache(rec.saved[ga.source], ga.laxis, ga.pad[0], ga.pad[1],
                                       ga.window.pad_value)
        refs = {n: rec.saved[n] for n in self.edit.ref_nodes}
        return Reference(out, caches, refs, dict(zip(self.placeholders, args)))

    @staticmethod
    def _cache_key(ga):
        return ga.source, ga.pad[0], ga.pad[1], ga.window.pad_value

    # ------------------------------------------------------------------ edits
    def run(self, ref: Reference, s_idx, r_idx, values, batch_size: int, bar=None):
        """Outputs ``(E, *out)`` for edits (numpy/torch index arrays, values ``(E, w, C)``)."""
        s_idx = np.asarray(s_idx.cpu() if isinstance(s_idx, torch.Tensor) else s_idx, dtype=np.int64)
        r_idx = np.asarray(r_idx.cpu() if isinstance(r_idx, torch.Tensor) else r_idx, dtype=np.int64)
        E = len(s_idx)
        order = np.argsort(r_idx, kind="stable")
        r_sorted = r_idx[order]
        uniq = np.unique(r_sorted)
        per_range = max(1, E // max(1, len(uniq)))
        per_group = max(1, batch_size // per_range)          # mutation windows per group
        results = None
        for g0 in range(0, len(uniq), per_group):
            blk = uniq[g0:g0 + per_group]
            widths = self.plan.widths(blk)
            group = Group(widths, {n: self.plan.starts(n, blk, w) for n, w in widths.items()})
            lo = np.searchsorted(r_sorted, blk[0], "left")
            hi = np.searchsorted(r_sorted, blk[-1], "right")
            for b0 in range(lo, hi, batch_size):
                e = order[b0:min(hi, b0 + batch_size)]
                pos = np.searchsorted(blk, r_idx[e])
                feed = self._feed(e, s_idx[e], pos, group, ref, values)
                outs = self.edit.module(**feed)
                outs = _as_list(outs)
                if results is None:
                    results = [torch.empty((E, *o.shape[1:]), dtype=torch.float32, device=o.device) for o in outs]
                et = torch.from_numpy(e).to(self.device)
                for r, o in zip(results, outs):
                    check_output_shape(o, r)
                    r.index_copy_(0, et, o.float())
                if bar is not None:
                    bar.update(len(e))
        return results

    def _feed(self, e, s, pos, group: Group, ref: Reference, values) -> dict:
        """The edit graph's inputs for edits ``e`` (sequences ``s``, at positions ``pos`` of the group)."""
        dev = self.device
        widths, starts = group
        B = len(e)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
        st = torch.from_numpy(s).to(dev)
        v = values[torch.from_numpy(e).to(values.device)].to(dev)          # (B, w, C)
        feed = {"values": v if self.seq_laxis == 1 else v.transpose(1, 2)}
        for name in self.edit.static_inputs:
            a = ref.statics[name]
            feed[f"in_{name}"] = a.index_select(0, st) if isinstance(a, torch.Tensor) else a
        for name in self.edit.ref_nodes:
            feed[f"ref_{name}"] = ref.refs[name].index_select(0, st)
        for name, x in self.edit.start_nodes.items():
            feed[f"start_{name}"] = t(starts[x][pos])
        for k, ga in enumerate(self.plan.gathers):
            if ga.reuse is not None:
                continue
            if ga.kind == "window":
                r, wreq = ga.window.backward(starts[ga.consumer][pos], widths[ga.consumer])
            elif ga.kind == "full":
                r, wreq = np.zeros(B, dtype=np.int64), ga.length
            else:
                r, wreq = starts[ga.source][pos], widths[ga.source]
            if ga.source_state == "window":
                feed[f"g{k}_cache"] = ref.caches[self._cache_key(ga)]
                feed[f"g{k}_seq"] = st
                feed[f"g{k}_start"] = t(r + ga.pad[0])
            else:                                       # static source: the edits' own rows, unpadded
                feed[f"g{k}_seq"] = torch.arange(B, device=dev)
                feed[f"g{k}_start"] = t(r)
            feed[f"g{k}_width"] = int(wreq)
            if ga.kind != "ref" and ga.source_state == "window":
                feed[f"g{k}_shift"] = t(starts[ga.source][pos] - r)
        return feed


def check_output_shape(out: torch.Tensor, results: torch.Tensor) -> None:
    if out.shape[1:] != results.shape[1:]:
        raise ValueError(f"the model's output shape depends on the input ({tuple(results.shape[1:])} for one "
                         f"batch, {tuple(out.shape[1:])} for another): ISM needs outputs of a fixed shape")


def _as_list(out):
    from .ism import as_output_list
    return as_output_list(out)
