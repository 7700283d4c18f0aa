"""Gather-and-slice-assign: the one data-movement kernel of the fast path.

A windowed op needs, for each edit ``b``, positions ``[r_b, r_b + W)`` of an input: the reference values
(from a cache of the reference pass, padded as the consuming op pads, laid out ``(N, F, L_padded)`` with the
length axis last) with the positions that the edit recomputed written over them.  Materialising a full tensor
before a stop point is the same with ``r_b = 0, W = L``.

The gather reads whole runs of ``W`` positions per (edit, feature) with one ``index_select`` over an overlapping
strided view of the cache (:func:`window_rows`), so the result is already laid out for the next convolution (no
transposing copy); where the recomputed values cover a wide middle of the window, only the halo columns around
it are read from the cache (:func:`halo_rows`).  The slice-assign groups edits by where their recomputed window
lands (one offset for all interior positions, a few more at the edges) and copies each group with one slice
copy or ``index_copy_`` along the batch axis; a residual sum right before a gather is written straight into the
gathered window (:func:`gather_window_add`; with a global mean as its other reader, summed there:
:func:`gather_window_add_mean`).  Global mean/sum pooling reads the reference window's sum from
running sums (:func:`inc_mean_prefix`) instead of gathering the window.
"""
from __future__ import annotations

import torch

from .dense import linear


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
    if new is None:
        out = window_rows(cache, seq_idx, start, width)                      # (B, F, width), contiguous
    else:
        nv = _as_3d(new.movedim(new_laxis, -1))                             # (B, F, Win)
        runs = _placements(shift, nv.shape[-1], width)
        if runs is None:
            out = window_rows(cache, seq_idx, start, width)
            _assign_by_shift(out, nv, shift)
        else:
            out = _placed(cache, seq_idx, start, width, runs, lambda r, s, dst: dst.copy_(nv[r, :, s]))
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def gather_window_delta(cache: torch.Tensor, change: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor,
                        shift: torch.Tensor, width: int, laxis: int, feat_shape: tuple,
                        new_laxis: int) -> torch.Tensor:
    """Delta propagation's write: for each edit b the consumer's own reference window,
    ``cache[seq_idx[b], :, start[b] : start[b] + width]``, with ``change[b]`` (its change, propagated from its
    input's change) *added* at offset ``shift[b]`` (clipped to the window).  Returns ``(B, *feat_shape)`` with
    the window along ``laxis``."""
    out = window_rows(cache, seq_idx, start, width)                          # (B, F, width), contiguous
    nv = _as_3d(change.movedim(new_laxis, -1))                              # (B, F, Win)
    runs = _placements(shift, nv.shape[-1], width)
    if runs is None:
        _add_by_shift(out, nv, shift)
    else:
        _write_runs(out, runs, lambda r, s, dst: dst.add_(nv[r, :, s]))
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def _add_by_shift(out: torch.Tensor, new: torch.Tensor, shift: torch.Tensor) -> None:
    """``out[b, :, shift[b] + j] += new[b, :, j]`` wherever that lands inside ``out``, for many short runs of
    shifts: one ``index_add_`` per distinct shift."""
    width, win = out.shape[-1], new.shape[-1]
    shifts, inverse = torch.unique(shift, return_inverse=True)
    for k, t in enumerate(shifts.tolist()):
        a, b = max(t, 0), min(t + win, width)
        if a < b:
            sel = (inverse == k).nonzero().flatten()
            out[:, :, a:b].index_add_(0, sel, new[:, :, a - t:b - t].index_select(0, sel))


def gather_window_add(cache: torch.Tensor, a: torch.Tensor, b: torch.Tensor, seq_idx: torch.Tensor,
                      start: torch.Tensor, shift: torch.Tensor, width: int, laxis: int, feat_shape: tuple,
                      new_laxis: int) -> torch.Tensor:
    """:func:`gather_window` with ``new = a + b`` (a residual add right before the gather), the sum written
    straight into the gathered window: one pass over the recomputed positions instead of three (add, then
    copy), no intermediate.  Applies when ``a`` and ``b`` are ``(B, F, W)`` of one dtype and the edits land in
    few runs of equal offsets (:func:`_placements`); otherwise the sum is formed first, as the graph said."""
    if _adds_into_window(cache, a, b, laxis, new_laxis, feat_shape):
        runs = _placements(shift, a.shape[-1], width)
        if runs is not None:
            return _placed(cache, seq_idx, start, width, runs,
                           lambda r, s, dst: torch.add(a[r, :, s], b[r, :, s], out=dst))
    return gather_window(cache, a + b, seq_idx, start, shift, width, laxis, feat_shape, new_laxis)


def _adds_into_window(cache: torch.Tensor, a: torch.Tensor, b: torch.Tensor, laxis: int, new_laxis: int,
                      feat_shape) -> bool:
    """Whether ``a + b`` can be written straight into a window of ``cache``: all ``(B, F, W)`` alike."""
    return (a.dim() == 3 and a.shape == b.shape and laxis == new_laxis == 2 and a.dtype == b.dtype == cache.dtype
            and tuple(feat_shape) == (cache.shape[1],))


def _placements(shift: torch.Tensor, win: int, width: int) -> list[tuple[int, int, int, int, int]] | None:
    """The batch's runs of rows that share a shift, ``(r0, r1, t, lo, hi)``: rows ``[r0, r1)`` have shift ``t``,
    so their ``win`` recomputed positions land on columns ``[lo, hi)`` of the ``width``-wide window (empty
    when they miss it).  Interior positions share one shift; near an edge it moves with the position (runs of
    3 rows: the alternative bases of one position).  None when the runs are too many for slice copies
    (:func:`assign_shifted`).  Reads the shifts on the host: eager kernels only."""
    runs, counts = torch.unique_consecutive(shift, return_counts=True)
    if len(runs) > max(RUNS_AS_SLICES, shift.numel() // 2):
        return None
    out, r0 = [], 0
    for t, c in zip(runs.tolist(), counts.tolist()):
        out.append((r0, r0 + c, t, max(t, 0), min(t + win, width)))
        r0 += c
    return out


def _placed(cache: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor, width: int, runs: list,
            write) -> torch.Tensor:
    """The gathered window (:func:`halo_rows`) with each run's recomputed columns filled (:func:`_write_runs`)."""
    out = halo_rows(cache, seq_idx, start, width, runs)
    _write_runs(out, runs, write)
    return out


def _write_runs(out: torch.Tensor, runs: list, write) -> None:
    """``write(rows, source columns, destination view)`` for each run of :func:`_placements` that lands in
    ``out``."""
    for r0, r1, t, lo, hi in runs:
        if lo < hi:
            write(slice(r0, r1), slice(lo - t, hi - t), out[r0:r1, :, lo:hi])


def halo_rows(cache: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor, width: int, runs: list) -> torch.Tensor:
    """:func:`window_rows` where each run's columns ``[lo, hi)`` (:func:`_placements`) will be overwritten: only
    the halo columns ``[0, lo)`` and ``[hi, width)`` are read from the cache, each with one ``index_select`` of
    runs of values (one per edit and feature) written straight into the window (the recomputed middle of a
    wide window is not copied twice: BPNet's last dilated layers).  Where the middles are narrower than
    ``HALO_MIN`` or the runs of rows hold less than ``HALO_RUN_BYTES`` of window each, the whole window (fewer,
    longer copies)."""
    n, f, lp = cache.shape
    per_run = len(seq_idx) * f * width * cache.element_size() / len(runs)
    if (not _has_row_view(cache, width) or all(hi - lo < HALO_MIN for *_, lo, hi in runs)
            or (len(runs) > 1 and per_run < HALO_RUN_BYTES)):
        return window_rows(cache, seq_idx, start, width)
    out = cache.new_empty((len(seq_idx), f, width))
    rows = out.view(-1, width)                                       # one row per (edit, feature)
    base = ((seq_idx * (f * lp) + start)[:, None] + torch.arange(f, device=cache.device) * lp).reshape(-1)
    for r0, r1, _, lo, hi in runs:
        cut = ((0, lo), (hi, width)) if hi - lo >= HALO_MIN else ((0, width),)
        for a, b in cut:
            if a < b:
                torch.index_select(_overlapping_runs(cache, b - a), 0, base[r0 * f:r1 * f] + a,
                                   out=rows[r0 * f:r1 * f, a:b])
    return out


HALO_MIN = 16           # recomputed middles at least this wide: gather only the halo columns
HALO_RUN_BYTES = 64 * 2 ** 10    # with several runs of shifts, each at least this much window: halos per run


def window_rows(cache: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor, width: int) -> torch.Tensor:
    """``cache[seq_idx[b], :, start[b] : start[b] + width]`` for each b, as one contiguous ``(B, F, width)``.

    One ``index_select`` over an overlapping strided view of the contiguous cache (row ``o`` = the window
    starting at flat offset ``o``): a copy of whole runs of ``width`` positions, measured 3-4x faster on the
    CPU than advanced indexing of ``cache.unfold(2, width, 1)`` (an element-wise gather).
    """
    if not _has_row_view(cache, width):
        return cache.unfold(2, width, 1)[seq_idx, :, start]
    n, f, lp = cache.shape
    return _overlapping_rows(cache, width).index_select(0, seq_idx * (f * lp) + start)


def _has_row_view(cache: torch.Tensor, width: int) -> bool:
    """Whether the overlapping views apply: a contiguous cache with features, windows no longer than it."""
    return cache.is_contiguous() and cache.shape[1] > 0 and width <= cache.shape[2]


def _overlapping_runs(cache: torch.Tensor, width: int) -> torch.Tensor:
    """A view of the contiguous cache whose row ``o`` is the run of ``width`` values from flat offset ``o``: an
    ``index_select`` of runs into the strided columns of a window copies each run as one block (measured
    1.6-1.7x faster, 1 and 2 threads, than selecting ``(F, width)`` blocks of :func:`_overlapping_rows` into
    them)."""
    return cache.as_strided((cache.numel() - width + 1, width), (1, 1), cache.storage_offset())


def _overlapping_rows(cache: torch.Tensor, width: int) -> torch.Tensor:
    """A view of the contiguous ``(N, F, Lp)`` cache whose row ``o`` is the ``(F, width)`` window starting at flat
    offset ``o`` (row ``s * F * Lp + r``: sequence ``s``, positions ``[r, r + width)``)."""
    n, f, lp = cache.shape
    return cache.as_strided((n * f * lp - (f - 1) * lp - width + 1, f, width), (1, lp, 1), cache.storage_offset())


def assign_shifted(out: torch.Tensor, new: torch.Tensor, shift: torch.Tensor) -> None:
    """``out[b, :, shift[b] + j] = new[b, :, j]`` wherever that lands inside ``out`` (in place).

    One shift for the batch (interior positions): one slice copy.  Several (edges): edits that share a shift
    come in contiguous runs of rows (the executor orders a batch by position; near an edge the shift moves
    with the position, after a pooling layer it alternates, but the 3 alternative bases of a position share
    it), and each run is one slice copy, no index ops: measured faster than grouping by shift down to runs of
    ~3 rows.  With runs of fewer than 2 rows on average, one ``index_copy_`` per distinct shift instead.
    """
    runs = _placements(shift, new.shape[-1], out.shape[-1])
    if runs is None:
        _assign_by_shift(out, new, shift)
    else:
        _write_runs(out, runs, lambda r, s, dst: dst.copy_(new[r, :, s]))


def _assign_by_shift(out: torch.Tensor, new: torch.Tensor, shift: torch.Tensor) -> None:
    """:func:`assign_shifted` for many short runs: one ``index_copy_`` per distinct shift."""
    width, win = out.shape[-1], new.shape[-1]
    shifts, inverse = torch.unique(shift, return_inverse=True)
    for k, t in enumerate(shifts.tolist()):
        a, b = max(t, 0), min(t + win, width)
        if a >= b:
            continue
        sel = (inverse == k).nonzero().flatten()
        out[:, :, a:b].index_copy_(0, sel, new[:, :, a - t:b - t].index_select(0, sel))


RUNS_AS_SLICES = 32     # this many runs of equal shifts or fewer: slice copies whatever their length


def narrow_window(x: torch.Tensor, laxis: int, offset: int, shrink: int) -> torch.Tensor:
    """The part of a gathered window that a narrower reader of the same source needs (a view)."""
    return x.narrow(laxis, offset, x.shape[laxis] - shrink)


def to_prefix_sums(x: torch.Tensor, laxis: int) -> torch.Tensor:
    """``(N, ..., L, ...)`` -> ``(N, F, L + 1)`` float64 running sums along the length axis (0 first), so the
    sum of any window is one subtraction: ``P[..., s + w] - P[..., s]``."""
    x = _as_3d(x.movedim(laxis, -1)).double()
    return torch.nn.functional.pad(x.cumsum(-1), (1, 0))


def inc_mean_prefix(new: torch.Tensor, prefix: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor,
                    ref_out: torch.Tensor, laxis: int, scale: float) -> torch.Tensor:
    """Mean/sum over the length axis updated from the changed window only, the reference window's sum read
    from running sums (``prefix``, :func:`to_prefix_sums`) instead of gathered: O(F) per edit, not O(F W).
    Sync-free (two indexed reads), so the CPU, GPU and compiled forms are this one."""
    nv = _as_3d(new.movedim(laxis, -1))                                    # (B, F, W)
    return _mean_update(_sum_last(nv), nv.shape[-1], prefix, seq_idx, start, ref_out, scale)


def _sum_last(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis, in float32 at least."""
    return x.sum(-1) if x.dtype in (torch.float32, torch.float64) else x.sum(-1, dtype=torch.float32)


def _mean_update(total: torch.Tensor, width: int, prefix: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor,
                 ref_out: torch.Tensor, scale: float) -> torch.Tensor:
    """``ref_out + scale * (total - the reference's sum over each edit's window)``; ``total`` is ``(B, F)``."""
    s, f = seq_idx[:, None], torch.arange(prefix.shape[1], device=prefix.device)
    ref_sum = prefix[s, f, (start + width)[:, None]] - prefix[s, f, start[:, None]]          # (B, F)
    delta = ((total.double() - ref_sum) * scale).to(ref_out.dtype)
    return ref_out + delta.reshape(ref_out.shape)


def gather_window_add_mean(cache: torch.Tensor, a: torch.Tensor, b: torch.Tensor, seq_idx: torch.Tensor,
                           start: torch.Tensor, shift: torch.Tensor, width: int, laxis: int, feat_shape: tuple,
                           new_laxis: int, prefix: torch.Tensor, m_seq: torch.Tensor, m_start: torch.Tensor,
                           ref_out: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual sum ``a + b`` read by a gather and by a global mean (BPNet's last layer feeds its profile
    and counts heads): :func:`gather_window_add`, and :func:`inc_mean_prefix` summing the values it wrote
    into the window (one pass over the sum instead of three: add, copy into the window, sum), also per run of
    shifts near an edge.  Where some edit's sum does not land whole inside the window, or the shifts are too
    many for runs, the two readers as the graph had them.  Returns ``(window, mean)``."""
    win = a.shape[-1]
    if _adds_into_window(cache, a, b, laxis, new_laxis, feat_shape):
        runs = _placements(shift, win, width)
        if runs is not None and all((lo, hi) == (t, t + win) for _, _, t, lo, hi in runs):   # every sum inside
            out = _placed(cache, seq_idx, start, width, runs, lambda r, s, dst: torch.add(a[r], b[r], out=dst))
            total = torch.cat([_sum_last(out[r0:r1, :, lo:hi]) for r0, r1, _, lo, hi in runs])
            return out, _mean_update(total, win, prefix, m_seq, m_start, ref_out, scale)
    new = a + b
    return (gather_window(cache, new, seq_idx, start, shift, width, laxis, feat_shape, new_laxis),
            inc_mean_prefix(new, prefix, m_seq, m_start, ref_out, new_laxis, scale))


def inc_linear(new: torch.Tensor, ref_window: torch.Tensor, ref_out: torch.Tensor, weight: torch.Tensor,
               starts: torch.Tensor, in_shape: tuple, laxis: int) -> torch.Tensor:
    """``Linear(flatten(x))`` updated from the changed window: ``y_ref + W[:, window] @ delta``.

    ``in_shape`` is the per-item shape of ``x`` (without batch), ``laxis`` its length axis (counted with the
    batch, as in ``new``), ``starts`` the window start of each edit.  Edits that share a start form one
    matrix product (:func:`linear`) with that start's columns of the weight.  The executor orders a batch by
    position, so the starts do not decrease and each start's edits are one contiguous run of rows: the runs
    are read with ``unique_consecutive`` and written as slices, no index ops.  Unordered starts would still be
    right (a start's edits in several runs, each its own product); they are sorted first (stable, the rows put
    back after) so that each start is one product.
    """
    width = new.shape[laxis]
    n_out = weight.shape[0]
    delta = (new - ref_window).flatten(1)                                  # (B, F*width) in x's order
    w = weight.view(n_out, *in_shape)                                      # (out, ..., L, ...)
    ref_rows, perm = ref_out, None
    if starts.numel() > 1 and bool((starts[1:] < starts[:-1]).any()):
        perm = torch.argsort(starts, stable=True)
        starts, delta, ref_rows = starts[perm], delta[perm], ref_out[perm]
    values, counts = torch.unique_consecutive(starts, return_counts=True)
    out = torch.empty_like(ref_rows)
    r0 = 0
    for s, c in zip(values.tolist(), counts.tolist()):
        ws = w.narrow(laxis, s, width).reshape(n_out, -1)                  # (out, F*width), contiguous
        torch.add(ref_rows[r0:r0 + c], linear(delta[r0:r0 + c], ws), out=out[r0:r0 + c])
        r0 += c
    if perm is not None:
        out = torch.empty_like(out).index_copy_(0, perm, out)
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
    out = _window_static(cache, seq_idx, start, width)
    if new is not None:
        valid, src = _shifted_static(_as_3d(new.movedim(new_laxis, -1)), shift, width)
        out = torch.where(valid, src, out)
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def gather_window_delta_static(cache: torch.Tensor, change: torch.Tensor, seq_idx: torch.Tensor,
                               start: torch.Tensor, shift: torch.Tensor, width: int, laxis: int,
                               feat_shape: tuple, new_laxis: int) -> torch.Tensor:
    """:func:`gather_window_delta` without host synchronisation (a masked add)."""
    valid, src = _shifted_static(_as_3d(change.movedim(new_laxis, -1)), shift, width)
    out = _window_static(cache, seq_idx, start, width) + torch.where(valid, src, 0.0)
    out = out.view(out.shape[0], *feat_shape, width)
    return out.movedim(-1, laxis)


def _window_static(cache: torch.Tensor, seq_idx: torch.Tensor, start: torch.Tensor, width: int) -> torch.Tensor:
    """``cache[seq_idx[b], :, start[b] : start[b] + width]`` for each b: ``(B, F, width)``, one indexed read."""
    p = torch.arange(width, device=cache.device)
    f = torch.arange(cache.shape[1], device=cache.device)
    return cache[seq_idx[:, None, None], f[:, None], (start[:, None] + p)[:, None, :]]


def _shifted_static(nv: torch.Tensor, shift: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, src)``, ``(B, 1, width)`` and ``(B, F, width)``: ``src[b, :, p] = nv[b, :, p - shift[b]]`` where
    ``valid`` (that index is inside ``nv``)."""
    win = nv.shape[-1]
    j = torch.arange(width, device=nv.device) - shift[:, None]                # (B, width): index into nv
    valid = ((j >= 0) & (j < win))[:, None, :]
    return valid, nv.gather(2, j.clamp(0, win - 1)[:, None, :].expand(-1, nv.shape[1], -1))


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
