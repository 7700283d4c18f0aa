"""from_onnx / onnx_to_torch: PyTorch models exported with torch.onnx.export, one-op converter checks against
onnxruntime, and bad input."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from torch import nn

if not all(importlib.util.find_spec(m) for m in ("onnx", "onnx2torch")):
    pytest.skip("needs the onnx extra (onnx, onnx2torch)", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastism_torch as ft  # noqa: E402
from fastism_torch import models  # noqa: E402
from fastism_torch.importers.onnx import onnx_to_torch  # noqa: E402

from helpers import assert_close_to_naive, random_onehot  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


class NLC(nn.Module):
    """Takes (N, L, C) like Keras; the wrapped model takes (N, C, L)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.transpose(1, 2))


class WithBias(nn.Module):
    """Two inputs: a per-sample bias vector first, the sequence second."""

    def __init__(self, L):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(8 * (L // 2) + 3, 2)

    def forward(self, bias, x):
        h = self.pool(torch.relu(self.conv(x.transpose(1, 2))))
        return self.fc(torch.cat([h.flatten(1), bias], 1))


def _export(model, args, path, names, dynamic=True):
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=names, dynamo=False, opset_version=17,
                          dynamic_axes={n: {0: "batch"} for n in names} if dynamic else None)
    return path


CASES = {
    "tiny": lambda: models.tiny(120),
    "basset": lambda: models.basset(200, num_outputs=3),
    "factorized_basset": lambda: models.factorized_basset(200),
    "bpnet": lambda: models.bpnet(200, n_dilated=4),
}
LENGTHS = {"tiny": 120, "basset": 200, "factorized_basset": 200, "bpnet": 200}


@pytest.mark.parametrize("name", list(CASES))
def test_exported_torch_model(tmp_path, name):
    L = LENGTHS[name]
    net = NLC(CASES[name]()).eval()
    path = _export(net, (torch.zeros(2, L, 4),), tmp_path / f"{name}.onnx", ["x"])
    ism = ft.from_onnx(path)                         # its own test_correctness against NaiveISM runs here
    assert ism.layout == "NLC" and ism.seq_len == L
    x = random_onehot(2, L, "NLC")
    naive = ft.NaiveISM(net, L, layout="NLC")
    assert_close_to_naive(ism.predict(x), naive.predict(x), 1e-5)
    assert_close_to_naive(ism.saturation_mutagenesis(x), naive.saturation_mutagenesis(x), 1e-4)


def test_normalised_graph_is_canonical(tmp_path):
    net = NLC(models.bpnet(100, n_dilated=3)).eval()
    path = _export(net, (torch.zeros(2, 100, 4),), tmp_path / "b.onnx", ["x"])
    gm = onnx_to_torch(path)
    left = {type(m).__name__ for m in gm.modules() if type(m).__module__.startswith("onnx2torch")}
    assert not left, f"onnx2torch modules left in the graph: {left}"
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in gm.modules())
    traced = torch.fx.symbolic_trace(gm)           # re-traceable
    x = random_onehot(3, 100, "NLC")
    for a, b in zip(traced(x), net(x)):
        assert torch.allclose(a, b, atol=1e-5)


def test_ncl_model(tmp_path):
    net = models.tiny(80).eval()
    path = _export(net, (torch.zeros(2, 4, 80),), tmp_path / "ncl.onnx", ["x"])
    ism = ft.from_onnx(path, layout="NCL")
    x = random_onehot(2, 80, "NCL")
    assert_close_to_naive(ism(x), ft.NaiveISM(net, 80, layout="NCL")(x), 1e-5)
    auto = ft.from_onnx(path)                        # (N, 4, 80): detected as NCL
    assert auto.layout == "NCL" and auto.seq_len == 80


def test_extra_input(tmp_path):
    net = WithBias(60).eval()
    path = _export(net, (torch.zeros(2, 3), torch.zeros(2, 60, 4)), tmp_path / "two.onnx", ["bias", "x"])
    ism = ft.from_onnx(path)
    assert ism.seq_input_idx == 1
    bias, x = torch.randn(2, 3), random_onehot(2, 60, "NLC")
    naive = ft.NaiveISM(net, 60, layout="NLC", seq_input_idx=1)
    assert_close_to_naive(ism([bias, x]), naive([bias, x]), 1e-5)


def test_symbolic_length_needs_seq_len(tmp_path):
    net = NLC(nn.Sequential(nn.Conv1d(4, 3, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(2, 50, 4),), str(tmp_path / "s.onnx"), input_names=["x"],
                          dynamo=False, opset_version=17, dynamic_axes={"x": {0: "b", 1: "len"}})
    with pytest.raises(ValueError, match="seq_len"):
        ft.from_onnx(tmp_path / "s.onnx")
    ism = ft.from_onnx(tmp_path / "s.onnx", seq_len=64)
    assert ism.seq_len == 64


# --------------------------------------------------------------------------- one-op checks (onnxruntime)
def _one_op_model(node, x_shape, y_shape, inits):
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
@pytest.mark.parametrize("attrs", [
    {"output_shape": [20, 1]},                               # tf2onnx's Conv2DTranspose(padding="same")
    {"output_shape": [20, 1], "auto_pad": "SAME_UPPER"},
    {"auto_pad": "SAME_UPPER"},
    {"pads": [3, 0, 2, 0]},                                  # asymmetric
    {"output_shape": [20, 1], "auto_pad": "SAME_LOWER"},
])
def test_conv_transpose_converter(attrs):
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3, 6, 1)).astype(np.float32)      # (C_in, C_out, k, 1), even kernel
    b = rng.normal(size=(3,)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[6, 1], **attrs)
    model = _one_op_model(node, [None, 6, 20, 1], None, {"w": w, "b": b})
    x = rng.normal(size=(2, 6, 20, 1)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    gm = onnx_to_torch(model, seq_len=20, num_chars=6, layout="NCL")
    got = gm(torch.as_tensor(x)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


# --------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such ONNX file: .*nope.onnx"):
        ft.from_onnx(tmp_path / "nope.onnx")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="bad.onnx is not a readable ONNX model"):
        ft.from_onnx(p)


def test_no_sequence_input(tmp_path):
    path = _export(nn.Linear(10, 2), (torch.zeros(2, 10),), tmp_path / "lin.onnx", ["x"])
    with pytest.raises(ValueError, match="no sequence-shaped input"):
        ft.from_onnx(path)


def test_unsupported_op_is_an_error(tmp_path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    model = _one_op_model(node, [None, 10, 4], None, {})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ValueError, match="Frobnicate"):
        ft.from_onnx(model)
