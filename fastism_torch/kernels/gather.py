"""Gather-and-slice-assign: the one data-movement kernel of the fast path.

A windowed op needs, for each edit ``b``, positions ``[r_b, r_b + W)`` of an input: the reference values
(from a cache of the reference pass, padded as the consuming op pads, laid out ``(N, F, L_padded)`` with the
length axis last) with the positions that the edit recomputed written over them.  Materialising a full tensor
before a stop point is the same with ``r_b = 0, W = L``.

The gather reads whole runs of ``W`` positions per (edit, feature) from an ``unfold`` view, so the result is
already laid out for the next convolution (no transposing copy).  The slice-assign groups edits by where their
recomputed window lands (one offset for all interior positions, a few more at the edges) and copies each group
with one ``index_copy_`` along the batch axis.
"""
from __future__ import annotations

import torch


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """``(N, ..., L)`` -> ``(N, F, L)`` (also when a dim is 0, where ``reshape(N, -1, L)`` is ambiguous)."""
    features = 1
    for d in x.shape[1:-1]:           # (not math.prod: torch.compile cannot trace it on symbolic sizes)
        features = features * d
    return x.reshape(x.shape[0], features, x.shape[-1])


def to_cache(x: torch.Tensor, laxis: int, pad_left: int = 0, pad_right: int = 0, value: float = 0.0):
    """``(N, ..., L, ...)`` -> ``(N, F, pad_left + L + pad_right)``, contiguous."""
    x = _as_3d(x.movedim(laxis, -1))
    if pad_left or pad_right:
        x = torch.nn.functional.pad(x, (pad_left, pad_right), value=value)
    return x.contiguous()


def gather_window(cache: torch.Tensor, new: torch.Tensor | None, seq_idx: torch.Tensor, start: torch.Tensor,
                  shift: torch.Tensor | None, width: int, laxis: int, feat_shape: tuple,
                  new_laxis: int) -> torch.Tensor:
    """For each edit b: ``cache[seq_idx[b], :, start[b] : start[b] + width]``, with ``new[b]`` (the edit's
    recomputed window, laid out like the source) written at offset ``shift[b]`` (clipped to the window).

    Returns ``(B, *feat_shape)`` with the window inserted along ``laxis``.
    """
    out = cache.unfold(2, width, 1)[seq_idx, :, start]                       # (B, F, width), contiguous
    if new is not None:
        nv = _as_3d(new.movedim(new_laxis, -1))                             # (B, F, Win)
        assign_shifted(out, nv, shift)
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def assign_shifted(out: torch.Tensor, new: torch.Tensor, shift: torch.Tensor) -> None:
    """``out[b, :, shift[b] + j] = new[b, :, j]`` wherever that lands inside ``out`` (in place)."""
    width, win = out.shape[-1], new.shape[-1]
    shifts, inverse = torch.unique(shift, return_inverse=True)
    for k, t in enumerate(shifts.tolist()):
        a, b = max(t, 0), min(t + win, width)
        if a >= b:
            continue
        if len(shifts) == 1:
            out[:, :, a:b] = new[:, :, a - t:b - t]
        else:
            sel = (inverse == k).nonzero().flatten()
            out[:, :, a:b].index_copy_(0, sel, new[:, :, a - t:b - t].index_select(0, sel))


def narrow_window(x: torch.Tensor, laxis: int, offset: int, shrink: int) -> torch.Tensor:
    """The part of a gathered window that a narrower reader of the same source needs (a view)."""
    return x.narrow(laxis, offset, x.shape[laxis] - shrink)


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


# ---------------------------------------------------------------------------------------------------------------
# Static-shape, sync-free forms (CUDA, torch.compile, CUDA graphs).
#
# The kernels above group edits by value on the host side of the tensor (``torch.unique(...).tolist()``,
# ``nonzero``): cheap on the CPU, a device-to-host synchronisation per call on a GPU, and not capturable in a
# CUDA graph.  The forms below express the same results as fixed-shape tensor programs whose every launch
# depends only on shapes, never on values: one masked select per gather (one fused kernel under inductor) and
# one matrix product per incremental dense layer.  They are plain torch functions, so ``torch.compile`` traces
# and fuses them.

def gather_window_static(cache: torch.Tensor, new: torch.Tensor | None, seq_idx: torch.Tensor,
                         start: torch.Tensor, shift: torch.Tensor | None, width: int, laxis: int,
                         feat_shape: tuple, new_laxis: int) -> torch.Tensor:
    """:func:`gather_window` without host synchronisation: the recomputed window is placed by a masked
    select (``out[b, :, p] = new[b, :, p - shift[b]]`` where that index is inside ``new``)."""
    p = torch.arange(width, device=cache.device)
    f = torch.arange(cache.shape[1], device=cache.device)
    out = cache[seq_idx[:, None, None], f[:, None], (start[:, None] + p)[:, None, :]]      # (B, F, width)
    if new is not None:
        nv = _as_3d(new.movedim(new_laxis, -1))                             # (B, F, Win)
        win = nv.shape[-1]
        j = p - shift[:, None]                                              # (B, width): index into new
        valid = ((j >= 0) & (j < win))[:, None, :]
        src = nv.gather(2, j.clamp(0, win - 1)[:, None, :].expand(-1, nv.shape[1], -1))
        out = torch.where(valid, src, out)
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def inc_linear_static(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, weight: torch.Tensor,
                      starts: torch.Tensor, in_shape: tuple, laxis: int, span: int) -> torch.Tensor:
    """:func:`inc_linear` without host synchronisation, for edits whose window starts lie within ``span``
    positions of each other (the executor's group): the changes are placed in one ``span``-wide frame and
    multiplied by the matching ``span`` columns of the weight, ``y_ref + W[:, base:base+span] @ frame``."""
    width = new.shape[laxis]
    B, n_out = new.shape[0], weight.shape[0]
    delta = _as_3d((new - ref_window).movedim(laxis, -1))                  # (B, F, width)
    w = _as_3d(weight.view(n_out, *in_shape).movedim(laxis, -1))            # (out, F, L); laxis without batch
    length = w.shape[-1]
    base = starts.min().clamp(max=length - span)
    offset = (starts - base)[:, None, None] + torch.arange(width, device=new.device)
    frame = delta.new_zeros(B, delta.shape[1], span).scatter_(2, offset.expand(-1, delta.shape[1], -1), delta)
    cols = w.index_select(2, base + torch.arange(span, device=new.device))   # (out, F, span)
    return ref_out + frame.flatten(1) @ cols.flatten(1).t()
