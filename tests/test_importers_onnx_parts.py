"""The ONNX importer's parts: the normaliser registry, the ONNX-level rewrites and the added converters, each
checked on a small ONNX graph against onnxruntime (or torch)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

if not all(importlib.util.find_spec(m) for m in ("onnx", "onnx2torch")):
    pytest.skip("needs the onnx extra (onnx, onnx2torch)", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastism_torch.importers.onnx import onnx_to_torch  # noqa: E402
from fastism_torch.importers.onnx.onnx_fixes import standardise  # noqa: E402
from fastism_torch.importers.onnx.registry import HANDLERS, handles  # noqa: E402
from fastism_torch.importers.onnx.setup import load_onnx2torch  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def _model(nodes, inputs, output_shape=None, inits=None, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                          [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]


# --------------------------------------------------------------------------- registry
def test_handlers_are_keyed_by_class():
    load_onnx2torch()
    assert HANDLERS and all(isinstance(c, type) and issubclass(c, nn.Module) for c in HANDLERS)


def test_a_misspelt_key_raises():
    with pytest.raises(TypeError, match="nn.Module subclasses; got 'OnnxReshpae'"):
        handles("OnnxReshpae")


def test_registering_twice_raises():
    load_onnx2torch()
    with pytest.raises(KeyError, match="OnnxReshape is already registered"):
        from onnx2torch.node_converters.reshape import OnnxReshape
        handles(OnnxReshape)(lambda b, name, mod, x: x)


# --------------------------------------------------------------------------- ONNX-level rewrites
def test_erfc_then_pool_converts():
    """Keras 3's GELU writes Erfc (no ONNX schema): rewritten as 1 - Erf, shapes reach the MaxPool after it."""
    nodes = [helper.make_node("Erfc", ["x"], ["e"], name="gelu/Erfc"),
             helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[2, 1], strides=[2, 1])]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n", 3, 20, 1])])
    fixed = standardise(model)
    assert [n.op_type for n in fixed.graph.node] == ["Erf", "Sub", "MaxPool"]
    assert [n.op_type for n in model.graph.node] == ["Erfc", "MaxPool"]          # the caller's model untouched
    gm = onnx_to_torch(model, seq_len=20, num_chars=3, layout="NCL")
    x = torch.randn(4, 3, 20, 1)
    want = nn.functional.max_pool2d(torch.special.erfc(x), (2, 1))
    assert torch.allclose(gm(x), want, atol=1e-6)


# --------------------------------------------------------------------------- added converters
@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence_converter(batch_axis, time_axis):
    from fastism_torch.importers.onnx.converters import OnnxReverseSequence
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3, 2) if time_axis == 0 else (3, 7, 2)).astype(np.float32)
    lens = np.array([7, 3, 1], np.int64)
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=batch_axis, time_axis=time_axis)
    model = _model([node], [("x", TensorProto.FLOAT, list(x.shape)), ("lens", TensorProto.INT64, [3])])
    want = _ort(model, {"x": x, "lens": lens})
    got = OnnxReverseSequence(batch_axis, time_axis)(torch.as_tensor(x), torch.as_tensor(lens))
    assert np.array_equal(got.numpy(), want)


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
def test_full_length_reverse_sequence_is_a_flip():
    """tf2onnx's ReverseSequence for a backward RNN: lengths from the input's shape, all full: torch.flip."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Expand", ["T", "n"], ["lens"]),
             helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=0, time_axis=1)]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "T": np.array([9], np.int64)}
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n", 9, 4])], inits=inits)
    gm = onnx_to_torch(model, seq_len=9, num_chars=4)
    assert any(n.target is torch.flip for n in gm.graph.nodes)
    x = np.random.default_rng(1).normal(size=(5, 9, 4)).astype(np.float32)
    assert np.array_equal(gm(torch.as_tensor(x)).numpy(), _ort(model, {"x": x}))


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
def test_batch_sized_constant_broadcasts():
    """A constant the size of the batch (Keras's zero initial RNN state, from Shape): folded to one row."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["z"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Mul", ["x", "x"], ["x2"]),
             helper.make_node("Add", ["x2", "z"], ["y"])]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n", 6, 4])])
    gm = onnx_to_torch(model, seq_len=6, num_chars=4)
    x = np.random.default_rng(2).normal(size=(5, 6, 4)).astype(np.float32)
    assert np.allclose(gm(torch.as_tensor(x)).numpy(), _ort(model, {"x": x}), atol=1e-6)


# --------------------------------------------------------------------------- loading
def test_onnx2torch_is_loaded_lazily_behind_the_triton_guard():
    """Importing the importers pulls in neither onnx2torch nor Triton; once TensorFlow is in the process,
    loading onnx2torch marks Triton absent instead of importing it (the two crash together)."""
    import subprocess
    import sys
    code = """
import importlib.machinery, sys, types
import fastism_torch.importers.onnx, fastism_torch.importers.keras
assert "onnx2torch" not in sys.modules and "triton" not in sys.modules
tf = sys.modules["tensorflow"] = types.ModuleType("tensorflow")       # as if the user had imported TensorFlow
tf.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
from fastism_torch.importers.onnx.setup import load_onnx2torch
load_onnx2torch()
assert "onnx2torch" in sys.modules and sys.modules["triton"] is None
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.stdout.strip().endswith("OK"), r.stderr[-2000:]


def test_keras_supported_layers_is_deprecated_not_gone():
    """The removed Keras layer list stays importable for a release, with a DeprecationWarning."""
    import fastism_torch.importers.keras as k
    with pytest.warns(DeprecationWarning, match="SUPPORTED_LAYERS"):
        assert "Conv1D" in k.SUPPORTED_LAYERS
