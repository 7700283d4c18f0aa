"""Bad input: each a ValueError that names the problem and the values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastism_torch as ft
from helpers import random_onehot, scale_weights


@pytest.fixture(scope="module")
def ism():
    m = scale_weights(nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(80, 2)))
    return ft.FastISM(m, 20)


@pytest.mark.parametrize("x,msg", [
    (torch.zeros(4, 20), r"3 dimensions .*got shape \(4, 20\)"),
    (torch.zeros(2, 4, 21), r"length 21 .*seq_len=20"),
    (torch.zeros(2, 5, 20), r"alphabet size 5 .*num_chars=4"),
    (torch.zeros(0, 4, 20), r"empty"),
])
def test_bad_sequences(ism, x, msg):
    with pytest.raises(ValueError, match=msg):
        ism(x)
    with pytest.raises(ValueError, match=msg):
        ism.saturation_mutagenesis(x)


def test_non_finite(ism):
    x = random_onehot(2, 20)
    x[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite .*\(1, 2, 7\)"):
        ism(x)


@pytest.mark.parametrize("ranges,msg", [
    ([(0, 3), (5, 7)], r"same width; got widths \[2, 3\]"),
    ([(18, 21)], r"\(18, 21\) is out of range"),
    ([(-1, 2)], r"out of range"),
    ([(3, 3)], r"out of range"),
    ([], "empty"),
    ([(1, 2, 3)], r"\(start, end\) pair"),
])
def test_bad_windows(ranges, msg):
    m = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match=msg):
        ft.FastISM(m, 20, change_ranges=ranges)
    with pytest.raises(ValueError, match=msg):
        ft.NaiveISM(m, 20, change_ranges=ranges)


@pytest.mark.parametrize("rep,msg", [
    ([1, 0, 0], r"length-4 vector or a \(1, 4\) array .*got shape \(3,\)"),
    (np.ones((2, 4)), r"got shape \(2, 4\)"),
    (3, "scalar 3"),
    ([np.nan, 0, 0, 0], "non-finite"),
])
def test_bad_replace_with(ism, rep, msg):
    with pytest.raises(ValueError, match=msg):
        ism(random_onehot(1, 20), replace_with=rep)


def test_other_arguments():
    m = nn.Sequential(nn.Conv1d(4, 4, 3))
    with pytest.raises(ValueError, match="layout"):
        ft.FastISM(m, 20, layout="LNC")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        ft.FastISM(lambda x: x, 20)
    with pytest.raises(ValueError, match="batch_size"):
        ft.NaiveISM(m, 20, batch_size=0)


def test_numpy_in_numpy_out_and_identity_edits(ism):
    x = random_onehot(2, 20)
    out = ism(x.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (2, 20, 2)
    sat = ism.saturation_mutagenesis(x)
    ref = ism.predict(x)
    for s in range(2):                     # identity edits hold the reference output
        bases = x[s].argmax(0)
        torch.testing.assert_close(sat[s, bases, torch.arange(20)], ref[s].expand(20, 2))
    # replacing a window by what it already holds gives the reference output
    rep = x[0, :, 5].numpy()
    out = ism(x[:1], replace_with=rep)
    torch.testing.assert_close(out[0, 5], ref[0])


def test_an_empty_output_head_does_not_break_the_rest():
    """bpnet-lite's BPNet below its design length crops its profile to nothing: (N, 1, 0) beside the counts."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv1d(4, 3, 5, padding=2)

        def forward(self, x):
            h = self.c(x)
            return h[:, :1, 30:-30], h.mean(-1)
    m = M()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 40)), 4).float().transpose(1, 2)
    prof, counts = ft.FastISM(m, 40).saturation_mutagenesis(x)
    assert prof.shape == (2, 4, 40, 1, 0)
    want = ft.NaiveISM(m, 40).saturation_mutagenesis(x)[1]
    assert torch.allclose(counts, want, atol=1e-6)
