"""Corrected onnx2torch converters, registered in onnx2torch's registry on import.

- ``ConvTranspose`` with ``output_shape``, ``auto_pad=SAME_*`` or asymmetric ``pads`` (what tf2onnx writes for
  Keras ``Conv1DTranspose``/``Conv2DTranspose(padding="same")``): onnx2torch ignores ``output_shape`` and rejects
  asymmetric padding.  Converted here to :class:`OnnxConvTransposeCropped`: an unpadded transposed convolution
  followed by the crop the ONNX spec defines (the normaliser turns it into ``padding`` + a slice).
"""
from __future__ import annotations

from torch import nn
from onnx2torch.node_converters import registry
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult

_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class OnnxConvTransposeCropped(nn.Module, OnnxToTorchModule):
    """``conv`` (no padding) then crop to the ONNX output: ``pads`` fixed, or from ``output_shape``/``auto_pad``."""

    def __init__(self, conv: nn.Module, pads=None, output_shape=None, auto_pad: str = "NOTSET"):
        super().__init__()
        self.conv = conv
        self.pads = list(pads) if pads is not None else None
        self.output_shape = list(output_shape) if output_shape is not None else None
        self.auto_pad = auto_pad

    def crop(self, in_spatial) -> list[tuple[int, int]]:
        """``(begin, end)`` cropped from each spatial dim of the unpadded output, per the ONNX spec."""
        n = len(in_spatial)
        if self.pads is not None and self.output_shape is None and self.auto_pad in ("NOTSET", "VALID"):
            return [(self.pads[i], self.pads[i + n]) for i in range(n)]
        out = []
        for i, size in enumerate(in_spatial):
            k, s, d = self.conv.kernel_size[i], self.conv.stride[i], self.conv.dilation[i]
            op = self.conv.output_padding[i]
            full = s * (size - 1) + op + (k - 1) * d + 1
            target = self.output_shape[i] if self.output_shape is not None else size * s
            total = max(full - target, 0)
            if self.auto_pad == "SAME_UPPER" or (self.output_shape is None and self.auto_pad != "SAME_LOWER"):
                out.append((total // 2, total - total // 2))
            else:
                out.append((total - total // 2, total // 2))
        return out

    def forward(self, x):
        y = self.conv(x)
        crops = self.crop(x.shape[2:])
        idx = [slice(None), slice(None)] + [slice(b, y.shape[2 + i] - e) for i, (b, e) in enumerate(crops)]
        return y[tuple(idx)]


def _original(version):
    return _REPLACED.get(version)


_REPLACED: dict = {}


def _converter(version):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = node.attributes
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        weights = graph.initializers.get(node.input_values[1]) if len(node.input_values) > 1 else None
        rank = len(attrs.get("kernel_shape", [])) or (weights.to_torch().dim() - 2 if weights is not None else 0)
        pads = attrs.get("pads", [0] * 2 * rank)
        symmetric = list(pads[:rank]) == list(pads[rank:])
        if weights is None or ("output_shape" not in attrs and auto_pad in ("NOTSET", "VALID") and symmetric):
            return _REPLACED[version](node, graph)
        w = weights.to_torch()
        bias = graph.initializers[node.input_values[2]].to_torch() if len(node.input_values) > 2 else None
        groups = attrs.get("group", 1)
        conv = _CONV_T[rank](w.shape[0], w.shape[1] * groups, attrs.get("kernel_shape", list(w.shape[2:])),
                             stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1), groups=groups,
                             output_padding=attrs.get("output_padding", [0] * rank), bias=bias is not None)
        conv.weight.data = w
        if bias is not None:
            conv.bias.data = bias
        mod = OnnxConvTransposeCropped(conv, pads=pads, output_shape=attrs.get("output_shape"), auto_pad=auto_pad)
        return OperationConverterResult(torch_module=mod, onnx_mapping=OnnxMapping(
            inputs=(node.input_values[0],), outputs=node.output_values))
    return convert


def _register() -> None:
    reg = registry._CONVERTER_REGISTRY  # pylint: disable=protected-access
    for desc in list(reg):
        if desc.operation_type == "ConvTranspose" and desc.domain in ("", "ai.onnx"):
            _REPLACED[desc.version] = reg.pop(desc)
            registry.add_converter(operation_type="ConvTranspose", version=desc.version, domain=desc.domain)(
                _converter(desc.version))


_register()
