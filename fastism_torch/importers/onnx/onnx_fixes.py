"""Rewrites of the ONNX graph itself, before onnx2torch sees it.

- ``Erfc`` (tf2onnx, for Keras 3's exact GELU) is not a standard ONNX operator: ONNX shape inference stops at it,
  so every later node lacks shape information (a later ``MaxPool`` then fails in onnx2torch with "spatial rank
  == -2").  Written as ``1 - Erf(x)`` (standard operators), shapes propagate through it.
"""
from __future__ import annotations

import numpy as np


def _erfc_as_erf(node, helper, numpy_helper) -> tuple[list, list]:
    """``Erfc(x)`` -> ``Sub(1, Erf(x))``: the new nodes (the last keeps the name and output) and initializers."""
    erf_out, one = node.output[0] + "__erf", node.output[0] + "__one"
    nodes = [helper.make_node("Erf", [node.input[0]], [erf_out], name=node.name + "/erf"),
             helper.make_node("Sub", [one, erf_out], [node.output[0]], name=node.name)]
    return nodes, [numpy_helper.from_array(np.array(1.0, np.float32), one)]


def standardise(model):
    """``model`` with the non-standard operators above replaced (a copy when anything changes)."""
    import onnx
    from onnx import helper, numpy_helper
    if not any(n.op_type == "Erfc" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type == "Erfc" and node.domain in ("", "ai.onnx"):
            new, inits = _erfc_as_erf(node, helper, numpy_helper)
            nodes.extend(new)
            out.graph.initializer.extend(inits)
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.value_info[:]                  # recomputed by onnx2torch's shape inference
    return out
