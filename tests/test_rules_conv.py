"""rules/conv.py: the padding-free forms the conv rule emits (transposed conv as a conv, shift-add conv)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_as_conv(groups):
    from fastism_torch.rules.conv import TransposedAsConv
    torch.manual_seed(0)
    t = nn.ConvTranspose1d(4, 6, 5, dilation=2, groups=groups)
    x = torch.randn(3, 4, 20)
    full = F.conv_transpose1d(x, t.weight, t.bias, dilation=2, groups=groups)
    k = 2 * 4                                      # (kernel-1)*dilation: outputs covered by the whole window
    torch.testing.assert_close(TransposedAsConv(t)(x), full[:, :, k:-k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,c_out,k,dil", [(32, 1, 25, 1), (16, 2, 7, 3), (64, 3, 75, 1), (32, 16, 5, 1),
                                              (16, 1, 5, 14), (4, 1, 25, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_conv1d_valid_matches_conv1d(c_in, c_out, k, dil, bias, strided):
    """The matrix product + diagonal sum form (few outputs, long kernels) and the plain one agree with
    ``F.conv1d`` in float64 (to 1e-6 of the output scale), also on a non-contiguous window and one just long
    enough for one output."""
    from fastism_torch.rules.conv import conv1d_valid
    torch.manual_seed(0)
    x, w = torch.randn(3, c_in, 120), torch.randn(c_out, c_in, k)
    b = torch.randn(c_out) if bias else None
    if strided:
        x = x[:, :, 7:7 + dil * (k - 1) + 1]                  # a view, one output position
    want = F.conv1d(x.double(), w.double(), None if b is None else b.double(), dilation=dil)
    got = conv1d_valid(x, w, b, dil)
    assert got.shape == want.shape and got.dtype == x.dtype
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())


@pytest.mark.parametrize("c_in,c_out,k,dil,groups,width", [
    (4, 64, 25, 1, 1, 1),          # one changed column: the table of flipped kernel columns
    (64, 64, 3, 256, 1, 100),      # wide change, large dilation: shifted products
    (64, 32, 3, 2, 1, 64),         # the shifted products' smallest width
    (64, 64, 3, 16, 1, 30),        # narrow: the transposed convolution
    (12, 12, 5, 3, 3, 70),         # grouped: the transposed convolution
    (300, 200, 11, 1, 1, 7),
])
def test_conv1d_delta_is_the_change_of_the_convolution(c_in, c_out, k, dil, groups, width):
    """Every form of the delta (look-up, shifted products, transposed convolution) equals the change of a
    padding-free ``F.conv1d`` when ``width`` input columns change, in float64 to 1e-6 of the output scale."""
    from fastism_torch.rules.conv import conv1d_delta
    torch.manual_seed(1)
    span = dil * (k - 1)
    x = torch.randn(2, c_in, width + 2 * span, dtype=torch.float64)
    change = torch.zeros_like(x)
    change[:, :, span:span + width] = torch.randn(2, c_in, width, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, k, dtype=torch.float64)
    want = F.conv1d(x + change, w, dilation=dil, groups=groups) - F.conv1d(x, w, dilation=dil, groups=groups)
    got = conv1d_delta(change[:, :, span:span + width].float(), w.float(), dil, groups).double()
    assert got.shape == want.shape                 # the change reaches width + span outputs, from the first
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
