"""Nucleotide dependency maps in tangermeme's convention, exactly and fast: :func:`dependency_map`.

``tangermeme.dependency_map(model, X, start=, end=, func=tangermeme.saturation_mutagenesis)`` runs one full
saturation mutagenesis of every single mutant of the window, one sequence at a time.  Here the same numbers
come from the double-mutant scan of :mod:`fastism_torch.pairwise`: every first mutation of the window is an
input sequence of the engine's single-edit ISM over the whole length.

The convention (tangermeme 1.6): the attribution of a sequence ``x`` at position ``j`` is its ISM score at the
observed base, ``sum_c x[c, j] * (y(x[j := c]) - mean_b y(x[j := b]))`` averaged over the outputs (``target``
picks some first); ``dmap[n, j, i]`` is the mean over the substitutions ``a`` that change position
``start + i`` of ``|attr(x[start + i := a])[j] - attr(x)[j]|``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import ISMBase
from . import far_pairs
from .pairwise import additive_distance, make_select, n_doubles, own_bases, progress, scan_doubles, scan_singles

#: keyword arguments of tangermeme's ``saturation_mutagenesis`` that ours take (others are refused)
_FUNC_KWARGS = ("target", "batch_size", "dtype")


def _tangermeme_select(target):
    """Each row's outputs as one number, as tangermeme's ISM attribution does: ``y[:, target]``, then the mean
    over the remaining output axes."""
    def select(outs: list, refs: list) -> list:
        if len(outs) != 1:
            raise ValueError(f"dependency_map needs a model with one output tensor; this one has {len(outs)} "
                             f"(tangermeme's saturation_mutagenesis refuses them too)")
        y = outs[0] if target is None else outs[0][:, target]
        return [y.reshape(len(y), -1).double().mean(1)]
    return select


def _attribution(values: torch.Tensor, hot: torch.Tensor) -> torch.Tensor:
    """ISM attribution at the observed base ``(..., L)`` from values ``(..., L, C)`` and one-hot ``(..., L, C)``."""
    return (hot * (values - values.mean(-1, keepdim=True))).sum(-1)


def _engine(model, X, device, kwargs) -> ISMBase:
    if isinstance(model, ISMBase):
        return model
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, FastISM or NaiveISM; got {type(model).__name__}")
    from .fast import FastISM
    x = X[0] if isinstance(X, (list, tuple)) else X
    dtype = kwargs.get("dtype")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return FastISM(model, int(x.shape[-1]), device=device, batch_size=kwargs.get("batch_size"), dtype=dtype,
                   test_correctness=kwargs.get("test_correctness", True))


def _check_func(func, kwargs: dict) -> None:
    if func is not None and getattr(func, "__name__", None) != "saturation_mutagenesis":
        raise ValueError(f"func must be None or tangermeme.saturation_mutagenesis (this dependency map is the "
                         f"exact ISM one); got {getattr(func, '__name__', func)!r}")
    bad = sorted(set(kwargs) - set(_FUNC_KWARGS) - {"test_correctness"})
    if bad:
        raise ValueError(f"dependency_map does not take {bad}; it takes {list(_FUNC_KWARGS)} for the attribution "
                         f"and test_correctness for the engine")


@torch.no_grad()
def dependency_map(model, X, args=None, start: int = 0, end: int = -1, func=None,
                   additional_func_kwargs: dict | None = None, device=None, verbose: bool = False,
                   additive: bool = True, **kwargs):
    """Dependency map (tangermeme 1.6's ``dependency_map`` with ``func=saturation_mutagenesis``), exact.

    Parameters
    ----------
    model : torch.nn.Module, FastISM or NaiveISM
        A module takes ``X`` as ``(N, C, L)`` (a :class:`~fastism_torch.FastISM` is built for it); an engine
        takes ``X`` in its own layout.
    X : array or tensor, shape=(N, C, L) (or ``(N, L, C)`` for an NLC engine)
        One-hot sequences; all-zero (N) columns get every substitution, as in tangermeme.
    args : tuple of tensors, optional
        Further model inputs, each with a leading axis of N.
    start, end : int, default 0, -1
        Positions ``[start, end)`` substituted; a negative ``end`` is ``L + 1 + end`` (tangermeme's: -1 is L).
    func : None or tangermeme.saturation_mutagenesis
        The attribution (only ISM is computed here).
    additional_func_kwargs : dict, optional
        Merged into ``kwargs``.
    device : str or torch.device, optional
        For a module: where the engine runs (default: the module's device).
    verbose : bool, default False
        Progress bar over the double mutants.
    additive : bool, default True
        Sum the double mutants whose changes never meet at a nonlinear op (positions at least the engine's
        plan's ``additive_from`` apart) from the single mutants instead of running them.
    **kwargs
        ``target`` (an index or slice of the output's first axis; the rest are averaged), ``batch_size`` and
        ``dtype`` for a module's engine, ``test_correctness`` (default True) for its self-check.

    Returns
    -------
    dmap : torch.Tensor, shape=(N, L, end - start), float32 on the CPU
        ``dmap[n, j, i]``: the mean absolute change of the ISM attribution at ``j`` over the substitutions
        at ``start + i`` that change the base.
    """
    kwargs = {**kwargs, **(additional_func_kwargs or {})}
    _check_func(func, kwargs)
    ism = _engine(model, X, device, kwargs)
    seqs = X if args is None else [X, *args]
    inp = ism.inputs(seqs)
    L, C = ism.seq_len, ism.num_chars
    end = L + 1 + int(end) if int(end) < 0 else int(end)
    if not 0 <= int(start) < end <= L:
        raise ValueError(f"start and end must satisfy 0 <= start < end <= length; got start={start}, end={end} "
                         f"for length {L}")
    window, every = np.arange(int(start), end), np.arange(L)
    select = _tangermeme_select(kwargs.get("target"))
    D = additive_distance(ism, window, every) if additive else None
    sp = far_pairs.split(ism, inp, every, window) if additive and D is None else None
    if sp is None:
        ref_sel, single, ref = scan_singles(ism, inp, every, select)
    else:                                  # single mutants through the head and the tail
        h_ref, hs, ref, single, ref_sel = _head_singles(sp, ism, inp, every, select)
    single, ref_sel = single[0], ref_sel[0]                                    # (N, L, C), (N,) float64
    hot = ism.rows(inp.seq).cpu().double()                                     # (N, L, C)
    attr0 = _attribution(single, hot)                                          # (N, L)
    own = own_bases(ism.rows(inp.seq))
    total = torch.zeros(inp.seq.shape[0], len(window), L, dtype=torch.float64)     # (N, W, L)
    eye = torch.eye(C, dtype=torch.float64)
    near = D if sp is None else sp.far
    with progress(ism, n_doubles(own, window, every, C, False, near), verbose, "dependency map") as bar:
        for ch in scan_doubles(ism, inp, window, every, select, ref, False, bar, near):
            k = np.arange(len(ch.seq))
            grid = single[ch.seq, ch.first, ch.base][:, None, None].repeat(1, L, C)    # y(mutant): own bases
            if D is not None:                                 # pairs that add: y(i) + y(j) - y(ref)
                far = torch.from_numpy(np.abs(every[None, :] - ch.first[:, None]) >= D)      # (K, L)
                grid += (single[ch.seq] - ref_sel[ch.seq][:, None, None]) * far[:, :, None]
            if sp is not None:
                _far_through_tail(sp, ism, ch, ch.first - window[0], h_ref, hs, ref, select, grid)
            grid[k, ch.first] = single[ch.seq, ch.first]                           # j == i: single mutants
            if len(ch.mutant):
                grid[ch.mutant, ch.second, ch.base2] = ch.values[0]
            m_hot = hot[ch.seq].clone()
            m_hot[k, ch.first] = eye[ch.base]
            change = (_attribution(grid, m_hot) - attr0[ch.seq]).abs()             # (K, L)
            total.index_put_((torch.from_numpy(ch.seq), torch.from_numpy(ch.first - window[0])), change,
                             accumulate=True)
    counts = (own[:, window, None] != np.arange(C)).sum(-1)                    # (N, W)
    return (total / torch.from_numpy(counts)[:, :, None]).transpose(1, 2).float()


def _head_singles(sp, ism, inp, every: np.ndarray, select):
    """Single mutants of every position through :mod:`.far_pairs`' head (one saturation scan) and tail: the head's
    reference and single mutants ``(N, L, C, ...)`` per head output, the model's raw reference outputs, and the
    selected single mutants and reference, as :func:`.pairwise.scan_singles` gives them."""
    _, _, h_ref, hs = scan_singles(sp.head, inp, every, make_select(), raw_single=True)
    N, L, C = hs[0].shape[:3]
    ref = far_pairs.tail(sp, ism, h_ref)
    ys = far_pairs.tail(sp, ism, [h.reshape(N * L * C, *h.shape[3:]) for h in hs])
    refs = [r.repeat_interleave(L * C, dim=0) for r in ref]
    single = [s.reshape(N, L, C, *s.shape[1:]) for s in select(ys, refs)]
    return h_ref, hs, ref, single, select(ref, ref)


def _far_through_tail(sp, ism, ch, rows_of_far: np.ndarray, h_ref: list, hs: list, ref: list, select,
                      grid: torch.Tensor) -> None:
    """``grid[k, j, b]`` ``(K, L, C)`` of chunk ``ch``'s mutants (row ``rows_of_far[k]`` of ``sp.far``) for the
    positions ``j`` whose changes meet the mutant's only in the tail: ``select(tail(h(ref) + dh(i, a) +
    dh(j, b)))``."""
    C = grid.shape[2]
    for k, (n, i, a) in enumerate(zip(ch.seq, ch.first, ch.base)):
        js = np.flatnonzero(sp.far[rows_of_far[k]])
        if len(js) == 0:
            continue
        rows = [(h[n, i, a] - r[n] + h[n, js]).reshape(len(js) * C, *r.shape[1:]) for h, r in zip(hs, h_ref)]
        ys = far_pairs.tail(sp, ism, rows)
        grid[k, js] = select(ys, [r[n:n + 1].expand(len(y), *r.shape[1:]) for y, r in zip(ys, ref)])[0] \
            .reshape(len(js), C)


def _float64(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def window_dependency(pairwise, single, onehot) -> np.ndarray:
    """The dependency map restricted to rows in the window, from a pairwise map (no further model calls).

    Parameters
    ----------
    pairwise : ``(N, W, C, W, C)`` one value per double mutant (e.g. averaged over targets), from
        :func:`fastism_torch.pairwise`
    single : ``(N, W, C)`` the single mutants of the window (:func:`fastism_torch.pairwise.diagonal`)
    onehot : ``(N, W, C)`` the window's sequence, position-major

    Returns
    -------
    ``(N, W, W)`` float64: ``[n, j, i]`` is :func:`dependency_map`'s ``[n, start + j, i]``.
    """
    p, s, hot = (_float64(v) for v in (pairwise, single, onehot))
    p = p.copy()
    N, W, C = s.shape
    if p.shape != (N, W, C, W, C) or hot.shape != (N, W, C):
        raise ValueError(f"window_dependency needs pairwise (N, W, C, W, C), single and onehot (N, W, C); got "
                         f"{p.shape}, {s.shape}, {hot.shape}")
    m_hot = np.broadcast_to(hot[:, None, None], p.shape).copy()                # (N, i, a, j, c)
    for i in range(W):
        p[:, i, :, i, :] = s[:, i, None, :]                                      # j == i: single mutants
        m_hot[:, i, :, i, :] = np.eye(C)
    attr = (m_hot * (p - p.mean(-1, keepdims=True))).sum(-1)                   # (N, i, a, j)
    attr0 = (hot * (s - s.mean(-1, keepdims=True))).sum(-1)                    # (N, j)
    own = own_bases(torch.from_numpy(hot))
    real = own[:, :, None] != np.arange(C)                                     # (N, i, a)
    change = np.abs(attr - attr0[:, None, None, :]) * real[..., None]
    return (change.sum(2) / real.sum(-1)[..., None]).transpose(0, 2, 1)
