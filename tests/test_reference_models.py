"""The paper's reference models (Basset, Factorized Basset, BPNet with 9 dilated residual layers) through
FastISM, against NaiveISM, at lengths 100 to 1000."""
from __future__ import annotations

import pytest

import fastism_torch as ft
from fastism_torch import models
from helpers import check_model

pytestmark = pytest.mark.usefixtures("kernel_form")   # every test with the CPU eager and the static kernels


@pytest.mark.parametrize("name,kw", [("basset", {"num_outputs": 4}), ("factorized_basset", {"num_outputs": 3}),
                                     ("bpnet", {"num_tasks": 2})])
def test_full_saturation_at_100bp(name, kw):
    # Basset's pools shrink 100 bp to 2 positions: still a valid model
    check_model(models.MODELS[name](seq_len=100, **kw), 100, n=2)


@pytest.mark.parametrize("length", [250, 1000])
@pytest.mark.parametrize("name", ["basset", "factorized_basset", "bpnet"])
def test_sampled_windows_at_longer_lengths(name, length):
    """Every model at 250 and 1000 bp: edge windows plus random interior ones, each against NaiveISM."""
    fast = ft.FastISM(models.MODELS[name](seq_len=length), length, test_correctness=False)
    worst = fast.check_correctness(n_seqs=2, n_ranges=12, seed=length)      # raises if beyond 1e-5 of scale
    assert worst >= 0.0


def test_check_correctness_detects_a_wrong_plan(monkeypatch):
    """The built-in check must be able to fail: corrupt a window start and it raises."""
    fast = ft.FastISM(models.tiny(seq_len=100), 100, test_correctness=False)
    from fastism_torch import plan as plan_mod
    real = plan_mod.Plan.starts

    def shifted(self, name, idx, width):
        s = real(self, name, idx, width)
        return s if name == fast.seq_node.name else s + (s + width < self.nodes[name].length)
    monkeypatch.setattr(plan_mod.Plan, "starts", shifted)
    with pytest.raises(RuntimeError, match="FastISM differs from NaiveISM"):
        fast.check_correctness()


def test_mac_summary_matches_the_paper_bounds():
    """The plan's MAC bound: Basset 13.9x plain (16.8x with the incremental dense), BPNet 4.85x."""
    b = ft.FastISM(models.basset(seq_len=1000, num_outputs=164), 1000, test_correctness=False).mac_summary()
    assert abs(b["full_macs"] / 1e6 - 270.8) < 2 and 16.0 < b["ratio"] < 17.5, b
    p = ft.FastISM(models.bpnet(seq_len=1000), 1000, test_correctness=False).mac_summary()
    assert abs(p["full_macs"] / 1e6 - 118.6) < 1 and 4.7 < p["ratio"] < 5.0, p
