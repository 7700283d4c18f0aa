"""The static path (GPUs, torch.compile) multiplies no more than 5% over the delta bound: its executed MACs,
counted on the meta device (no GPU, no data), for the benchmark models at L=1000 under ``delta="always"``.

Before the width classes and balanced batches (one width per node for every group, groups padded to the batch
size, a dense frame spanning a whole group), the same count gave 1.49x (Basset), 1.29x (Factorized Basset) and
1.13x (BPNet) the delta bound for one sequence at a GPU's batch size.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import fastism_torch as ft
from fastism_torch import models
from fastism_torch.kinds import InputRole
from fastism_torch.static_macs import static_executed_macs


@functools.cache
def engine(name: str):
    """The engine and its bounds (MACs need no trained weights: PyTorch's default initialisation)."""
    fast = ft.FastISM(getattr(models, name)(seq_len=1000, init="default"), 1000, test_correctness=False,
                      delta="always")
    return fast, fast.mac_summary()


@pytest.mark.parametrize("name", ["basset", "factorized_basset", "bpnet"])
@pytest.mark.parametrize("n_seqs, batch", [(1, 8192), (8, 4096)])
def test_static_path_executes_within_5_percent_of_the_delta_bound(name, n_seqs, batch):
    fast, bound = engine(name)
    e = static_executed_macs(fast, n_seqs, batch)
    assert e["edits"] == 3 * 1000 * n_seqs
    assert bound["planned_macs_per_mutation"] * 0.999 <= e["per_mutation"], (bound, e)     # the count is real
    assert e["per_mutation"] <= 1.05 * bound["delta_macs_per_mutation"], (bound, e)


def test_width_classes_cover_their_windows_and_batches_keep_one_dense_start():
    """Each class runs at least every one of its windows' changed widths; a batch holds one class and, with an
    incremental dense layer, one window start of the dense layer's input; every edit lands in one batch."""
    fast = ft.FastISM(models.basset(seq_len=300), 300, test_correctness=False)
    fast.static_kernels = True
    ex = fast._engine(fast.change_ranges)
    lay, plan = ex.layout, ex.plan
    assert 1 < len(lay.widths) <= ex.width_classes and lay.atom is not None
    for c, widths in enumerate(lay.widths):
        idx = np.flatnonzero(lay.klass == c)
        assert widths == plan.widths(idx)
    windows = np.repeat(np.arange(300), 3)
    (dense,) = [x.node for x in ex.edit.inputs if x.role == InputRole.DENSE_START]
    seen = 0
    for lo, hi, c in lay.batches(windows, 50):
        assert seen == lo and hi - lo <= 50
        w = windows[lo:hi]
        assert set(lay.klass[w]) == {c}
        assert len(set(plan.starts(dense, w, lay.widths[c][dense]))) == 1
        seen = hi
    assert seen == len(windows)
