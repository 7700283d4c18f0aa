"""Multiply-accumulate counts from the plan: a full forward pass vs what one mutation recomputes.

Counted ops: convolutions (incl. transposed) and dense layers (``nn.Linear``, ``F.linear``, ``matmul`` with a
constant matrix).  A windowed node costs its per-position MACs times its exact changed width (averaged over
mutations), a full node costs its full MACs, an incrementally updated Linear costs its changed inputs times its
outputs.  This is the bound that the measured speed-ups are compared with.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _per_output(node, gm) -> int:
    """MACs per output element of ``node`` (0 for ops we do not count)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m.in_channels // m.groups * math.prod(m.kernel_size)
        if isinstance(m, nn.ConvTranspose1d):
            return m.in_channels // m.groups * m.kernel_size[0] // m.stride[0]
        if isinstance(m, nn.Linear):
            return m.in_features
    if node.op == "call_function":
        if node.target in (F.conv1d, F.conv2d):
            w = node.args[1].meta["tensor_meta"].shape
            return math.prod(w[1:])
        if node.target in (F.linear, torch.matmul, operator.matmul):
            return node.args[1].meta["tensor_meta"].shape[-1 if node.target is F.linear else -2]
    return 0


def mac_summary(ism) -> dict:
    gm, infos, plan = ism.gm, ism.infos, ism._engine(tuple((i, i + 1) for i in range(ism.seq_len))).plan
    full = fast = 0.0
    for node in gm.graph.nodes:
        tm = node.meta.get("tensor_meta")
        per = _per_output(node, gm)
        if not per or tm is None or not hasattr(tm, "shape"):
            continue
        shape = tuple(tm.shape)
        per_item = math.prod(shape[1:]) * per
        full += per_item
        info = infos[node]
        if info.state == "window":
            r = plan.nodes[node.name]
            fast += per_item / r.length * float(np.mean(r.hi - r.lo))
        elif info.state == "full":
            dec = info.decision
            if dec is not None and dec.kind == "inc_linear":
                x = next(iter(dec.reads))
                r = plan.nodes[x.name]
                fast += per_item / r.length * float(np.mean(r.hi - r.lo))
            else:
                fast += per_item
    return {"full_macs": int(full), "fast_macs_per_mutation": int(fast),
            "ratio": full / fast if fast else float("inf")}
