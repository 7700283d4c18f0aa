"""The static path's executed multiply-adds, counted without a GPU: the edit graph's static (sync-free,
fixed-shape) form and the executor run on the ``meta`` device, where every op has shapes and no data, under
PyTorch's ``FlopCounterMode`` (:func:`.macs.flop_mapping`: pooling and the incremental dense layers counted as
:func:`.macs.mac_summary` counts them).  What a GPU or ``torch.compile`` run multiplies, batches' padding,
windows' widths and the reference pass included, in a second on the CPU.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .common import Edits, as_output_list
from .execute import Batching, Executor
from .macs import flop_mapping
from .rewrite import build_edit_module


def static_executed_macs(ism, n_seqs: int = 1, batch_size: int | None = None) -> dict:
    """Multiply-adds the static path executes for full saturation of ``n_seqs`` sequences of ``ism`` (a
    :class:`~fastism_torch.FastISM` of a model with one input), counted on the ``meta`` device.

    Parameters
    ----------
    ism : FastISM
        The engine: its model, plan (``delta`` setting included) and, by default, its batch size.
    n_seqs : int, default 1
        Sequences in the run (one chunk of the executor: ``(n_seqs, num_chars, L)``).
    batch_size : int, optional
        Edits per batch, as a GPU's memory would give it (default: the engine's own choice on the CPU).

    Returns
    -------
    dict
        ``{"total": MACs, "per_mutation": MACs / (3 L N), "edits": 3 L N, "batch_size": edits per batch}``:
        the edit batches and the reference pass.
    """
    from torch.utils.flop_counter import FlopCounterMode
    ranges = tuple((i, i + 1) for i in range(ism.seq_len))
    plan = ism.plan_for(ranges)
    edit = build_edit_module(ism.gm, ism.infos, plan, ism.seq_node, static=True)
    edit.module = copy.deepcopy(edit.module).to("meta")
    meta = torch.device("meta")
    ex = Executor(copy.deepcopy(ism.gm).to("meta"), plan, edit, meta, ism.length_axis)
    if batch_size is None:
        batch_size = ism.batch_size or ism._auto_batch(ex)
    c, length = ism.num_chars, ism.seq_len
    shape = (n_seqs, c, length) if ism.layout == "NCL" else (n_seqs, length, c)
    s_idx, p_idx, b_idx = (a.ravel() for a in np.meshgrid(np.arange(n_seqs), np.arange(length), np.arange(c - 1),
                                                          indexing="ij"))
    values = torch.empty(len(s_idx), 1, c, device=meta)
    edits = Edits(s_idx, p_idx, values, np.arange(len(s_idx)))
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        ref = ex.reference([torch.empty(shape, device=meta)])
        sinks = [torch.empty((len(s_idx), *o.shape[1:]), device=meta) for o in as_output_list(ref.outputs)]
        ex.run(ref, edits, sinks, Batching(batch_size))
    macs = counter.get_total_flops() / 2
    return {"total": int(macs), "per_mutation": macs / len(s_idx), "edits": len(s_idx), "batch_size": batch_size}
