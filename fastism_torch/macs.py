"""Multiply-accumulate counts from the plan: a full forward pass vs what one mutation recomputes.

Each op's count comes from its rule file (:func:`~fastism_torch.rules.registry.counts_macs`): convolutions
(incl. transposed; :mod:`.rules.conv`), dense layers and products of two tensors (``nn.Linear``, ``F.linear``,
``matmul``, ``bmm``, ``@``; :mod:`.rules.dense`), ``einsum``, ``nn.MultiheadAttention`` and recurrent layers
(:mod:`.rules.reduce`), pooling (one op per window element; :mod:`.rules.pool`).  A windowed node costs
its MACs times its exact changed width over its length (averaged over mutations), a full node costs its full
MACs, an incrementally updated Linear costs its changed inputs times its outputs.  This is the bound that the
measured speed-ups are compared with; element-wise ops are not counted (nor in the bound's numerator).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .kinds import State
from .rules.registry import count_macs, kernel_elements


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
        per_item = count_macs(node, gm)
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
        if info.state == State.FULL and info.decision is not None and info.decision.macs:
            r = plan.nodes[next(iter(info.decision.reads)).name]       # updated from the changed positions only
            cost = info.decision.macs * float(np.mean(r.hi - r.lo))
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
    return 2 * math.prod(out) * kernel_elements(kernel_size)


def _onednn_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's dense product ``x @ w.T``."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _inc_linear_flops(new_shape, ref_window_shape, ref_out_shape, weight_shape, *args, **kwargs) -> int:
    """FLOPs of :func:`~fastism_torch.kernels.inc_linear`: the changed window's features times the outputs."""
    return 2 * math.prod(new_shape) * weight_shape[0]
