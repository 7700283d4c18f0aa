"""The kernels registered as PyTorch custom ops (``torch.ops.fastism.*``).

Registered ops are opaque to ``torch.compile`` (no graph breaks around them, shapes from the fake
implementations), run on any device (plain torch inside), and keep the edit graph printable.
"""
from __future__ import annotations

import torch

from . import gather as _k


@torch.library.custom_op("fastism::gather_window", mutates_args=())
def gather_window(src_rows: torch.Tensor, new: torch.Tensor | None, src_idx: torch.Tensor,
                  dst_idx: torch.Tensor | None, new_idx: torch.Tensor | None, batch: int, laxis: int,
                  feat_shape: list[int], new_laxis: int) -> torch.Tensor:
    return _k.gather_window(src_rows, new, src_idx, dst_idx, new_idx, batch, laxis, tuple(feat_shape),
                            new_laxis).contiguous()


@gather_window.register_fake
def _(src_rows, new, src_idx, dst_idx, new_idx, batch, laxis, feat_shape, new_laxis):
    width = (src_idx.shape[0] - 1) // batch
    shape = [batch, width, *feat_shape]
    out = src_rows.new_empty(shape)
    return out.movedim(1, laxis).contiguous()


@torch.library.custom_op("fastism::inc_linear", mutates_args=())
def inc_linear(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, weight: torch.Tensor,
               starts: torch.Tensor, in_shape: list[int], laxis: int) -> torch.Tensor:
    return _k.inc_linear(new, ref_window, ref_out, weight, starts, tuple(in_shape), laxis)


@inc_linear.register_fake
def _(new, ref_window, ref_out, weight, starts, in_shape, laxis):
    return torch.empty_like(ref_out)
