"""Corrected onnx2torch converters, registered in onnx2torch's registry on import.

- ``ConvTranspose`` with ``output_shape``, ``auto_pad=SAME_*`` or asymmetric ``pads`` (what tf2onnx writes for
  Keras ``Conv1DTranspose``/``Conv2DTranspose(padding="same")``): onnx2torch ignores ``output_shape`` and rejects
  asymmetric padding.  Converted here to :class:`OnnxConvTransposeCropped`: an unpadded transposed convolution
  followed by the crop the ONNX spec defines (the normaliser turns it into ``padding`` + a slice).
- ``Conv``/``MaxPool``/``AveragePool`` with ``auto_pad=SAME_UPPER/SAME_LOWER`` (tf2onnx, for strided or
  even-window Keras ``padding="same"``), and ``AveragePool`` with asymmetric pads: onnx2torch rejects them; here
  they become :class:`OnnxPadded` (the unpadded op on an explicitly padded input; pads from the input shape).
- ``Erfc`` (tf2onnx, for Keras's exact GELU): missing in onnx2torch.
"""
from __future__ import annotations

import torch
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


class OnnxErfc(nn.Module, OnnxToTorchModule):
    """``erfc(x) = 1 - erf(x)``."""

    def forward(self, x):
        return torch.special.erfc(x)


def _erfc(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(torch_module=OnnxErfc(), onnx_mapping=OnnxMapping(
        inputs=(node.input_values[0],), outputs=node.output_values))


def _same_pads(spatial, kernel, strides, dilations, upper: bool) -> list[int]:
    """Torch-order ``F.pad`` pads (last dim first) for ONNX ``auto_pad=SAME_UPPER/SAME_LOWER``."""
    begin, end = [], []
    for size, k, st, d in zip(spatial, kernel, strides, dilations):
        total = max((-(-size // st) - 1) * st + (k - 1) * d + 1 - size, 0)
        b = total // 2 if upper else total - total // 2
        begin.append(b)
        end.append(total - b)
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


class OnnxPadded(nn.Module, OnnxToTorchModule):
    """``inner`` (an unpadded conv or pool) on its input padded with ``value``: fixed ``pads`` (torch order), or
    ``same=(kernel, strides, dilations, upper)`` computed from the input shape.  ``divide_by_count``: average
    pooling that excludes the padding from its count."""

    def __init__(self, inner: nn.Module, pads=None, same=None, value: float = 0.0, divide_by_count=False):
        super().__init__()
        self.inner, self.pads, self.same = inner, pads, same
        self.value, self.divide_by_count = value, divide_by_count

    def torch_pads(self, spatial) -> list[int]:
        return list(self.pads) if self.pads is not None else _same_pads(spatial, *self.same)

    def forward(self, x):
        pads = self.torch_pads(x.shape[2:])
        y = self.inner(torch.nn.functional.pad(x, pads, value=self.value))
        if not self.divide_by_count:
            return y
        return y / self.inner(torch.nn.functional.pad(torch.ones_like(x[:1, :1]), pads))


def _with_same_pads(op_type, version):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = node._proto_attributes  # pylint: disable=protected-access
        auto_pad = attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        pads = attrs.get("pads")
        n = len(pads) // 2 if pads else 0
        asym_avg = op_type == "AveragePool" and pads and list(pads[:n]) != list(pads[n:])
        if op_type == "AveragePool" and auto_pad in ("NOTSET", "VALID") and not asym_avg:
            # onnx2torch's converter needs the input rank from shape inference; the kernel says it too
            rank = len(attrs["kernel_shape"])
            pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[rank - 1](
                attrs["kernel_shape"], attrs.get("strides", [1] * rank),
                padding=list(pads[:rank]) if pads and auto_pad == "NOTSET" else 0,
                ceil_mode=attrs.get("ceil_mode", 0) == 1, count_include_pad=attrs.get("count_include_pad", 0) == 1)
            return OperationConverterResult(torch_module=pool, onnx_mapping=OnnxMapping(
                inputs=(node.input_values[0],), outputs=node.output_values))
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") and not asym_avg:
            return _REPLACED_SAME[op_type, version](node, graph)
        kernel = attrs.get("kernel_shape")
        if kernel is None:
            kernel = list(graph.initializers[node.input_values[1]].to_torch().shape[2:])
        rank = len(kernel)
        exclude = op_type == "AveragePool" and attrs.get("count_include_pad", 0) == 0
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            same = (list(kernel), list(attrs.get("strides", [1] * rank)), list(attrs.get("dilations", [1] * rank)),
                    auto_pad == "SAME_UPPER")
            torch_pads = None
        else:
            from onnx2torch.node_converters.pad import _onnx_padding_to_torch
            same, torch_pads = None, _onnx_padding_to_torch(list(pads))
        attrs["auto_pad"] = "NOTSET"
        attrs["pads"] = [0] * 2 * rank
        if op_type == "AveragePool":
            attrs["count_include_pad"] = 1
        strides, ceil = attrs.get("strides", [1] * rank), attrs.get("ceil_mode", 0) == 1
        if op_type == "AveragePool":          # (onnx2torch's needs the input rank from shape inference)
            inner = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[rank - 1](kernel, strides, ceil_mode=ceil,
                                                                        count_include_pad=True)
        elif op_type == "MaxPool":
            inner = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[rank - 1](
                kernel, strides, dilation=attrs.get("dilations", [1] * rank), ceil_mode=ceil)
        else:
            inner = _REPLACED_SAME[op_type, version](node, graph).torch_module
        value = float("-inf") if op_type == "MaxPool" else 0.0
        mod = OnnxPadded(inner, pads=torch_pads, same=same, value=value, divide_by_count=exclude)
        inputs = tuple(node.input_values[:1]) if op_type != "Conv" else None
        mapping = OnnxMapping(inputs=inputs, outputs=node.output_values) if inputs else \
            _REPLACED_SAME[op_type, version](node, graph).onnx_mapping
        return OperationConverterResult(torch_module=mod, onnx_mapping=mapping)
    return convert


_REPLACED_SAME: dict = {}


def _register() -> None:
    reg = registry._CONVERTER_REGISTRY  # pylint: disable=protected-access
    for desc in list(reg):
        if desc.operation_type == "ConvTranspose" and desc.domain in ("", "ai.onnx"):
            _REPLACED[desc.version] = reg.pop(desc)
            registry.add_converter(operation_type="ConvTranspose", version=desc.version, domain=desc.domain)(
                _converter(desc.version))
    for desc in list(reg):
        if desc.operation_type in ("Conv", "MaxPool", "AveragePool") and desc.domain in ("", "ai.onnx"):
            _REPLACED_SAME[desc.operation_type, desc.version] = reg.pop(desc)
            registry.add_converter(operation_type=desc.operation_type, version=desc.version, domain=desc.domain)(
                _with_same_pads(desc.operation_type, desc.version))
    # Erfc is not a standard ONNX op, but tf2onnx writes it for Keras's exact GELU (no schema: looked up at
    # the model's own opset version)
    for version in range(1, 30):
        if registry.OperationDescription("", "Erfc", version) not in reg:
            registry.add_converter(operation_type="Erfc", version=version)(_erfc)


_register()
