"""Gather-and-slice-assign: the one data-movement kernel of the fast path.

A windowed op needs, for each edit ``b``, the positions ``[r_b, r_b + W)`` of an input: the reference
values (read from a padded cache of the reference pass, laid out as rows = positions) with the positions the
edit recomputed written over them (``index_copy``).  Materialising a full tensor before a stop point is the
same with ``r_b = 0, W = L``.  Index tensors are built by the executor from the plan; the kernel itself is
plain torch (CPU and CUDA), with no Python loops, so ``torch.compile`` traces through it.
"""
from __future__ import annotations

import torch


def to_rows(x: torch.Tensor, laxis: int) -> torch.Tensor:
    """``(N, ..., L, ...)`` -> ``(N*L, F)``: one row per (item, position)."""
    x = x.movedim(laxis, 1)
    return x.reshape(x.shape[0] * x.shape[1], -1)


def rows_cache(ref: torch.Tensor, laxis: int, pad_left: int, pad_right: int, value: float) -> torch.Tensor:
    """Reference tensor padded along its length axis (as the consuming op pads) and laid out as rows."""
    x = ref.movedim(laxis, -1)
    if pad_left or pad_right:
        x = torch.nn.functional.pad(x, (pad_left, pad_right), value=value)
    x = x.movedim(-1, 1).contiguous()
    return x.reshape(x.shape[0] * x.shape[1], -1)


def gather_window(src_rows: torch.Tensor, new: torch.Tensor | None, src_idx: torch.Tensor,
                  dst_idx: torch.Tensor | None, new_idx: torch.Tensor | None, batch: int, laxis: int,
                  feat_shape: tuple, new_laxis: int) -> torch.Tensor:
    """Rows ``src_idx`` of the reference, with rows ``new_idx`` of ``new`` written at ``dst_idx``.

    ``src_idx`` has ``batch * width + 1`` entries: the last row is scratch space where the recomputed
    positions that fall outside a window are written (so every index tensor has a static shape).
    Returns ``(batch, ..., width, ...)`` with the window along ``laxis``.
    """
    out = src_rows.index_select(0, src_idx)
    if new is not None:
        out.index_copy_(0, dst_idx, to_rows(new, new_laxis).index_select(0, new_idx).to(out.dtype))
    width = (src_idx.shape[0] - 1) // batch
    return out[: batch * width].view(batch, width, *feat_shape).movedim(1, laxis)


def inc_mean(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, laxis: int,
             scale: float) -> torch.Tensor:
    """Mean/sum over the length axis updated from the changed window only."""
    delta = (new - ref_window).sum(laxis, keepdim=True) * scale
    return ref_out + delta.reshape(ref_out.shape)


def inc_linear(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, weight: torch.Tensor,
               starts: torch.Tensor, in_shape: tuple, laxis: int) -> torch.Tensor:
    """``Linear(flatten(x))`` updated from the changed window: ``y_ref + W[:, window] @ delta``.

    ``in_shape`` is the per-item shape of ``x`` (without batch), ``laxis`` its length axis, ``starts`` the
    window start of each edit.  Edits are grouped by start so each group is one matrix product.
    """
    width = new.shape[laxis]
    delta = (new - ref_window).flatten(1)                                  # (B, F*width) in x's order
    w = weight.view(weight.shape[0], *in_shape)                            # (out, ..., L, ...)
    out = ref_out.clone()
    for s in torch.unique(starts).tolist():
        sel = (starts == s).nonzero().flatten()
        ws = w.narrow(laxis, s, width).reshape(weight.shape[0], -1)        # laxis counted without batch
        out.index_add_(0, sel, delta.index_select(0, sel) @ ws.t())
    return out
