"""Exact pairwise (double-mutant) ISM: :func:`pairwise`, :func:`epistasis`, :func:`diagonal`.

Every double mutant ``(i, a), (j, b)`` is computed as one *single* edit ``(j, b)`` of the mutant sequence
``x[i := a]``: each first mutation in the window becomes a new input sequence, and the engine's ordinary
single-edit ISM (:class:`~fastism_torch.FastISM`, or :class:`~fastism_torch.NaiveISM`) runs over batches of
those mutant sequences, restricted to the second window.  One double mutant therefore costs one fast single
edit, plus one reference pass per mutant sequence (``(C - 1) * W`` of them, each shared by up to
``(C - 1) * W`` edits).  The map is symmetric, ``y[i, a, j, b] == y[j, b, i, a]``, so only ``j > i`` is
computed and mirrored: half the edits.  Entries whose first or second base is the sequence's own are the
single mutants (or the reference), taken from one single-mutant pass.

The tangermeme-convention dependency map (:func:`fastism_torch.dependency_map`) reuses the same double-mutant
scan (:func:`scan_doubles`) with the second window over the whole sequence.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from .common import Edits, Inputs, host_available_bytes
from .validate import check_replace_with

OUT_BUDGET = 256 << 20      # bytes of model outputs held per chunk of mutant sequences


class DoubleChunk(NamedTuple):
    """The double mutants of one chunk of mutant sequences: mutant ``k`` is sequence ``seq[k]`` with
    position ``first[k]`` set to base ``base[k]``; edit ``e`` sets position ``second[e]`` of mutant
    ``mutant[e]`` to base ``base2[e]``, and ``values[h][e]`` is its output ``h`` (after ``select``)."""
    seq: np.ndarray          # (K,) row of the input
    first: np.ndarray        # (K,) sequence position of the first mutation
    base: np.ndarray         # (K,) its base
    mutant: np.ndarray       # (E,) index into the K mutants
    second: np.ndarray       # (E,) sequence position of the second mutation
    base2: np.ndarray        # (E,) its base
    values: list             # per output, (E, *out) on the CPU


# --------------------------------------------------------------------------------------------- helpers
def own_bases(rows: torch.Tensor, bases: torch.Tensor | None = None) -> np.ndarray:
    """``(N, L)`` index of each position's column of ``rows`` ``(N, L, C)`` among ``bases`` ``(B, C)`` (the
    replacement values; default the one-hot bases); -1 where it is none of them (N, soft or multi-hot: all
    its substitutions are real edits)."""
    bases = torch.eye(rows.shape[-1]) if bases is None else bases
    match = (rows.cpu()[:, :, None, :] == bases.to(rows.dtype)).all(-1)    # (N, L, B)
    return torch.where(match.any(-1), match.to(torch.int64).argmax(-1), -1).numpy()


def replacement_bases(replace_with, num_chars: int) -> torch.Tensor:
    """``(B, C)`` the values each position is set to: the one-hot bases (``None``: saturation), or one vector
    (``replace_with``: 0 or a length-C vector, as for single ISM)."""
    if replace_with is None:
        return torch.eye(num_chars)
    return check_replace_with(replace_with, 1, num_chars)


def check_window(start, end, seq_len: int) -> tuple[int, int]:
    """``(start, end)`` as ints with ``0 <= start < end <= seq_len`` (a negative ``end`` counts from the end,
    as in Python slices)."""
    try:
        s, e = int(start), int(end)
    except (TypeError, ValueError):
        raise ValueError(f"start and end must be integers; got {start!r}, {end!r}") from None
    e = e + seq_len if e < 0 else e
    if not 0 <= s < e <= seq_len:
        raise ValueError(f"start and end must satisfy 0 <= start < end <= seq_len={seq_len}; got {start}, {end}")
    return s, e


def make_select(target=None, reduce: Callable | None = None) -> Callable:
    """``select(outs, refs) -> list`` of the values kept per edit: every output (default), ``reduce(outs,
    refs)`` (one ``(E, T)`` tensor; ``refs`` are the reference outputs of each row's own sequence), or
    ``target`` (an index, slice or index list) of the outputs flattened and concatenated per row."""
    if target is not None and not isinstance(target, (int, np.integer, slice, list, tuple, np.ndarray)):
        raise ValueError(f"target must be an int, a slice or a list of indices; got {type(target).__name__}")

    def select(outs: list, refs: list) -> list:
        if reduce is not None:
            outs = [torch.as_tensor(reduce(outs, refs))]
        if target is None:
            return [o.float() for o in outs]
        flat = torch.cat([o.reshape(len(o), -1) for o in outs], dim=1)
        idx = list(target) if isinstance(target, (tuple, np.ndarray)) else target
        try:
            return [flat[:, idx].float()]
        except IndexError:
            raise ValueError(f"target={target!r} is out of range for {flat.shape[1]} flattened output values") \
                from None
    return select


def _available_bytes() -> int:
    free = host_available_bytes()
    return free if free is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(shapes: list, max_bytes: int | None, what: str = "pairwise") -> None:
    """Raise ``ValueError`` with the estimated size when float32 arrays of ``shapes`` exceed ``max_bytes``
    (default: the memory available now)."""
    need = 4 * sum(math.prod(s) for s in shapes)
    limit = _available_bytes() if max_bytes is None else int(max_bytes)
    if need > limit:
        raise ValueError(
            f"the {what} result {' + '.join(str(tuple(s)) for s in shapes)} float32 would take "
            f"{need / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB available; pass target= (or a "
            f"reduction), a narrower window or fewer sequences at a time")


# --------------------------------------------------------------------------------------------- scans
def _as_ranges(positions) -> tuple:
    return tuple((int(p), int(p) + 1) for p in positions)


def _reference(ism, inp: Inputs) -> list:
    """The model's outputs on ``inp``'s own sequences, per output, on the CPU."""
    parts = [[o.cpu() for o in ism._reference(chunk)] for _, _, chunk in ism._chunks(inp)]
    return [torch.cat(p) for p in zip(*parts)]


def scan_singles(ism, inp: Inputs, positions: np.ndarray, select: Callable, raw_single: bool = False,
                 bases: torch.Tensor | None = None):
    """Selected reference ``(N, ...)`` and single mutants ``(N, P, B, ...)`` at ``positions`` (set to each of
    ``bases`` ``(B, C)``, default the one-hot bases; own bases hold the reference), and the raw reference
    outputs, all on the CPU; with ``raw_single`` also the raw single mutants ``(N, P, B, *out)`` per output."""
    bases = torch.eye(ism.num_chars) if bases is None else bases
    N, P, C = inp.seq.shape[0], len(positions), len(bases)
    cpu = Inputs(inp.seq, inp.args, False, torch.device("cpu"))

    def edits(chunk: Inputs):
        own = own_bases(ism.rows(chunk.seq)[:, positions], bases)              # (n, P)
        s_idx, p_idx, b_idx = np.nonzero(own[:, :, None] != np.arange(C))
        values = bases[b_idx][:, None, :].to(ism.device)
        return Edits(s_idx, p_idx, values, (s_idx * P + p_idx) * C + b_idx), int((own >= 0).sum())
    raw = ism._scan(cpu, _as_ranges(positions), (P, C), edits)
    raw = list(raw) if isinstance(raw, tuple) else [raw]
    ref = _reference(ism, cpu)
    rows = [r.reshape(N * P * C, *r.shape[3:]) for r in raw]
    refs = [r.repeat_interleave(P * C, dim=0) for r in ref]
    single = [s.reshape(N, P, C, *s.shape[1:]) for s in select(rows, refs)]
    if raw_single:
        return select(ref, ref), single, ref, raw
    return select(ref, ref), single, ref


def _mutants(own: np.ndarray, first: np.ndarray, C: int):
    """Every real first mutation: ``(seq, index into first, base)`` arrays, ordered by sequence then position."""
    return np.nonzero(own[:, first, None] != np.arange(C))


def _chunk_size(ism, per_mutant_values: int, edits_per_mutant: int) -> int:
    """Mutant sequences per engine call: bounded reference caches (the engine's own chunk of sequences) and
    at most :data:`OUT_BUDGET` of outputs."""
    by_out = OUT_BUDGET // max(1, 4 * per_mutant_values * max(1, edits_per_mutant))
    return int(np.clip(min(ism._seq_chunk(), by_out), 1, 64))


def additive_distance(ism, first: np.ndarray, second: np.ndarray) -> int | None:
    """The distance from which on a first mutation at a position of ``first`` and a second at a position of
    ``second`` add exactly (:attr:`fastism_torch.plan.Plan.additive_from` of ``ism``'s plan for ``second``);
    ``None`` where none do, or for an engine without a plan (NaiveISM)."""
    plan_for = getattr(ism, "plan_for", None)
    if plan_for is None or not np.isin(first, second).all():
        return None
    try:
        return plan_for(_as_ranges(second)).additive_from
    except RuntimeError:                 # an engine not built yet for a model of several inputs
        return None


def _pair_mask(first: np.ndarray, second: np.ndarray, symmetric: bool, additive_from) -> np.ndarray:
    """``(P1, P2)``: which position pairs the engine runs (``second > first`` with ``symmetric``, else ``!=``;
    closer than ``additive_from``, or not marked in it: a ``(P1, P2)`` boolean array of the pairs the caller
    computes otherwise)."""
    ok = second[None, :] > first[:, None] if symmetric else second[None, :] != first[:, None]
    if isinstance(additive_from, np.ndarray):
        ok &= ~additive_from
    elif additive_from is not None:
        ok &= np.abs(second[None, :] - first[:, None]) < additive_from
    return ok


def scan_doubles(ism, inp: Inputs, first: np.ndarray, second: np.ndarray, select: Callable,
                 ref: list, symmetric: bool, bar=None, additive_from=None,
                 bases: torch.Tensor | None = None) -> Iterator[DoubleChunk]:
    """Double mutants of ``inp``: for every real first mutation at a position of ``first`` and every real
    second mutation at a position of ``second`` (``> first`` with ``symmetric``, else ``!= first``; closer than
    ``additive_from``, or not marked in it if it is a ``(P1, P2)`` boolean array: the pairs the caller does not
    compute otherwise), the selected outputs, chunk by chunk of mutant
    sequences (:class:`DoubleChunk`).  Every first mutation comes once; those without edits come last, in
    chunks with no edits (no model call).

    ``ref`` are the raw reference outputs of ``inp`` (for ``select``'s reductions).  Each mutant sequence is
    one input sequence of ``ism``'s single-edit ISM over the change ranges ``second``.  A base is a row of
    ``bases`` ``(B, C)`` (default the one-hot bases).
    """
    bases = torch.eye(ism.num_chars) if bases is None else bases
    C = len(bases)
    own = own_bases(ism.rows(inp.seq), bases)                                  # (N, L)
    m_seq, m_idx, m_base = _mutants(own, first, C)
    pairs = _pair_mask(first, second, symmetric, additive_from)                # (P1, P2)
    real = own[:, second, None] != np.arange(C)                                # (N, P2, C)
    n_edits = np.einsum("kp,kpc->k", pairs[m_idx].astype(np.int64), real[m_seq].astype(np.int64))
    order = np.argsort(n_edits == 0, kind="stable")              # mutants without edits last: no reference pass
    m_seq, m_idx, m_base, n_edits = m_seq[order], m_idx[order], m_base[order], n_edits[order]
    m_pos = first[m_idx]
    ranges = _as_ranges(second)
    per_values = sum(math.prod(r.shape[1:]) for r in ref)
    step = _chunk_size(ism, per_values, C * len(second))
    busy = int((n_edits > 0).sum())
    bounds = [(lo, min(busy, lo + step)) for lo in range(0, busy, step)]
    bounds += [(lo, min(len(m_seq), lo + step)) for lo in range(busy, len(m_seq), step)]
    for lo, hi in bounds:
        k_seq, k_pos, k_base = m_seq[lo:hi], m_pos[lo:hi], m_base[lo:hi]
        mask = real[k_seq] & pairs[m_idx[lo:hi]][:, :, None]                                # (K, P2, C)
        e_k, e_p, e_b = np.nonzero(mask)
        if len(e_k) == 0:
            yield DoubleChunk(k_seq, k_pos, k_base, e_k, second[e_p], e_b, [])
            continue
        sel = torch.from_numpy(k_seq)
        seq = inp.seq.index_select(0, sel.to(inp.seq.device))
        ism.rows(seq)[torch.arange(len(k_seq), device=seq.device), torch.from_numpy(k_pos).to(seq.device)] = \
            bases[k_base].to(seq.device)
        args = [seq if i == ism.seq_input_idx else a.index_select(0, sel.to(a.device))
                if isinstance(a, torch.Tensor) else a for i, a in enumerate(inp.args)]
        sinks = [torch.empty((len(e_k), *r.shape[1:]), device=ism.device) for r in ref]
        edits = Edits(e_k, e_p, bases[e_b][:, None, :].to(ism.device), np.arange(len(e_k)))
        ism._run_edits(Inputs(seq, args, False, torch.device("cpu")), ranges, edits, sinks, bar)
        rows = torch.from_numpy(k_seq[e_k])
        values = select([s.cpu() for s in sinks], [r.index_select(0, rows) for r in ref])
        yield DoubleChunk(k_seq, k_pos, k_base, e_k, second[e_p], e_b, values)


def progress(ism, total: int, verbose: bool | None, desc: str):
    from tqdm.auto import tqdm
    verbose = ism.verbose if verbose is None else verbose
    return tqdm(total=total, disable=not verbose, unit="edit", desc=desc, dynamic_ncols=True, mininterval=0.5)


def n_doubles(own: np.ndarray, first: np.ndarray, second: np.ndarray, C: int, symmetric: bool,
              additive_from=None) -> int:
    """How many double-mutant edits :func:`scan_doubles` runs."""
    real_first = (own[:, first, None] != np.arange(C)).sum(-1)                # (N, P1)
    real_second = (own[:, second, None] != np.arange(C)).sum(-1)              # (N, P2)
    pairs = _pair_mask(first, second, symmetric, additive_from)
    return int(np.einsum("np,nq,pq->", real_first, real_second, pairs.astype(np.int64)))


# --------------------------------------------------------------------------------------------- API
def _fill_known(out: torch.Tensor, single: torch.Tensor, own: np.ndarray) -> None:
    """Entries of ``out`` ``(N, W, C, W, C, ...)`` that are not double mutants: an own first base gives the
    single mutant of the second (and vice versa); the diagonal ``i == j`` the single mutant where ``a == b``,
    NaN elsewhere."""
    N, W, C = out.shape[:3]
    for n in range(N):
        ii = np.flatnonzero(own[n] >= 0)
        aa = own[n, ii]
        out[n, ii, aa] = single[n]                        # (k, W, C, ...) <- (W, C, ...)
        out[n][:, :, ii, aa] = single[n][:, :, None]      # (W, C, k, ...) <- (W, C, 1, ...)
    for i in range(W):
        out[:, i, :, i, :] = float("nan")
        for a in range(C):
            out[:, i, a, i, a] = single[:, i, a]


def _fill_additive(out: list, raw: list, ref: list, D: int, select: Callable) -> None:
    """Pairs ``j - i >= D`` of ``out`` ``(N, W, C, W, C, ...)`` per output (and their mirror images) as
    ``select(y(i) + y(j) - y(ref))`` from the raw single mutants ``raw`` ``(N, W, C, *out)`` and reference
    ``ref`` ``(N, *out)``: exact where the two changes never meet at a nonlinear op (``select``'s reduction
    may be nonlinear: it sees the summed outputs)."""
    N, W, C = raw[0].shape[:3]
    for n in range(N):
        for i in range(W - D):
            js = np.arange(i + D, W)
            summed = [(r[n, i][:, None, None] + r[n, js][None] - f[n]).reshape(C * len(js) * C, *f.shape[1:])
                      for r, f in zip(raw, ref)]                    # (a, j, b) rows
            refs = [f[n:n + 1].expand(len(s), *f.shape[1:]) for s, f in zip(summed, ref)]
            for o, v in zip(out, select(summed, refs)):
                v = v.reshape(C, len(js), C, *v.shape[1:])
                o[n, i, :, i + D:] = v
                o[n, i + D:, :, i] = v.permute(1, 2, 0, *range(3, v.dim()))


def pairwise(ism, seqs, start: int, end: int, target=None, reduce: Callable | None = None,
             max_bytes: int | None = None, verbose: bool | None = None, return_single: bool = False,
             additive: bool = True, replace_with=None):
    """Exact double-mutant ISM of the window ``[start, end)``.

    Parameters
    ----------
    ism : FastISM or NaiveISM
        The engine (its layout, alphabet size C, device and batch size apply).
    seqs : array or tensor, shape=(N, C, L) for layout NCL, (N, L, C) for NLC
        Or a list/tuple of the model's inputs with the sequences at ``ism.seq_input_idx``.
    start, end : int
        The window, ``0 <= start < end <= L`` (a negative ``end`` counts from the end); ``W = end - start``.
    target : int, slice or list of int, optional
        Keep only these of each row's outputs flattened and concatenated (an int drops the axis).
    reduce : callable, optional
        ``reduce(outs, refs) -> (E, T)``: reduce each edit's outputs (list of ``(E, *out)`` tensors; ``refs``
        the reference outputs of the edit's sequence, same shapes) before ``target`` applies, e.g. with
        :func:`fastism_torch.scores.reduce_outputs`.
    max_bytes : int, optional
        Refuse (``ValueError`` with the estimated size) a result larger than this; default the free memory.
    verbose : bool, optional
        Progress bar (default: the engine's ``verbose``).
    return_single : bool, default False
        Also return the single mutants ``(N, W, C, ...)`` and the reference ``(N, ...)``.
    additive : bool, default True
        Sum the pairs whose changes never meet at a nonlinear op (positions at least the plan's
        ``additive_from`` apart: ``y(i) + y(j) - y(ref)``, exact up to rounding) instead of running them;
        ``False`` runs every pair.
    replace_with : 0 or array of shape (C,), optional
        Set both positions to this vector (e.g. 0, an N) instead of every base: ``B = 1`` below; default
        ``B = C`` (saturation).

    Returns
    -------
    pairwise : ``(N, W, B, W, B, *out)`` per model output (a tuple for several; one array with ``target`` or
        ``reduce``): ``[n, i, a, j, b]`` is the output with position ``start + i`` set to base ``a`` and
        ``start + j`` set to ``b``.  ``i == j`` holds the single mutant where ``a == b``, NaN where ``a != b``;
        a base equal to the sequence's own gives the single mutant of the other (or the reference).  numpy
        for numpy input, else torch on the input's device.
    (pairwise, single, reference) with ``return_single``.
    """
    if not all(hasattr(ism, a) for a in ("inputs", "_run_edits", "seq_len")):        # an engine (base.ISMBase)
        raise ValueError(f"ism must be a FastISM or NaiveISM; got {type(ism).__name__} (wrap a model as "
                         f"fastism_torch.FastISM(model, seq_len))")
    select = make_select(target, reduce)
    bases = replacement_bases(replace_with, ism.num_chars)
    inp = ism.inputs(seqs)
    s, e = check_window(start, end, ism.seq_len)
    window = np.arange(s, e)
    N, W, C = inp.seq.shape[0], e - s, len(bases)
    ref_sel, single, ref, raw = scan_singles(ism, inp, window, select, raw_single=True, bases=bases)
    shapes = [(N, W, C, W, C, *x.shape[3:]) for x in single]
    check_fits(shapes, max_bytes)
    out = [torch.empty(sh) for sh in shapes]
    D = additive_distance(ism, window, window) if additive else None
    if D is not None:
        _fill_additive(out, [r.reshape(N, W, C, *r.shape[3:]).cpu() for r in raw], ref, D, select)
    own = own_bases(ism.rows(inp.seq), bases)
    for o, x in zip(out, single):
        _fill_known(o, x, own[:, window])
    with progress(ism, n_doubles(own, window, window, C, True, D), verbose, "pairwise") as bar:
        for ch in scan_doubles(ism, inp, window, window, select, ref, True, bar, D, bases):
            n, i, a, j, b = (torch.from_numpy(x) for x in (ch.seq[ch.mutant], ch.first[ch.mutant] - s,
                                                           ch.base[ch.mutant], ch.second - s, ch.base2))
            for o, v in zip(out, ch.values):
                o[n, i, a, j, b] = v
                o[n, j, b, i, a] = v
    result = ism._finish(out, inp)
    if not return_single:
        return result
    return result, ism._finish(single, inp), ism._finish(ref_sel, inp)


def _each(x, fn):
    return tuple(fn(*a) for a in zip(*x)) if isinstance(x[0], tuple) else fn(*x)


def diagonal(pairwise):
    """The single mutants ``(N, W, C, *out)`` on the diagonal of a pairwise map (a tuple per output)."""
    def one(p):
        if p.ndim < 5 or p.shape[1] != p.shape[3] or p.shape[2] != p.shape[4]:
            raise ValueError(f"a pairwise map has shape (N, W, C, W, C, *out); got {tuple(p.shape)}")
        W, C = p.shape[1], p.shape[2]
        i, a = np.meshgrid(np.arange(W), np.arange(C), indexing="ij")
        if isinstance(p, torch.Tensor):
            i, a = torch.from_numpy(i).to(p.device), torch.from_numpy(a).to(p.device)
        return p[:, i, a, i, a]
    return _each((pairwise,), one)


def epistasis(pairwise, single, reference):
    """Epistasis ``y(ij) - y(i) - y(j) + y(ref)`` of every double mutant.

    Parameters
    ----------
    pairwise : ``(N, W, C, W, C, *out)`` from :func:`pairwise` (numpy or torch; a tuple per model output)
    single : ``(N, W, C, *out)`` the single mutants of the same window (:func:`diagonal` of ``pairwise``)
    reference : ``(N, *out)`` the reference outputs

    Returns
    -------
    ``(N, W, C, W, C, *out)`` like ``pairwise``: 0 (up to rounding) where a base is the sequence's own, NaN on
    the diagonal ``i == j`` (not a pair).
    """
    def one(p, s, r):
        N, W, C, rest = p.shape[0], p.shape[1], p.shape[2], tuple(p.shape[5:])
        if tuple(s.shape) != (N, W, C, *rest) or tuple(r.shape) != (N, *rest):
            raise ValueError(f"epistasis needs pairwise (N, W, C, W, C, *out), single (N, W, C, *out) and "
                             f"reference (N, *out); got {tuple(p.shape)}, {tuple(s.shape)}, {tuple(r.shape)}")
        s1 = s.reshape(N, W, C, 1, 1, *rest)
        s2 = s.reshape(N, 1, 1, W, C, *rest)
        out = p - s1 - s2 + r.reshape(N, 1, 1, 1, 1, *rest)
        i = np.arange(W)
        out[:, i, :, i, :] = float("nan")
        return out
    return _each((pairwise, single, reference), one)
