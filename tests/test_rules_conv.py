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


@pytest.mark.parametrize("c_out,k,dil", [(1, 25, 1), (2, 7, 3), (16, 5, 1)])
def test_conv1d_valid_shift_add_path(c_out, k, dil):
    from fastism_torch.rules.conv import conv1d_valid
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 8, 60), torch.randn(c_out, 8, k), torch.randn(c_out)
    torch.testing.assert_close(conv1d_valid(x, w, b, dil), F.conv1d(x, w, b, dilation=dil), rtol=1e-5, atol=1e-5)
