"""Multiply-accumulate counts from the plan: a full forward pass vs what one mutation recomputes.

Counted ops: convolutions (incl. transposed), dense layers (``nn.Linear``, ``F.linear``), products of two
tensors (``matmul``, ``bmm``, ``@``, ``einsum``: attention written by hand), ``nn.MultiheadAttention``,
recurrent layers (``nn.LSTM``/``GRU``/``RNN``) and pooling (one op per window element).  A windowed node costs
its MACs times its exact changed width over its length (averaged over mutations), a full node costs its full
MACs, an incrementally updated Linear costs its changed inputs times its outputs.  This is the bound that the
measured speed-ups are compared with; element-wise ops are not counted (nor in the bound's numerator).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .kinds import Kind, State


def _shape(n):
    tm = n.meta.get("tensor_meta") if hasattr(n, "meta") else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _elements(kernel_size) -> int:
    return math.prod(kernel_size) if isinstance(kernel_size, (tuple, list)) else int(kernel_size)


def _per_output(node, gm) -> int:
    """MACs per output element of ``node`` (0 for ops counted otherwise or not at all)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m.in_channels // m.groups * math.prod(m.kernel_size)
        if isinstance(m, nn.ConvTranspose1d):
            return m.in_channels // m.groups * m.kernel_size[0] // m.stride[0]
        if isinstance(m, nn.Linear):
            return m.in_features
        if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool2d, nn.AvgPool2d)):
            return _elements(m.kernel_size)
    if node.op == "call_function":
        if node.target in (F.conv1d, F.conv2d):
            return math.prod(_shape(node.args[1])[1:])
        if node.target is F.linear:
            return _shape(node.args[1])[-1]
        if node.target in (F.max_pool1d, F.avg_pool1d):
            return _elements(node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size", 1))
    if (node.op == "call_function" and node.target in (torch.matmul, operator.matmul, torch.bmm)
            or node.op == "call_method" and node.target in ("matmul", "bmm")):
        a = _shape(node.args[0])                   # a product of two tensors: the contracted size per output
        return a[-1] if a else 0
    return 0


def _per_item(node, gm) -> float:
    """MACs of ``node`` for one sequence at full length (0 if not counted)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            gates = 4 if isinstance(m, nn.LSTM) else 3 if isinstance(m, nn.GRU) else 1
            x = _shape(node.args[0])
            steps = x[0] if not m.batch_first else x[1]
            dirs = 2 if m.bidirectional else 1
            macs, inp = 0, m.input_size
            for _ in range(m.num_layers):
                macs += dirs * gates * (inp + m.hidden_size) * m.hidden_size
                inp = m.hidden_size * dirs
            return float(steps * macs)
        if isinstance(m, nn.MultiheadAttention):
            q = _shape(node.args[0])
            k = _shape(node.args[1]) if len(node.args) > 1 else q
            lq, lk = (q[1], k[1]) if m.batch_first else (q[0], k[0])
            e = m.embed_dim
            return float(2 * lq * e * e + 2 * lk * e * e + 2 * lq * lk * e)
    if node.op == "call_function" and node.target is torch.einsum:
        sizes = {}
        eq = node.args[0].replace(" ", "").split("->")[0].split(",")
        for spec, op in zip(eq, node.args[1:]):
            for letter, n in zip(spec, _shape(op) or ()):
                sizes[letter] = n
        batch = _shape(node)[0] if _shape(node) else 1
        return math.prod(sizes.values()) / max(1, batch)
    shape = _shape(node)
    per = _per_output(node, gm)
    return float(math.prod(shape[1:]) * per) if per and shape else 0.0


def mac_summary(gm, infos: dict, plan) -> dict:
    """MACs of one full forward pass vs those needed per mutation under ``plan`` (single-base windows).

    - ``fast_macs_per_mutation`` / ``ratio``: the *recompute bound* (fastISM's): every windowed op recomputes
      its changed range from a gathered window;
    - ``delta_macs_per_mutation`` / ``delta_ratio``: the *delta bound*: a linear sliding op with a delta form
      costs its changed *input* width, and the first layer on the sequence is free (a one-hot change is a
      look-up of kernel columns);
    - ``planned_macs_per_mutation`` / ``planned_ratio``: what the plan's per-layer choice (recompute or delta)
      multiplies, the first layer included, at each edit's exact widths (execution adds the groups' padding
      to the widest window: :func:`executed_macs`).
    """
    full = rec = dlt = planned = 0.0
    first = next(iter(plan.nodes))                     # the sequence
    for node in gm.graph.nodes:
        per_item = _per_item(node, gm)
        if not per_item:
            continue
        full += per_item
        info = infos[node]
        if info.state == State.WINDOW:
            r = plan.nodes[node.name]
            exact = per_item / r.length * float(np.mean(r.hi - r.lo))
            if r.macs:
                rec += r.recompute_macs
                dlt += 0.0 if r.delta_input == first else min(r.delta_macs, r.recompute_macs)
                planned += r.delta_macs if r.delta_from else r.recompute_macs
            else:
                rec, dlt, planned = rec + exact, dlt + exact, planned + exact
            continue
        cost = per_item
        if info.state == State.FULL and info.decision is not None and info.decision.kind == Kind.INC_LINEAR:
            r = plan.nodes[next(iter(info.decision.reads)).name]
            cost = per_item / r.length * float(np.mean(r.hi - r.lo))
        if info.state == State.FULL:
            rec, dlt, planned = rec + cost, dlt + cost, planned + cost
    ratio = lambda x: full / x if x else float("inf")  # noqa: E731
    return {"full_macs": int(full), "fast_macs_per_mutation": int(rec), "ratio": ratio(rec),
            "delta_macs_per_mutation": int(dlt), "delta_ratio": ratio(dlt),
            "planned_macs_per_mutation": int(planned), "planned_ratio": ratio(planned)}


def executed_macs(ism, seqs) -> dict:
    """Multiply-adds the engine actually executes for full saturation of ``seqs``, counted by PyTorch's
    ``FlopCounterMode`` (convolutions, transposed convolutions, matrix products, the incremental dense layers
    inside the custom op, and pooling as one op per window element, as :func:`mac_summary` counts it) over every
    batch, groups' padding included, and the reference pass.

    Returns ``{"total": MACs, "per_mutation": MACs / (3 L N), "edits": 3 L N}``.
    """
    from torch.utils.flop_counter import FlopCounterMode
    n, length = len(seqs), ism.seq_len
    cheaper, ism.naive_when_cheaper = getattr(ism, "naive_when_cheaper", False), False     # the fast path's count
    try:
        with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
            ism.saturation_mutagenesis(seqs)
    finally:
        ism.naive_when_cheaper = cheaper
    macs = counter.get_total_flops() / 2
    edits = (ism.num_chars - 1) * length * n
    return {"total": int(macs), "per_mutation": macs / edits, "edits": edits}


def flop_mapping() -> dict:
    """``FlopCounterMode``'s extra formulas: the incremental dense custom op, oneDNN's dense products and pooling
    (one op per output and window element), so that executed MACs count what :func:`mac_summary` counts."""
    aten = torch.ops.aten
    mapping = {torch.ops.fastism.inc_linear: _inc_linear_flops, aten.max_pool1d: _pool_flops,
               aten.max_pool2d_with_indices: _pool_flops, aten.avg_pool1d: _pool_flops, aten.avg_pool2d: _pool_flops,
               aten.max_pool2d: _pool_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):          # kernels.linear: oneDNN's dense products
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops
    return mapping


def _pool_flops(x_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    """FLOPs (2 per op) of a pooling: one op per output element and window element."""
    out = out_shape[0] if isinstance(out_shape[0], (tuple, list, torch.Size)) else out_shape
    return 2 * math.prod(out) * _elements(kernel_size)


def _onednn_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's dense product ``x @ w.T``."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _inc_linear_flops(new_shape, ref_window_shape, ref_out_shape, weight_shape, *args, **kwargs) -> int:
    """FLOPs of :func:`~fastism_torch.kernels.inc_linear`: the changed window's features times the outputs."""
    return 2 * math.prod(new_shape) * weight_shape[0]
