"""Corrected onnx2torch converters, registered in onnx2torch's registry by :func:`register` (once).

- ``ConvTranspose`` with ``output_shape``, ``auto_pad=SAME_*`` or asymmetric ``pads`` (what tf2onnx writes for
  Keras ``Conv1DTranspose``/``Conv2DTranspose(padding="same")``): onnx2torch ignores ``output_shape`` and rejects
  asymmetric padding.  Converted here to :class:`OnnxConvTransposeCropped`: an unpadded transposed convolution
  followed by the crop the ONNX spec defines (the normaliser turns it into ``padding`` + a slice).
- ``Conv``/``MaxPool``/``AveragePool`` with ``auto_pad=SAME_UPPER/SAME_LOWER`` (tf2onnx, for strided or
  even-window Keras ``padding="same"``), and ``AveragePool`` with asymmetric pads: onnx2torch rejects them; here
  they become :class:`OnnxPadded` (the unpadded op on an explicitly padded input; pads from the input shape).
- ``ReverseSequence`` (tf2onnx, for the backward half of a Keras ``Bidirectional`` RNN): missing in onnx2torch.
  (``Erfc``, for Keras 3's exact GELU, is rewritten before conversion: see :mod:`.onnx_fixes`.)
"""
from __future__ import annotations

import torch
from onnx2torch.node_converters import registry
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
)
from torch import nn

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


class OnnxReverseSequence(nn.Module, OnnxToTorchModule):
    """ONNX ``ReverseSequence``: for batch entry ``b``, the first ``lens[b]`` steps along ``time_axis`` reversed
    (tf2onnx writes it for ``tf.reverse`` on the time axis: Keras's backward RNNs)."""

    def __init__(self, batch_axis: int = 1, time_axis: int = 0):
        super().__init__()
        self.batch_axis, self.time_axis = batch_axis, time_axis

    def forward(self, x, lens):
        xt = x.movedim((self.batch_axis, self.time_axis), (0, 1))
        t = torch.arange(xt.shape[1], device=x.device)[None, :]
        n = lens.to(t.dtype)[:, None]
        idx = torch.where(t < n, n - 1 - t, t)                               # (batch, time)
        idx = idx.reshape(*idx.shape, *[1] * (xt.dim() - 2)).expand_as(xt)
        return xt.gather(1, idx).movedim((0, 1), (self.batch_axis, self.time_axis))


def _reverse_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    mod = OnnxReverseSequence(attrs.get("batch_axis", 1), attrs.get("time_axis", 0))
    return OperationConverterResult(torch_module=mod, onnx_mapping=OnnxMapping(
        inputs=tuple(node.input_values[:2]), outputs=node.output_values))


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


def _auto_pad(attrs) -> str:
    auto_pad = attrs.get("auto_pad", "NOTSET")
    return auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad


def _avg_pool(attrs, rank: int, pads, include_pad: bool) -> nn.Module:
    """``nn.AvgPoolNd`` from the attributes (onnx2torch's converter needs the input rank from shape inference;
    the kernel says it too)."""
    return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[rank - 1](
        attrs["kernel_shape"], attrs.get("strides", [1] * rank), padding=pads,
        ceil_mode=attrs.get("ceil_mode", 0) == 1, count_include_pad=include_pad)


def _unpadded_inner(op_type, version, node, graph, rank: int) -> nn.Module:
    """The conv or pool of ``node`` without its padding (which :class:`OnnxPadded` applies)."""
    attrs = node._proto_attributes  # pylint: disable=protected-access
    attrs["auto_pad"] = "NOTSET"
    attrs["pads"] = [0] * 2 * rank
    if op_type == "AveragePool":
        attrs["count_include_pad"] = 1
        return _avg_pool(attrs, rank, 0, True)
    if op_type == "MaxPool":
        return (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[rank - 1](
            attrs["kernel_shape"], attrs.get("strides", [1] * rank), dilation=attrs.get("dilations", [1] * rank),
            ceil_mode=attrs.get("ceil_mode", 0) == 1)
    return _REPLACED_SAME[op_type, version](node, graph).torch_module


def _with_same_pads(op_type, version):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = node._proto_attributes  # pylint: disable=protected-access
        auto_pad, pads = _auto_pad(attrs), attrs.get("pads")
        n = len(pads) // 2 if pads else 0
        asym_avg = op_type == "AveragePool" and pads and list(pads[:n]) != list(pads[n:])
        same_pad = auto_pad in ("SAME_UPPER", "SAME_LOWER")
        if op_type == "AveragePool" and not same_pad and not asym_avg:
            rank = len(attrs["kernel_shape"])
            pool = _avg_pool(attrs, rank, list(pads[:rank]) if pads and auto_pad == "NOTSET" else 0,
                             attrs.get("count_include_pad", 0) == 1)
            return OperationConverterResult(torch_module=pool, onnx_mapping=OnnxMapping(
                inputs=(node.input_values[0],), outputs=node.output_values))
        if not same_pad and not asym_avg:
            return _REPLACED_SAME[op_type, version](node, graph)
        kernel = attrs.get("kernel_shape") or list(graph.initializers[node.input_values[1]].to_torch().shape[2:])
        rank = len(kernel)
        exclude = op_type == "AveragePool" and attrs.get("count_include_pad", 0) == 0
        same, torch_pads = None, None
        if same_pad:
            same = (list(kernel), list(attrs.get("strides", [1] * rank)), list(attrs.get("dilations", [1] * rank)),
                    auto_pad == "SAME_UPPER")
        else:
            from onnx2torch.node_converters.pad import _onnx_padding_to_torch
            torch_pads = _onnx_padding_to_torch(list(pads))
        inner = _unpadded_inner(op_type, version, node, graph, rank)
        value = float("-inf") if op_type == "MaxPool" else 0.0
        mod = OnnxPadded(inner, pads=torch_pads, same=same, value=value, divide_by_count=exclude)
        mapping = OnnxMapping(inputs=tuple(node.input_values[:1]), outputs=node.output_values) \
            if op_type != "Conv" else _REPLACED_SAME[op_type, version](node, graph).onnx_mapping
        return OperationConverterResult(torch_module=mod, onnx_mapping=mapping)
    return convert


_REPLACED_SAME: dict = {}


def register() -> None:
    """Replace or add the converters above in onnx2torch's registry."""
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
    if registry.OperationDescription("", "ReverseSequence", 10) not in reg:
        registry.add_converter(operation_type="ReverseSequence", version=10)(_reverse_sequence)
