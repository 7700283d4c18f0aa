"""Set-up that scales with the input length (fast.py's build path, capture on the meta device, sizing.py):
building an engine runs the model on no real data; a call runs one reference pass per sequence and, the first
time, one more forward pass to compare the trace with the model; batches are sized from the plan's per-edit
memory, with a clear error when one edit does not fit."""
from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import fastism_torch as ft
from fastism_torch import sizing
from fastism_torch.capture import capture
from helpers import assert_close_to_naive, random_onehot, scale_weights

L = 48


class Tower(nn.Module):
    """Conv tower with a pooling by a split length and a dense head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * L // 2, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.c2(h).view(x.shape[0], 8, -1, 2).amax(-1)
        return self.head(torch.relu(h).flatten(1))


def _count_full_passes(model):
    """A list that grows by the number of sequences each time ``model.c1`` runs on a full-length real input."""
    seen = []

    def hook(mod, args):
        x = args[0]
        if not x.is_meta and x.shape[-1] == L:
            seen.append(x.shape[0])
    model.c1.register_forward_pre_hook(hook)
    return seen


def test_build_runs_no_pass_and_a_call_one_reference_pass_plus_one_check():
    model = scale_weights(Tower())
    seen = _count_full_passes(model)
    fast = ft.FastISM(model, L, change_ranges=[(20, 24), (24, 28)], test_correctness=False, copy_model=False)
    assert sum(seen) == 0, "building ran the model on real data"
    x = random_onehot(1, L)
    first = fast(x)
    assert sum(seen) == 2, seen                   # the reference pass, and the model once to check the trace
    seen.clear()
    second = fast(x)
    assert sum(seen) == 1, seen                   # the reference pass only
    naive = ft.NaiveISM(model, L, change_ranges=[(20, 24), (24, 28)])(x)
    assert_close_to_naive(first, naive)
    assert_close_to_naive(second, naive)


class ViewAliasedInPlace(nn.Module):
    """``h`` is a view of ``x``; ``x += ...`` changes ``h`` in eager mode but not in the functional graph."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.c1(x)
        h = x[:, :2]
        x += self.c2(x)
        return torch.cat([x, h], 1)


def test_a_trace_that_differs_from_the_model_is_caught_on_the_first_call():
    """Built with no forward pass, the trace is compared with the model on the first reference pass; it differs
    here, so the model runs as one op (exact, with a warning) without the self-check."""
    model = scale_weights(ViewAliasedInPlace())
    x = random_onehot(2, 20)
    fast = ft.FastISM(model, 20, test_correctness=False)
    with pytest.warns(UserWarning, match="outputs differ from the model's"):
        got = fast.saturation_mutagenesis(x)
    assert_close_to_naive(got, ft.NaiveISM(model, 20).saturation_mutagenesis(x))
    assert [name for name, _ in fast.plan.stops] == ["whole"]


def test_shapes_on_the_meta_device_are_the_real_shapes():
    model = scale_weights(Tower())
    x = random_onehot(2, L)
    meta, real = capture(model, [x], check=False), capture(model, [x], check=True)
    shapes = lambda gm: {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes  # noqa: E731
                         if hasattr(n.meta.get("tensor_meta"), "shape")}
    assert shapes(meta) == shapes(real) and len(shapes(meta)) > 5


def test_live_peak_frees_values_after_their_last_reader():
    """x -> a -> b -> c(a, b): a lives until c; x is freed after a."""
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.relu, (x,))
    b = g.call_function(torch.tanh, (a,))
    c = g.call_function(torch.add, (a, b))
    g.output(c)
    gm = fx.GraphModule(nn.Module(), g)
    sizes = {x: 1, a: 10, b: 100, c: 1000}
    assert sizing.live_peak(gm, sizes) == 10 + 100 + 1000     # a, b and c alive at c; x freed after a
    sizes = {x: 5000, a: 10, b: 100, c: 1000}
    assert sizing.live_peak(gm, sizes) == 5010


def test_batches_shrink_to_what_fits_and_one_edit_too_many_is_a_clear_error(monkeypatch):
    model = scale_weights(Tower())
    fast = ft.FastISM(model, L, test_correctness=False)
    ex = fast._engine(fast.change_ranges)
    live = sizing.per_edit_bytes(ex.plan, fast.gm, fast.infos)
    assert 0 < live <= fast._per_edit_bytes(ex.plan)          # the live set never exceeds the sum of all values
    monkeypatch.setattr(fast, "memory_budget", 1)
    monkeypatch.setattr(sizing, "available_bytes", lambda device: 6 * live)
    assert fast._auto_batch(ex) == 3                             # half the free memory at `live` per edit
    x = random_onehot(2, L)
    assert_close_to_naive(fast.saturation_mutagenesis(x), ft.NaiveISM(model, L).saturation_mutagenesis(x))
    monkeypatch.setattr(sizing, "available_bytes", lambda device: live // 4)
    with pytest.raises(ValueError, match=r"one edit needs about .* GiB of activations but cpu has"):
        fast.saturation_mutagenesis(x)


def test_batch_floor_is_kept_where_memory_allows(monkeypatch):
    monkeypatch.setattr(sizing, "available_bytes", lambda device: 1 << 40)
    dev = torch.device("cpu")
    assert sizing.batch_for(per_edit=10 ** 9, live=10 ** 6, budget=1, device=dev, floor=16, ceiling=512) == 16
    assert sizing.batch_for(per_edit=10, live=10, budget=10 ** 4, device=dev, floor=16, ceiling=512) == 512
    monkeypatch.setattr(sizing, "available_bytes", lambda device: None)          # unknown: the floor
    assert sizing.batch_for(per_edit=10 ** 9, live=10 ** 9, budget=1, device=dev, floor=16, ceiling=512) == 16
