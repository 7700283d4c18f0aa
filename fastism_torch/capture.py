"""Graph capture: ``torch.fx.symbolic_trace`` plus shape propagation.

We use fx symbolic tracing rather than ``torch.export``: it keeps module calls (``call_module`` nodes with
their qualified names, which is what ``early_stop_layers`` and the per-op rules key on), needs no example
input to trace, and works on onnx2torch's GraphModules once the importer has folded their shape buffers.
Shapes come from :class:`torch.fx.passes.shape_prop.ShapeProp` on one example batch and are stored in
``node.meta["tensor_meta"]``.  Models whose Python control flow depends on tensor values cannot be traced:
the error says so and names the model.
"""
from __future__ import annotations

import inspect

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp


def capture(model: nn.Module, example_args: list) -> fx.GraphModule:
    """Trace ``model`` (``None`` inputs become concrete) and record every node's shape for ``example_args``."""
    concrete = {}
    if any(a is None for a in example_args):
        names = list(inspect.signature(model.forward).parameters)
        concrete = {names[i]: None for i, a in enumerate(example_args) if a is None}
    try:
        gm = model if isinstance(model, fx.GraphModule) and not concrete else fx.symbolic_trace(
            model, concrete_args=concrete or None)
    except Exception as e:
        raise ValueError(
            f"could not capture {type(model).__name__} with torch.fx symbolic tracing ({type(e).__name__}: {e}). "
            "Models with data-dependent Python control flow are not supported; wrap such parts in a leaf "
            "module (they then become stop points).") from e
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_args):     # None inputs keep a placeholder (asserted to be None)
        raise ValueError(f"the traced model takes {len(placeholders)} input(s) but {len(example_args)} were given")
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_args)
    return gm
