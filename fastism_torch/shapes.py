"""Shape propagation for a captured graph: every node's ``tensor_meta`` (shape, dtype) for the example inputs,
recorded by running the graph, on real data (:func:`propagate`) or, at no cost at any length, on a copy of the
graph on the ``meta`` device (:func:`propagate_on_meta`)."""
from __future__ import annotations

import copy
import types
import warnings

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .deferred_dynamo import dynamo_import_deferred


def _given(gm: fx.GraphModule, example_args: list) -> list:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    given = [a for a in example_args if a is not None] if len(placeholders) < len(example_args) else example_args
    if len(placeholders) < len(given):
        raise ValueError(f"the traced model takes {len(placeholders)} input(s) but {len(given)} were given")
    return given


def propagate(gm: fx.GraphModule, example_args: list):
    given = _given(gm, example_args)
    with torch.no_grad():
        return ShapeProp(gm).propagate(*given)


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters, buffers and tensor attributes are on the ``meta`` device (no data
    is copied: each tensor is replaced by an empty meta twin before the deep copy sees it; a 1 GB model costs
    no 1 GB copy)."""
    memo = {}
    for mod in module.modules():
        for name, t in list(mod._parameters.items()) + list(mod._buffers.items()) + list(vars(mod).items()):
            if isinstance(t, torch.Tensor) and id(t) not in memo:
                twin = torch.empty_like(t, device="meta")
                memo[id(t)] = nn.Parameter(twin, t.requires_grad) if isinstance(t, nn.Parameter) else twin
    twin = copy.deepcopy(module, memo)
    for mod in twin.modules():
        if isinstance(mod, nn.RNNBase) and mod.mode in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
            mod.forward = types.MethodType(_rnn_on_meta, mod)
    return twin


def _rnn_on_meta(rnn: nn.RNNBase, x, hx=None):
    """The outputs of ``rnn`` (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) on a meta input, by their documented shapes:
    run as such on the meta device every time step goes through Python decompositions (0.2 s per call for
    gReLU's ConvGRU at 200 bp, most of its set-up)."""
    if not (isinstance(x, torch.Tensor) and x.is_meta):
        return type(rnn).forward(rnn, x, hx)
    batched = x.dim() == 3
    n = x.shape[0 if rnn.batch_first else 1] if batched else None
    length = x.shape[1 if rnn.batch_first and batched else 0]
    d = 2 if rnn.bidirectional else 1
    h_out = rnn.proj_size or rnn.hidden_size
    lead = ((n, length) if rnn.batch_first else (length, n)) if batched else (length,)
    out = x.new_empty((*lead, d * h_out))
    layers = d * rnn.num_layers
    state = [x.new_empty((layers, n, size) if batched else (layers, size)) for size in (h_out, rnn.hidden_size)]
    return (out, tuple(state)) if rnn.mode == "LSTM" else (out, state[0])


def propagate_on_meta(gm: fx.GraphModule, example_args: list) -> bool:
    """Record every node's shape (``tensor_meta``) by running a meta copy of ``gm``; False if some op cannot run
    on the meta device (the caller then propagates real data)."""
    given = _given(gm, example_args)
    meta_args = [torch.empty_like(a, device="meta") if isinstance(a, torch.Tensor) else a for a in given]
    try:
        with dynamo_import_deferred():
            twin = meta_copy(gm)
        with torch.no_grad(), warnings.catch_warnings(), dynamo_import_deferred():   # (meta kernels would
            warnings.simplefilter("ignore")                                          # import torch._dynamo)
            ShapeProp(twin).propagate(*meta_args)
    except Exception:                                             # noqa: BLE001 - data-dependent ops: real data
        return False
    metas = {n.name: n.meta.get("tensor_meta") for n in twin.graph.nodes}
    if set(metas) != {n.name for n in gm.graph.nodes}:
        return False
    for n in gm.graph.nodes:
        if metas[n.name] is not None:
            n.meta["tensor_meta"] = metas[n.name]
    return True
