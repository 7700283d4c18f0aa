"""FastISM on the field's own third-party PyTorch models (tests/zoo_models.py), unmodified, against NaiveISM.

Each entry skips when its package is not installed (``bash scripts/install_zoo.sh .venv/bin/python``).
Windows: every single position for the cheap models, a seeded sample (edges, centre, random) for the ones
whose naive ISM is slow; each is checked zeroed out (``replace_with=0``) and mutated to one base.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastism_torch as ft
from helpers import assert_close_to_naive, random_onehot
from zoo_models import EXTRA_INPUTS, PACKAGES, ZOO

#: windows tested per model where the full length is too slow for naive ISM on a 2-core CPU
N_POSITIONS = {
    "chrombpnet_pytorch": 64,      # its bias model is hard-coded at 128 filters
    "grelu_borzoi": 64,
    "grelu_enformer": 64,
    "enformer_pytorch": 64,
    "borzoi_pytorch": 12,          # hard-coded 512-1280-channel conv tower and 7611-track head
}


#: models that cannot be traced and run as one op (exact, naive speed, with a warning naming why)
ONE_OP: dict = {}        # (borzoi-pytorch's attention calls torch.vmap: that module alone is one op)


def positions(name: str, length: int) -> list[int]:
    n = N_POSITIONS.get(name)
    if n is None or n >= length:
        return list(range(length))
    rng = np.random.default_rng(0)
    fixed = {0, 1, length // 2, length - 2, length - 1}
    rest = rng.choice(sorted(set(range(length)) - fixed), n - len(fixed), replace=False)
    return sorted(fixed | {int(i) for i in rest})


def _outs(o):
    return o if isinstance(o, tuple) else (o,)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_matches_naive(name):
    pytest.importorskip(PACKAGES[name])
    model, length, layout, _note = ZOO[name]()
    ranges = [(i, i + 1) for i in positions(name, length)]
    x = random_onehot(2, length, layout)
    if name in EXTRA_INPUTS:                       # the sequence first, then the model's other inputs
        x = [x, *EXTRA_INPUTS[name](2, length)]
    naive = ft.NaiveISM(model, length, layout=layout, change_ranges=ranges)
    fast = ft.FastISM(model, length, layout=layout, change_ranges=ranges, test_correctness=False)
    for rep in (0, torch.tensor([0.0, 0.0, 1.0, 0.0])):
        expected = naive(x, replace_with=rep)
        assert_close_to_naive(fast(x, replace_with=rep), expected)
        for i, o in enumerate(_outs(expected)):        # every output (profile and counts) moves
            spread = float((o - o[:, :1]).abs().max())
            assert spread > 1e-4, f"output {i} barely moves under mutation ({spread:.2g}): the test checks nothing"
    windowed = [n for n in fast.plan.nodes if n != fast.seq_node.name]
    assert bool(windowed) != (name in ONE_OP), (name, fast.plan.stops)   # a fast path, except where it cannot be


#: third-party models for edits of several windows: one per family (dilated residual with two heads, a conv
#: tower + MLP, a recurrent stop, a transformer stop)
MULTI = ["bpnetlite_bpnet", "bpnetlite_chrombpnet", "grelu_convmlp", "grelu_convgru", "grelu_convtransformer"]


@pytest.mark.parametrize("name", MULTI)
def test_zoo_multi_edits_match_a_naive_loop(name):
    """``multi_edits`` on unmodified third-party models against the model run on explicitly edited sequences:
    double SNPs near and far apart, a motif pair, an N window, a three-window edit, in both exact forms."""
    pytest.importorskip(PACKAGES[name])
    model, length, layout, _note = ZOO[name]()
    if name in EXTRA_INPUTS:
        pytest.skip("a model with other inputs")
    rng = np.random.default_rng(1)
    x = random_onehot(2, length, layout)
    edits = [[(1, 2), (3, 0)], [(0, 1), (length - 1, 3)], [(length // 4, "GATAAG"), (length // 2, "CACGTG")],
             [(length // 3, np.full((5, 4), 0.25))],
             [(int(p), int(rng.integers(4))) for p in (7, length // 2, length - 9)]]
    edits += [[(int(a), int(rng.integers(4))), (int(a) + int(d), int(rng.integers(4)))]
              for a, d in zip(rng.integers(0, length - 60, 6), rng.integers(1, 60, 6))]
    rows = []
    for n in range(2):
        for e in edits:
            xe = x[n].clone()
            seq = xe if layout == "NLC" else xe.T                                   # (L, C) view
            for start, values in e:
                v = (torch.eye(4)[values][None] if isinstance(values, int) else
                     torch.eye(4)[["ACGT".index(c) for c in values]] if isinstance(values, str) else
                     torch.as_tensor(values, dtype=torch.float32))
                seq[start:start + len(v)] = v
            rows.append(xe)
    with torch.no_grad():
        want = _outs(model(torch.stack(rows)))
    assert all(float((w - w[:1]).abs().max()) > 1e-4 for w in want)       # the edits move every output
    fast = ft.FastISM(model, length, layout=layout, test_correctness=False)
    for span in (None, 0, length):                       # the plan's choice, all mutant copies, all hulls
        got = _outs(fast.multi_edits(x, edits, alphabet="ACGT", span=span))
        for g, w in zip(got, want):
            assert_close_to_naive(g, w.reshape(2, len(edits), *w.shape[1:]))
