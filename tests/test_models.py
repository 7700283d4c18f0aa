"""The reference models in fastism_torch.models: shapes, fx traceability, sensitivity to mutation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastism_torch import models

CASES = [  # factory, kwargs, seq_len, expected output shapes for a batch of 3
    ("basset", {"num_outputs": 5}, 300, [(3, 5)]),
    ("factorized_basset", {"num_outputs": 2}, 300, [(3, 2)]),
    ("bpnet", {"num_tasks": 2}, 200, [(3, 2, 200), (3, 2)]),
    ("bpnet", {"num_tasks": 1, "n_dilated": 4, "profile_head": "conv"}, 150, [(3, 1, 150), (3, 1)]),
    ("tiny", {}, 100, [(3, 2)]),
]
IDS = [f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]


def _outs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


@pytest.fixture(scope="module")
def built():
    return {i: models.MODELS[name](seq_len=L, **kw) for i, (name, kw, L, _) in enumerate(CASES)}


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_shapes_eval_and_finite(built, case):
    name, kw, L, shapes = CASES[case]
    model = built[case]
    assert not model.training
    with torch.no_grad():
        out = _outs(model(models.random_onehot(3, L, seed=3)))
    assert [tuple(o.shape) for o in out] == shapes
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_fx_traceable(built, case):
    name, kw, L, _ = CASES[case]
    model = built[case]
    gm = torch.fx.symbolic_trace(model)
    x = models.random_onehot(2, L, seed=4)
    with torch.no_grad():
        for a, b in zip(_outs(model(x)), _outs(gm(x))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_single_base_mutation_moves_output(built, case):
    """A useful oracle: one substitution moves the outputs by > 1e-3 of their scale, at every place.

    Every single output must move by > 1e-4 of its scale (BPNet's counts head averages over the length, so a
    mutation moves it less): still 10x the float32 tolerance FastISM is checked at (1e-5).
    """
    name, kw, L, _ = CASES[case]
    model = built[case]
    x = models.random_onehot(2, L, seed=5)
    with torch.no_grad():
        ref = _outs(model(x))
        for pos in (0, L // 3, L // 2, L - 1):
            xm = x.clone()
            xm[:, :, pos] = torch.roll(xm[:, :, pos], 1, dims=1)     # a different base at pos
            rel = []
            for r, m in zip(ref, _outs(model(xm))):
                scale = float(r.abs().max())
                assert 1e-2 < scale < 1e3, (name, scale)
                rel.append(float((m - r).abs().max()) / scale)
            assert max(rel) > 1e-3 and min(rel) > 1e-4, (name, pos, rel)


def test_seeded_and_batchnorm_stats_non_trivial():
    a, b, c = models.basset(seq_len=200, seed=1), models.basset(seq_len=200, seed=1), models.basset(seq_len=200, seed=2)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert not torch.equal(a[0].weight, c[0].weight)
    for m in a.modules():
        if isinstance(m, nn.BatchNorm1d):
            assert float(m.running_mean.abs().max()) > 0.05
            assert float((m.running_var - 1).abs().max()) > 0.05
            assert float(m.running_var.min()) > 0


def test_default_init_and_bad_arguments():
    m = models.factorized_basset(seq_len=100, init="default")
    bn = next(x for x in m.modules() if isinstance(x, nn.BatchNorm1d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    with pytest.raises(ValueError, match="init"):
        models.basset(seq_len=100, init="xavier")
    with pytest.raises(ValueError, match="too short"):
        models.basset(seq_len=40)
    with pytest.raises(ValueError, match="profile_head"):
        models.bpnet(seq_len=100, profile_head="dense")


def test_mirrors_keras_layer_sizes():
    m = models.basset(seq_len=1000)
    convs = [x for x in m if isinstance(x, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(300, 19), (200, 11), (200, 7)]
    assert [x.kernel_size for x in m if isinstance(x, nn.MaxPool1d)] == [3, 4, 4]
    assert [x.in_features for x in m if isinstance(x, nn.Linear)] == [4000, 1000, 1000]
    f = models.factorized_basset(seq_len=1000, init="default")
    assert [(c.out_channels, c.kernel_size[0]) for c in f if isinstance(c, nn.Conv1d)] == \
        [(48, 3), (64, 3), (100, 3), (150, 7), (300, 7), (200, 7), (200, 3), (200, 3), (200, 7)]
    b = models.bpnet(seq_len=1000, init="default")
    assert [c.dilation[0] for c in b.dilated] == [2 ** i for i in range(9)]
    assert b.conv.kernel_size == (25,) and b.profile.kernel_size == (25,)
