"""Convolutions along the length axis: Conv1d, Conv2d with the other spatial kernel 1, ConvTranspose1d
(stride 1), and their functional forms.  Any dilation, even/odd kernels, 'same'/'valid'/explicit padding,
groups/depthwise.  Recomputed windows are convolved without padding: the gathered window holds the padding."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..kinds import Kind, State
from ..ranges import Window
from .registry import (Decision, Read, RuleContext, counts_macs, functions, mark_linear, module_types,
                       per_output_element, register, stop, varying_first)


def same_left(kernel: int, dilation: int) -> int:
    """PyTorch's left padding for ``padding='same'``: ``total // 2`` (the extra one goes right)."""
    return dilation * (kernel - 1) // 2


def _pad_left(padding, kernel, dilation, dim=0):
    if padding == "same":
        return same_left(kernel, dilation)
    if padding == "valid":
        return 0
    return padding[dim] if isinstance(padding, (tuple, list)) else int(padding)


def sliding(ctx: RuleContext, x, window: Window, emit, out_laxis=None, delta=None, macs: int = 0,
            dilation: int = 1) -> Decision:
    out = ctx.out_shape
    lax = ctx.laxis(x) if out_laxis is None else out_laxis
    return Decision(Kind.SLIDING, laxis=lax, length=out[lax], reads={x: Read(window, ctx.laxis(x))}, emit=emit,
                    delta=delta if window.stride == 1 else None, macs=macs,
                    delta_cost=dilated_delta_cost() if dilation > 1 else DELTA_COST)


# Time per multiply-add of the delta form (a transposed convolution of the changed columns) relative to the
# recomputing convolution, measured per layer on the CPU (AMD EPYC, oneDNN, 2026-12-06): Basset's conv2 (300 -> 200,
# k=11; 7 changed columns) 97.7 ms for 1/2.43 of the MACs of 222.5 ms recomputed (1.07, 1 thread).  BPNet's dilated
# layers (64 -> 64, k=3): 1.5-1.6 with oneDNN's dilated transposed kernels, 1.2-1.3 at one thread for the wide
# changes of dilation 32-256 as shifted products (:func:`_shifted_products`); but the delta path's extra small ops
# (forming the change, the shifted adds, adding to the reference window) scale worse over threads than the
# recomputing convolution: at 2 threads BPNet ran 1.3x faster than at 1 with deltas and 1.65x recomputing, its
# delta plan (L=1000) 9-25% slower than recomputing where it was 4-11% faster at one thread.  So dilated layers
# propagate the change at one thread and recompute at several.
DELTA_COST = 1.1
DELTA_COST_DILATED = 1.3              # one thread
DELTA_COST_DILATED_THREADS = 1.65     # several threads


def dilated_delta_cost() -> float:
    """The time per multiply-add of a dilated convolution's delta form relative to recomputing, at the current
    number of threads (read when the model is analysed)."""
    return DELTA_COST_DILATED if torch.get_num_threads() == 1 else DELTA_COST_DILATED_THREADS


def emit_module(new_module):
    """Emit a call to ``new_module`` (a padding-free copy sharing the original's parameters)."""
    def emit(builder, node, args, kwargs):
        name = builder.add_module(node.name + "_valid", new_module)
        return builder.graph.call_module(name, args, kwargs)
    return emit


def delta_module(new_module):
    """A :data:`~.registry.Delta` calling ``new_module`` on the input's change."""
    def delta(builder, node, args, kwargs, change):
        name = builder.add_module(node.name + "_delta", new_module)
        return builder.graph.call_module(name, (change,))
    return delta


def conv1d_delta(change, weight, dilation: int = 1, groups: int = 1):
    """The change of a stride-1 ``conv1d``'s output from the change of its input, no bias: each changed input
    column reaches ``dilation * (k - 1) + 1`` outputs, a transposed convolution of the change with the flipped
    kernel (``(B, C_in, w)`` -> ``(B, C_out, w + dilation * (k - 1))``; the first output is ``dilation * (k - 1)``
    positions before the change's first column, counted in the convolution's unpadded frame).  It costs the
    changed input columns, not the output window a recomputation reads: ``w`` against ``w + dilation * (k-1)``
    columns of multiply-adds (Basset's conv2: 7 against 17)."""
    c_out, c_in_g, k = weight.shape
    w = weight.view(groups, c_out // groups, c_in_g, k).transpose(1, 2).reshape(groups * c_in_g, c_out // groups, k)
    if change.shape[-1] == 1 and groups == 1 and dilation == 1 and change.dim() == 3:
        # one changed column (a single-base edit at the first layer): its change times the table of flipped kernel
        # columns, ``(B, C_in) @ (C_in, C_out * k)``; measured 10x faster than the transposed convolution for
        # BPNet's 4 -> 64 x 25 first layer (1 thread, batch 2048), which spends its time on tiny inputs
        return (change[:, :, 0] @ w.flip(-1).reshape(c_in_g, c_out * k)).view(change.shape[0], c_out, k)
    if groups == 1 and dilation > 1 and change.dim() == 3 and change.shape[-1] >= GEMM_DELTA_WIDTH:
        return _shifted_products(change, w.flip(-1), dilation)
    return F.conv_transpose1d(change, w.flip(-1), dilation=dilation, groups=groups)


#: changed widths from which a dilated delta runs as one matrix product and ``k`` shifted adds
#: (:func:`_shifted_products`) rather than oneDNN's dilated transposed convolution
GEMM_DELTA_WIDTH = 64


def _shifted_products(change, w_flipped, dilation: int, chunk_bytes: int = 2 << 20):
    """``conv_transpose1d(change, w_flipped, dilation=dilation)`` as ``z = W_t @ change`` for every tap ``t`` (one
    product, ``(k * C_out, C_in) @ (b, C_in, w)``) added at offsets ``t * dilation``, over chunks of ``b`` rows
    whose ``z`` fits in ``chunk_bytes`` (in cache: 166 rows at once ran at half the speed).  For BPNet's dilated
    layers (64 -> 64, k=3, 85-535 changed columns, dilation 32-256) it took 0.44-4.0 ms where oneDNN's dilated
    transposed convolution took 0.53-5.0 and recomputing the window 0.51-5.7 (1 thread, AMD EPYC, CPU time,
    2026-12-06); on narrow changes (under ~64 columns) the product is slower than oneDNN."""
    n, _, width = change.shape
    c_in, c_out, k = w_flipped.shape
    table = w_flipped.permute(2, 1, 0).reshape(k * c_out, c_in)
    out = change.new_zeros(n, c_out, width + dilation * (k - 1))
    rows = max(1, chunk_bytes // (k * c_out * width * change.element_size()))
    for b in range(0, n, rows):
        z = torch.matmul(table, change[b:b + rows]).view(-1, k, c_out, width)
        part = out[b:b + rows]
        for t in range(k):
            part[:, :, t * dilation:t * dilation + width] += z[:, t]
    return out


class DeltaConv1d(nn.Module):
    """The change of a stride-1 ``Conv1d``'s output from its input's change (:func:`conv1d_delta`)."""

    def __init__(self, mod: nn.Conv1d):
        super().__init__()
        self.mod = mod

    def forward(self, change):
        return conv1d_delta(change, self.mod.weight, self.mod.dilation[0], self.mod.groups)


def _conv_macs(weight_shape) -> int:
    """Multiply-adds per output position, all channels: the weight's size (``C_out * C_in / groups * k``)."""
    return math.prod(int(s) for s in weight_shape)


def _conv_nd(ctx: RuleContext, mod) -> Decision:
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x:
        return stop("convolution weights depend on the sequence")
    nsp = len(mod.kernel_size)
    lax = ctx.laxis(x)
    sp = lax - 2                                  # spatial dim that is the length axis
    if not 0 <= sp < nsp:
        return stop(f"the length axis {lax} is not a spatial axis of this convolution")
    if mod.padding_mode != "zeros":
        return stop(f"padding_mode={mod.padding_mode!r}")
    k, d, s = mod.kernel_size[sp], mod.dilation[sp], mod.stride[sp]
    for o in range(nsp):
        if o != sp and not (mod.kernel_size[o] == 1 and _pad_left(mod.padding, 1, 1, o) == 0):
            return stop(f"kernel {mod.kernel_size} also slides along a non-length axis")
    delta = None
    if isinstance(mod, nn.Conv1d):
        new = ValidConv1d(mod)
        delta = delta_module(DeltaConv1d(mod))
    else:
        new = copy.copy(mod)
        new.padding = (0,) * nsp
        new._reversed_padding_repeated_twice = [0, 0] * nsp
    window = Window(d * (k - 1) + 1, s, _pad_left(mod.padding, k, d, sp), 0.0)
    return sliding(ctx, x, window, emit_module(new), delta=delta, macs=_conv_macs(mod.weight.shape),
                   dilation=d)


@register(*module_types(nn.Conv1d, nn.Conv2d))
def conv_module(ctx: RuleContext) -> Decision:
    return _conv_nd(ctx, ctx.module())


@register(*module_types(nn.ConvTranspose1d))
def conv_transpose_module(ctx: RuleContext) -> Decision:
    mod = ctx.module()
    x = ctx.the_window_input()
    if x is None or ctx.laxis(x) != 2:
        return stop("transposed convolution input is not (N, C, L)")
    k, d, s, p = mod.kernel_size[0], mod.dilation[0], mod.stride[0], mod.padding[0]
    if s != 1 or mod.output_padding[0] != 0 or mod.padding_mode != "zeros":
        return stop(f"transposed convolution with stride {s} / output_padding {mod.output_padding}")
    # out[j] = sum_t in[j + p - t*d] w[t]: reads in[j - ((k-1)d - p) ... j + p]
    window = Window(d * (k - 1) + 1, 1, d * (k - 1) - p, 0.0)
    return sliding(ctx, x, window, emit_module(TransposedAsConv(mod)), macs=_conv_macs(mod.weight.shape))


class TransposedAsConv(nn.Module):
    """A stride-1 ``ConvTranspose1d`` on a gathered window, as the equivalent padding-free ``conv1d`` with the
    kernel flipped (much faster on CPU than a transposed convolution that crops its own output)."""

    def __init__(self, mod: nn.ConvTranspose1d):
        super().__init__()
        self.mod = mod
        self.dilation, self.groups = mod.dilation[0], mod.groups

    def forward(self, x):
        w = self.mod.weight                                   # (in, out/groups, k)
        g = self.groups
        w = w.view(g, w.shape[0] // g, *w.shape[1:]).transpose(1, 2).reshape(-1, w.shape[0] // g, w.shape[2])
        return conv1d_valid(x, w.flip(-1), self.mod.bias, self.dilation, g)


class ValidConv1d(nn.Module):
    """A ``Conv1d`` run padding-free on a gathered window (through :func:`conv1d_valid`)."""

    def __init__(self, mod: nn.Conv1d):
        super().__init__()
        self.mod = mod

    def forward(self, x):
        m = self.mod
        return conv1d_valid(x, m.weight, m.bias, m.dilation[0], m.groups, m.stride[0])


def conv1d_valid(x, weight, bias, dilation: int = 1, groups: int = 1, stride: int = 1):
    """Padding-free ``conv1d``.  Convolutions of many input channels to few outputs with long kernels (profile
    heads, e.g. 64 -> 1 x 25) run slowly as such on CPU (oneDNN: 4-8 GMAC/s); there, one matrix product to
    ``C_out * k`` rows, ``z[t] = W[:, :, t] @ x``, and a sum over ``t`` of the diagonal view ``z[t, j + t d]``
    (one strided reduction) do the same multiply-adds at matrix-multiply speed (measured 38 -> 105 GMAC/s at
    2 threads and 38 -> 51 at 1 thread against a 1x1 convolution and ``k`` shifted adds).  Small convolutions
    stay ``F.conv1d``, the op naive ISM runs (the same rounding), as does everything under ``torch.compile``
    (dynamo cannot trace ``as_strided`` with symbolic sizes: a graph break per call)."""
    c_out, c_in, k = weight.shape
    if (groups != 1 or stride != 1 or c_out > 8 or k < 5 or c_in < 16 or x.device.type != "cpu" or x.dim() != 3
            or x.shape[-1] <= dilation * (k - 1) or torch.compiler.is_compiling()):
        return F.conv1d(x, weight, bias, stride=stride, dilation=dilation, groups=groups)
    n, _, w_in = x.shape
    w_out = w_in - dilation * (k - 1)
    z = torch.matmul(weight.permute(0, 2, 1).reshape(c_out * k, c_in), x)           # (B, C_out*k, W_in)
    diag = z.as_strided((n, c_out, k, w_out), (c_out * k * w_in, k * w_in, w_in + dilation, 1), z.storage_offset())
    y = diag.sum(2)
    return y if bias is None else y + bias[:, None]


@register(*functions("conv1d", modules=(F,)))
def conv1d_function(ctx: RuleContext) -> Decision:
    x = ctx.the_window_input()
    if x is None or ctx.node.args[0] is not x or ctx.laxis(x) != 2:
        return stop("conv1d weights depend on the sequence or input is not (N, C, L)")
    w = ctx.shape(ctx.arg(1, "weight"))
    k = w[-1]
    stride, padding, dilation = (ctx.arg(i, n, dflt) for i, n, dflt in
                                 ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
    one = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731
    stride, dilation = one(stride), one(dilation)
    window = Window(dilation * (k - 1) + 1, stride, _pad_left(padding, k, dilation), 0.0)

    groups = ctx.arg(6, "groups", 1)

    def emit(builder, node, args, kwargs):
        args = list(args)
        if len(args) > 4:
            args[4] = 0
        kw = dict(kwargs)
        if "padding" in kw or len(args) <= 4:
            kw["padding"] = 0
        return builder.graph.call_function(F.conv1d, tuple(args), kw)

    def delta(builder, node, args, kwargs, change):
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return builder.graph.call_function(conv1d_delta, (change, weight, dilation, groups))
    wnode = ctx.arg(1, "weight")
    weight_is_const = isinstance(wnode, fx.Node) and ctx.infos[wnode].state == State.CONST
    return sliding(ctx, x, window, emit, delta=delta if weight_is_const else None,
                   macs=_conv_macs(w), dilation=dilation)


# ---------------------------------------------------------------- multiply-adds (per output element)
@counts_macs(*module_types(nn.Conv1d, nn.Conv2d))
@per_output_element
def conv_module_macs(ctx: RuleContext) -> int:
    m = ctx.module()
    return m.in_channels // m.groups * math.prod(m.kernel_size)


@counts_macs(*module_types(nn.ConvTranspose1d))
@per_output_element
def conv_transpose_module_macs(ctx: RuleContext) -> int:
    m = ctx.module()
    return m.in_channels // m.groups * m.kernel_size[0] // m.stride[0]


@counts_macs(*functions("conv1d", "conv2d", modules=(F,)))
@per_output_element
def conv_function_macs(ctx: RuleContext) -> int:
    return math.prod(ctx.shape(ctx.arg(1, "weight"))[1:])


# affine in the sequence also where they run in full (after a stop): pairs' changes add through them
mark_linear(*module_types(nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d))
mark_linear(*functions("conv1d", modules=(F,)), when=varying_first)
