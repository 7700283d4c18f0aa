"""Batch sizing from a plan: the activation memory one edit needs, and the memory a device has free.

The edit graph frees each value after its last use (fx's generated code drops it), so what one edit holds at
once is the *live set*: walking the graph in order, each node's per-edit bytes (its recomputed window for a
windowed node, the whole tensor for a node that runs in full) are held from the node to its last reader.  The
largest live set over the walk, times a factor for the gathered copies and kernel workspaces, is one edit's
memory; a batch of ``B`` edits needs ``B`` times that.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

from .common import host_available_bytes
from .kinds import State

BYTES = 4              # float32
OVERHEAD = 2           # gathered window copies (one per windowed input) and conv/matmul workspaces


def _element_count(tm, laxis: int | None = None, width: int | None = None) -> int:
    """Elements of one row (batch axis dropped) of a node's value; with ``laxis``, its length replaced by
    ``width``.  A tuple of tensors (``torch.max(x, dim)``) counts each."""
    if tm is None:
        return 0
    if not hasattr(tm, "shape"):
        return sum(_element_count(t, laxis, width) for t in tm) if isinstance(tm, (tuple, list)) else 0
    shape = list(tm.shape)
    if not shape:
        return 1
    if laxis is not None and laxis < len(shape):
        shape[laxis] = width
    return math.prod(shape[1:])


def node_bytes(plan, gm: fx.GraphModule, infos: dict, nodes=None, full: bool = True) -> dict:
    """Per-edit bytes of each node's value in the edit graph (windowed nodes of ``nodes`` only, if given; with
    ``full``, the nodes that run in full too)."""
    widths = plan.widths(np.arange(len(plan.ranges)))
    out = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        r = plan.nodes.get(n.name)
        if r is not None:
            if nodes is None or n.name in nodes:
                out[n] = BYTES * _element_count(tm, r.laxis, widths[n.name] + 1)
        elif full and infos[n].state == State.FULL:
            out[n] = BYTES * _element_count(tm)
    return out


def live_peak(gm: fx.GraphModule, sizes: dict) -> int:
    """The largest sum of ``sizes`` (node -> bytes) of values alive at once when ``gm`` runs in order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last = {n: max([order[u] for u in n.users], default=order[n]) for n in sizes}
    frees: dict = {}
    for n, i in last.items():
        frees.setdefault(i, []).append(n)
    live = peak = 0
    for n, i in order.items():
        live += sizes.get(n, 0)
        peak = max(peak, live)
        live -= sum(sizes[m] for m in frees.get(i, ()))
    return peak


def per_edit_bytes(plan, gm: fx.GraphModule, infos: dict, nodes=None, full: bool = True) -> int:
    """Activation bytes one edit needs at once in the edit graph (:data:`OVERHEAD` times the live peak)."""
    return OVERHEAD * live_peak(gm, node_bytes(plan, gm, infos, nodes, full)) + 64


def available_bytes(device: torch.device) -> int | None:
    """Memory free for activations on ``device``: free GPU memory, or the host's ``MemAvailable`` (Linux);
    None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    return host_available_bytes()


def check_one_edit_fits(per_edit: int, device: torch.device) -> None:
    """Raise ``ValueError`` if one edit's activations (``per_edit`` bytes, :data:`OVERHEAD` included) cannot fit
    in the memory ``device`` has free."""
    free = available_bytes(device)
    if free is not None and per_edit / OVERHEAD > free:
        raise ValueError(
            f"one edit needs about {per_edit / OVERHEAD / 2**30:.2f} GiB of activations but {device} has "
            f"{free / 2**30:.2f} GiB free: free memory, use a device with more, a shorter seq_len, or "
            "early_stop_layers later in the model")


def batch_for(per_edit: int, live: int, budget: int, device: torch.device, floor: int, ceiling: int) -> int:
    """Edits per batch: ``budget`` bytes of activations at ``per_edit`` bytes each (the executor's own estimate,
    which its batch sizes were tuned with); below ``floor``, as many as fit in half the free memory at ``live``
    bytes each (:func:`per_edit_bytes`), at most ``floor`` and at least one; at most ``ceiling``.  Raises
    ``ValueError`` if one edit does not fit at all."""
    check_one_edit_fits(live, device)
    n = budget // per_edit
    if n < floor:
        free = available_bytes(device)
        fits = floor if free is None else (free // 2) // live
        n = min(floor, max(n, fits))
    return int(np.clip(n, 1, ceiling))
