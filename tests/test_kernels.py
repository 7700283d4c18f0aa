"""The custom ops (``torch.ops.fastism.*``) pass PyTorch's own checks (schema, fake/meta implementations,
autograd registration, torch.compile's view of them) on the arguments a real edit graph hands them."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastism_torch as ft
from fastism_torch.kernels import ops  # noqa: F401  (registers the ops)

from helpers import random_onehot, scale_weights


class _Record(TorchDispatchMode):
    """Keeps the first call of each fastism op (its arguments cloned)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastism" and func not in self.calls:
            clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a    # noqa: E731
            self.calls[func] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


class Net(nn.Module):
    """A residual conv block (gather_window, gather_window_add) before a flatten + dense (inc_linear)."""

    def __init__(self, L=40):
        super().__init__()
        self.c0, self.c1 = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * L, 3)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        h = torch.relu(self.c1(h)) + h
        return self.head(self.c2(h).flatten(1))


def _recorded_calls():
    fast = ft.FastISM(scale_weights(Net()), 40)
    with _Record() as rec:
        fast.saturation_mutagenesis(random_onehot(2, 40))
    return rec.calls


def test_the_edit_graph_uses_the_custom_ops():
    names = {f.__name__.split(".")[0] for f in _recorded_calls()}
    assert {"gather_window", "gather_window_add", "inc_linear"} <= names, names


@pytest.mark.parametrize("name", ["gather_window", "gather_window_add", "inc_linear"])
def test_opcheck(name):
    calls = {f.__name__.split(".")[0]: c for f, c in _recorded_calls().items()}
    args, kwargs = calls[name]
    torch.library.opcheck(getattr(torch.ops.fastism, name).default, args, kwargs)
