"""The kernels registered as PyTorch custom ops (``torch.ops.fastism.*``).

Registered ops are opaque to ``torch.compile`` (no graph breaks around them, shapes from the fake
implementations), run on any device (plain torch inside), and keep the edit graph printable.
"""
from __future__ import annotations

import torch

from . import gather as _k


def _window_like(cache, seq_idx, width, laxis, feat_shape):
    """The fake result of a gather: ``(B, *feat_shape)`` with a ``width``-wide window along ``laxis``."""
    return cache.new_empty([seq_idx.shape[0], *feat_shape, width]).movedim(-1, laxis)


@torch.library.custom_op("fastism::gather_window", mutates_args=())
def gather_window(cache: torch.Tensor, new: torch.Tensor | None, seq_idx: torch.Tensor, start: torch.Tensor,
                  shift: torch.Tensor | None, width: int, laxis: int, feat_shape: list[int],
                  new_laxis: int) -> torch.Tensor:
    return _k.gather_window(cache, new, seq_idx, start, shift, width, laxis, tuple(feat_shape), new_laxis)


@gather_window.register_fake
def _(cache, new, seq_idx, start, shift, width, laxis, feat_shape, new_laxis):
    return _window_like(cache, seq_idx, width, laxis, feat_shape)


@torch.library.custom_op("fastism::gather_window_delta", mutates_args=())
def gather_window_delta(cache: torch.Tensor, change: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor,
                        shift: torch.Tensor, width: int, laxis: int, feat_shape: list[int],
                        new_laxis: int) -> torch.Tensor:
    return _k.gather_window_delta(cache, change, seq_idx, start, shift, width, laxis, tuple(feat_shape), new_laxis)


@gather_window_delta.register_fake
def _(cache, change, seq_idx, start, shift, width, laxis, feat_shape, new_laxis):
    return _window_like(cache, seq_idx, width, laxis, feat_shape)


@torch.library.custom_op("fastism::gather_window_add", mutates_args=())
def gather_window_add(cache: torch.Tensor, a: torch.Tensor, b: torch.Tensor, seq_idx: torch.Tensor,
                      start: torch.Tensor, shift: torch.Tensor, width: int, laxis: int, feat_shape: list[int],
                      new_laxis: int) -> torch.Tensor:
    return _k.gather_window_add(cache, a, b, seq_idx, start, shift, width, laxis, tuple(feat_shape), new_laxis)


@gather_window_add.register_fake
def _(cache, a, b, seq_idx, start, shift, width, laxis, feat_shape, new_laxis):
    return _window_like(cache, seq_idx, width, laxis, feat_shape)


@torch.library.custom_op("fastism::gather_window_add_mean", mutates_args=())
def gather_window_add_mean(cache: torch.Tensor, a: torch.Tensor, b: torch.Tensor, seq_idx: torch.Tensor,
                           start: torch.Tensor, shift: torch.Tensor, width: int, laxis: int, feat_shape: list[int],
                           new_laxis: int, prefix: torch.Tensor, m_seq: torch.Tensor, m_start: torch.Tensor,
                           ref_out: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _k.gather_window_add_mean(cache, a, b, seq_idx, start, shift, width, laxis, tuple(feat_shape),
                                     new_laxis, prefix, m_seq, m_start, ref_out, scale)


@gather_window_add_mean.register_fake
def _(cache, a, b, seq_idx, start, shift, width, laxis, feat_shape, new_laxis, prefix, m_seq, m_start, ref_out,
      scale):
    return _window_like(cache, seq_idx, width, laxis, feat_shape), torch.empty_like(ref_out)


@torch.library.custom_op("fastism::inc_linear", mutates_args=())
def inc_linear(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, weight: torch.Tensor,
               starts: torch.Tensor, in_shape: list[int], laxis: int) -> torch.Tensor:
    return _k.inc_linear(new, ref_window, ref_out, weight, starts, tuple(in_shape), laxis)


@inc_linear.register_fake
def _(new, ref_window, ref_out, weight, starts, in_shape, laxis):
    return torch.empty_like(ref_out)
