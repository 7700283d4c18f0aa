"""Edits of several windows: :func:`multi_edits` (a haplotype of several SNPs, a motif pair, a double mutant at
chosen positions, ...), exact, on any engine (:class:`~fastism_torch.FastISM` or :class:`~fastism_torch.NaiveISM`).

The engine edits one window per edit.  An edit of several disjoint windows runs in one of two exact forms:

- *hull form*: one single-window edit of the hull ``[first start, last end)``, widened to its
  :func:`width_class`, whose values are the sequence's own rows with the windows written over them (per
  sequence).  The hull edits of one width class run in one engine call over every window of that width
  (:func:`every_window`): they batch together and share the reference pass of a chunk of sequences;
- *mutant-sequence form*: every window but one (the *run window*) is written into a copy of the sequence, and
  the run window runs as a single-window edit of that copy (as :func:`fastism_torch.pairwise.scan_doubles`
  does).  The copy's reference pass is shared by every edit with the same other windows; the run window is
  the one whose removal leaves the set of windows that the most edits share (the last one on ties).

- *sum form*: where the change ranges of every two windows of the edit are disjoint at every op of the
  windowed part that is not affine in the sequence (the plan's ranges of single positions), the changes add up
  to the first nonlinear op that runs in full.  Without one (e.g. a global mean + dense head, a linear profile
  head: the plan's :attr:`~fastism_torch.plan.Plan.additive_from`), the edit's outputs are the sum of its
  windows' single-window changes, ``y(ref) + sum_k (y(window k) - y(ref))``; with one (a dense head with a
  ReLU: Basset, DeepSEA), the model splits there (:meth:`FastISM.sum_reach <fastism_torch.FastISM.sum_reach>`) and the
  edit is ``tail(h(ref) + sum_k (h(window k) - h(ref)))``, one pass of the tail.  Exact up to rounding.  Each
  distinct window runs once per call as a single-window edit (of the head), shared by every edit holding it.

Which form: with ``span``, an edit whose hull is at most ``span`` positions wide runs as a hull and the others
in the mutant-sequence form.  By default the plan decides: with ``m(w)`` the planned MACs per edit of a
``w``-wide window (averaged over positions, :meth:`FastISM.window_macs <fastism_torch.FastISM.window_macs>`)
and ``F`` those of a full forward pass, an edit runs as a hull where ``m(hull) <= m(run window) + F / k``,
``k`` the number of edits that share its copy; an edit whose windows add runs as a sum where that costs least:
``T + sum_k (m(w_k) - T) / u_k``, ``u_k`` the number of edits holding window ``k`` and ``T`` the tail's MACs
(0 without one).  An engine without a plan (NaiveISM; a FastISM not built yet, unless at least
:data:`SHARED_BUILD` edits share one copy or :data:`MULTI_BUILD` edits have several windows) runs every edit as
a hull.  An edit of one window is a hull; an empty edit is the reference.  Hull edits that change nothing in a
sequence are its reference.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, NamedTuple

import numpy as np
import torch

from .common import Edits, Inputs
from .pairwise import _chunk_size, check_fits, make_select, progress


class Window(NamedTuple):
    """Rows ``rows`` ``(w, C)`` written at positions ``[start, start + w)``."""
    start: int
    rows: torch.Tensor            # (w, C) float32 on the CPU

    @property
    def end(self) -> int:
        return self.start + len(self.rows)


class Job(NamedTuple):
    """How one edit runs: the single-window edit ``[start, start + width)`` of the sequence (``lead == -1``)
    or of its copy with the windows ``leads[lead]`` written in, whose values are that sequence's rows with
    ``run`` written over them; ``lead == SUM``: the sum of the single-window changes of the windows ``run``.
    ``run == ()``: the reference (an empty edit)."""
    lead: int
    run: tuple
    start: int
    width: int


#: :attr:`Job.lead` of an edit in the sum form
SUM = -2

# --------------------------------------------------------------------------------------------- validation
def _rows(values, num_chars: int, alphabet: str | None, where: str) -> torch.Tensor:
    """A window's values as ``(w, C)`` float32 rows: a base index, letters of ``alphabet`` or an array."""
    C = num_chars
    if isinstance(values, (bool, np.bool_)):
        raise ValueError(f"{where}: values must be a base index, letters or a (w, {C}) array; got {values!r}")
    if isinstance(values, (int, np.integer)):
        if not 0 <= values < C:
            raise ValueError(f"{where}: base index {values} is out of range 0..{C - 1}")
        return torch.eye(C)[int(values)][None]
    if isinstance(values, str):
        if alphabet is None:
            raise ValueError(f"{where}: letters {values!r} need an alphabet: pass alphabet='ACGT' (the order of "
                             f"the one-hot columns) or give base indices")
        idx = [alphabet.upper().find(ch) for ch in values.upper()]
        if not values or -1 in idx:
            raise ValueError(f"{where}: {values!r} has letters outside the alphabet {alphabet!r}")
        return torch.eye(C)[idx]
    try:
        rows = (values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(
            np.asarray(values, dtype=np.float32))).float()
    except (TypeError, ValueError):
        raise ValueError(f"{where}: values must be a base index, letters or a (w, {C}) array; got "
                         f"{type(values).__name__}") from None
    if rows.dim() == 1 and len(rows) == C:
        rows = rows[None]
    if rows.dim() != 2 or rows.shape[1] != C or rows.shape[0] == 0:
        raise ValueError(f"{where}: values must be a base index, letters or a (w, {C}) array; got shape "
                         f"{tuple(rows.shape)}")
    if not torch.isfinite(rows).all():
        raise ValueError(f"{where}: values contain non-finite numbers")
    return rows


def parse_edits(edits, num_chars: int, seq_len: int, alphabet: str | None = None) -> list:
    """``edits`` (a list of edits, each a list of ``(start, values)`` windows) as lists of :class:`Window`
    sorted by start; ``ValueError`` naming the edit and the window for a malformed, out-of-range or
    overlapping window."""
    if alphabet is not None and (not isinstance(alphabet, str) or len(alphabet) != num_chars):
        raise ValueError(f"alphabet must be a string of num_chars={num_chars} letters; got {alphabet!r}")
    if isinstance(edits, (str, bytes)) or not isinstance(edits, (list, tuple)) or len(edits) == 0:
        raise ValueError(f"edits must be a non-empty list of edits, each a list of (start, values) windows; "
                         f"got {type(edits).__name__}")
    out = []
    for e, edit in enumerate(edits):
        if not isinstance(edit, (list, tuple)):
            raise ValueError(f"edit {e} must be a list of (start, values) windows; got {type(edit).__name__}")
        wins = []
        for k, win in enumerate(edit):
            if not isinstance(win, (list, tuple)) or len(win) != 2:
                raise ValueError(f"edit {e}, window {k}: a window is a (start, values) pair; got {win!r}")
            start, values = win
            if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
                raise ValueError(f"edit {e}, window {k}: start must be an int; got {start!r}")
            rows = _rows(values, num_chars, alphabet, f"edit {e}, window {k} (start {start})")
            w = Window(int(start), rows)
            if w.start < 0 or w.end > seq_len:
                raise ValueError(f"edit {e}, window {k} [{w.start}, {w.end}) is out of range [0, {seq_len})")
            wins.append((k, w))
        wins.sort(key=lambda kw: kw[1].start)
        for (ka, a), (kb, b) in zip(wins, wins[1:]):
            if b.start < a.end:
                raise ValueError(f"edit {e}: windows {ka} [{a.start}, {a.end}) and {kb} [{b.start}, {b.end}) "
                                 f"overlap")
        out.append([w for _, w in wins])
    return out


# --------------------------------------------------------------------------------------------- forms
def width_class(width: int, seq_len: int, per_octave: int = 4) -> int:
    """``width`` rounded up to one of ``per_octave`` widths (a power of two) per power of two, at most
    ``seq_len``: hulls of nearby widths share one engine call and its reference pass (4: at most a quarter
    wider than they are; an engine built with ``compile`` gets 1, as each width compiles its own graph)."""
    step = 1 << max(0, int(width).bit_length() - int(per_octave).bit_length())
    return min(seq_len, -(-int(width) // step) * step)


def every_window(width: int, seq_len: int) -> tuple:
    """Every ``width``-wide window of the sequence: the change ranges of one width class's engine call (one
    plan per width, kept by the engine across calls); an edit's range index is its start."""
    return tuple((p, p + width) for p in range(seq_len - width + 1))


def _per_octave(ism) -> int:
    """Width classes per power of two (:func:`width_class`): 1 for an engine built with ``compile``, else 4."""
    return 1 if getattr(ism, "compile", False) else 4


def _job(lead: int, run: tuple, seq_len: int, per_octave: int) -> Job:
    width = width_class(run[-1].end - run[0].start, seq_len, per_octave)
    return Job(lead, run, min(run[0].start, seq_len - width), width)


def _key(wins) -> tuple:
    return tuple((w.start, w.rows.numpy().tobytes()) for w in wins)


#: a FastISM not built yet (lazy) is built for the form choice when this many edits (over all sequences) share
#: one mutant copy (a lazy engine's first probe, :data:`fastism_torch.costs.LAZY_PROBE`) ...
SHARED_BUILD = 64
#: ... or the call holds this many edits of several windows (over all sequences: their naive ISM, ~1-3 ms an edit
#: on Basset or BPNet at 2 threads, outweighs a build, and far windows may run as sums); otherwise every edit
#: runs as a hull, as cheap as a copy where no edits share one
MULTI_BUILD = 512


def _costs(ism, build: bool) -> Callable | None:
    """``cost(width) -> (MACs per edit, MACs of a full pass)`` from ``ism``'s plans; None without plans (a lazy
    engine not built yet: built with ``build``)."""
    window_macs = getattr(ism, "window_macs", None)
    if window_macs is None or (getattr(ism, "_deferred", False) and not build):
        return None
    cache: dict = {}

    def cost(width: int) -> tuple:
        if width not in cache:
            cache[width] = window_macs(width)
        return cache[width]
    try:
        cost(1)
    except RuntimeError:                 # an engine not built yet for a model of several inputs
        return None
    return cost


def _reach(ism, split: bool):
    """``ism.sum_reach(split)`` (a FastISM: :class:`fastism_torch.far_pairs.Reach`, what decides and runs the sum
    form), or None (an engine without a plan, or a model whose changes do not add anywhere usable)."""
    sum_reach = getattr(ism, "sum_reach", None)
    return None if sum_reach is None else sum_reach(split)


def plan_jobs(ism, windows: list, span: int | None, n_seqs: int = 1, split: bool = True) -> tuple[list, list]:
    """The :class:`Job` of every edit (of :class:`Window` lists ``windows``, applied to ``n_seqs`` sequences)
    and the window lists of the copies they run on (``leads``); the form by ``span`` or by the plan's costs
    (module docstring; ``split``: the sum form may run through the model's head and tail)."""
    L, per_octave = ism.seq_len, _per_octave(ism)
    others = [[_key(ws[:i] + ws[i + 1:]) for i in range(len(ws))] for ws in windows]
    counts = Counter(k for keys in others if len(keys) > 1 for k in keys)
    shared = max(counts.values(), default=0) * n_seqs >= SHARED_BUILD or \
        sum(len(ws) > 1 for ws in windows) * n_seqs >= MULTI_BUILD
    cost = _costs(ism, shared) if span is None else None
    reach = _reach(ism, split) if cost is not None else None
    uses = Counter(k for ws in windows if len(ws) > 1 for k in _key(ws)) if reach is not None else Counter()

    def m(width: int) -> float:
        return cost(width_class(width, L, per_octave))[0]
    jobs, leads, lead_of = [], [], {}
    for ws, keys in zip(windows, others):
        if not ws:
            jobs.append(Job(-1, (), 0, 0))
            continue
        hull = ws[-1].end - ws[0].start
        if len(ws) > 1:
            i = max(range(len(ws)), key=lambda j: (counts[keys[j]], j))
            if span is not None:
                mutant = hull > span
            elif cost is not None:
                as_hull, as_copy = m(hull), m(len(ws[i].rows)) + cost(1)[1] / counts[keys[i]]
                if reach is not None and reach.tail + sum((m(len(w.rows)) - reach.tail) / uses[k] for w, k in zip(
                        ws, _key(ws))) <= min(as_hull, as_copy) and reach.apart(ws):
                    jobs.append(Job(SUM, tuple(ws), 0, 0))
                    continue
                mutant = as_hull > as_copy
            else:
                mutant = False
            if mutant:
                if keys[i] not in lead_of:
                    lead_of[keys[i]] = len(leads)
                    leads.append(ws[:i] + ws[i + 1:])
                jobs.append(_job(lead_of[keys[i]], (ws[i],), L, per_octave))
                continue
        jobs.append(_job(-1, tuple(ws), L, per_octave))
    return jobs, leads


# --------------------------------------------------------------------------------------------- execution
class _Call(NamedTuple):
    """One chunk of sequences: its inputs, raw reference outputs (per output, CPU), the selection, the results
    and the chunk's first row in them, and the progress bar."""
    inp: Inputs
    ref: list
    select: Callable
    out: list
    lo: int
    bar: object


def _written(own: torch.Tensor, run: tuple, start: int) -> torch.Tensor:
    """``own`` ``(n, w, C)`` (rows from ``start`` on) with the windows ``run`` written over it (a copy)."""
    v = own.clone()
    for w in run:
        v[:, w.start - start:w.end - start] = w.rows
    return v


class _Task(NamedTuple):
    """Edits of one engine call at one start: rows ``seq`` of its inputs, rows ``row`` of the chunk (whose
    reference and results they belong to), edit ``edit``, values ``(n, width, C)``."""
    seq: np.ndarray
    row: np.ndarray
    edit: np.ndarray
    values: torch.Tensor
    start: int


def _outputs(ism, inp: Inputs, width: int, tasks: list, shapes: list, bar) -> tuple:
    """Run ``tasks`` (:class:`_Task`) as one engine call over :func:`every_window` of ``width``: ``(rows of the
    chunk, edits, raw outputs per model output on the CPU)``, one row per task row (``shapes``: of one row of
    each output)."""
    seq, rows, e_idx = (np.concatenate([getattr(t, f) for t in tasks]) for f in ("seq", "row", "edit"))
    starts = np.concatenate([np.full(len(t.seq), t.start) for t in tasks])
    values = torch.cat([t.values for t in tasks]).to(ism.device)
    sinks = [torch.empty((len(seq), *shape), device=ism.device) for shape in shapes]
    ism._run_edits(inp, every_window(width, ism.seq_len), Edits(seq, starts, values, np.arange(len(seq))), sinks,
                   bar)
    return torch.from_numpy(rows), torch.from_numpy(e_idx), [s.cpu() for s in sinks]


def _run(ism, call: _Call, inp: Inputs, width: int, tasks: list) -> None:
    """Run ``tasks`` (:class:`_Task`) as one engine call over :func:`every_window` of ``width`` and write their
    selected outputs to the results."""
    if not tasks:
        return
    r, e_idx, raw = _outputs(ism, inp, width, tasks, [f.shape[1:] for f in call.ref], call.bar)
    selected = call.select(raw, [f.index_select(0, r) for f in call.ref])
    for o, v in zip(call.out, selected):
        o[call.lo + r, e_idx] = v


def _run_hulls(ism, call: _Call, jobs: list, widths: list) -> None:
    """The hull-form edits of the chunk, one engine call per width class (in the order ``widths``); edits
    that change nothing in a sequence keep its reference."""
    own = ism.rows(call.inp.seq).cpu()                                           # (n, L, C)
    n = len(own)
    by_width: dict = {}
    for e, j in enumerate(jobs):
        if j.lead == -1 and j.run:
            by_width.setdefault(j.width, []).append(e)
    for width in widths:
        tasks = [_hull_task(own, jobs[e], e) for e in by_width[width]]
        call.bar.update(sum(n - len(t.seq) for t in tasks))
        _run(ism, call, call.inp, width, tasks)


def _hull_task(own: torch.Tensor, j: Job, edit: int) -> _Task:
    """The rows of ``own`` ``(n, L, C)`` that hull job ``j`` changes, as a :class:`_Task` of edit ``edit`` (the
    others keep their reference)."""
    old = own[:, j.start:j.start + j.width]
    v = _written(old, j.run, j.start)
    real = np.flatnonzero(~(v == old).flatten(1).all(1).numpy())
    return _Task(real, real, np.full(len(real), edit), v[real], j.start)


#: raw outputs of the sum-form edits held at once (bytes, float32: their distinct windows' and the sums' terms):
#: more run in blocks of edits
SUM_BYTES = 256 << 20


def _run_sums(ism, call: _Call, jobs: list) -> None:
    """The sum-form edits of the chunk: each distinct window of a block of them runs once as a single-window
    edit of the model, or of its head where a nonlinear op runs in full (one engine call per width class; a
    window that equals a sequence's own bases keeps its reference), then every edit of the block is ``ref +
    sum_k (y_k - ref)`` of its windows' raw outputs (of the head, then through the tail), selected after the
    sum (a ``reduce`` need not be linear)."""
    sums = [e for e, j in enumerate(jobs) if j.lead == SUM]
    if not sums:
        return
    reach = _reach(ism, True)
    base = call.ref if reach.split is None else [h.float().cpu() for h in reach.split.head._reference(call.inp)]
    own = ism.rows(call.inp.seq).cpu()                                           # (n, L, C)
    per_window = 4 * sum(math.prod(r.shape) for r in base)
    block, index, held = [], {}, 0
    for k, e in enumerate(sums):
        for key, w in zip(_key(jobs[e].run), jobs[e].run):
            index.setdefault(key, (len(index), w))
        block.append(e)
        held += len(jobs[e].run)
        ahead = len(jobs[sums[k + 1]].run) if k + 1 < len(sums) else 0
        if not ahead or (len(index) + held + 2 * ahead) * per_window > SUM_BYTES:
            _sum_block(ism, call, jobs, block, index, reach, base, own)
            block, index, held = [], {}, 0


def _sum_block(ism, call: _Call, jobs: list, block: list, index: dict, reach, base: list,
               own: torch.Tensor) -> None:
    """:func:`_run_sums` for one block of edits whose distinct windows are ``index`` (key -> (row, window)),
    through ``reach``'s head and tail where it has them (else the model), whose raw reference outputs are
    ``base``; ``own``: the chunk's sequences ``(n, L, C)``."""
    engine = ism if reach.split is None else reach.split.head
    n, L, per_octave = len(own), ism.seq_len, _per_octave(ism)
    raw = [r[None].repeat(len(index), *[1] * r.dim()) for r in base]             # (U, n, ...): the reference
    by_width: dict = {}
    for u, w in index.values():
        j = _job(-1, (w,), L, per_octave)
        task = _hull_task(own, j, u)
        if len(task.seq):
            by_width.setdefault(j.width, []).append(task)
    for width, tasks in sorted(by_width.items()):
        r, u_idx, outs = _outputs(engine, call.inp, width, tasks, [b.shape[1:] for b in base], None)
        for dst, o in zip(raw, outs):
            dst[u_idx, r] = o
    by_count: dict = {}
    for e in block:
        by_count.setdefault(len(jobs[e].run), []).append(e)
    for K, edits in by_count.items():
        idx = torch.tensor([[index[key][0] for key in _key(jobs[e].run)] for e in edits])    # (E_K, K)
        ys = [(d[idx].sum(1) - (K - 1) * r).flatten(0, 1) for d, r in zip(raw, base)]   # (E_K * n, ...)
        ys = reach.outputs(ism, ys)
        refs = [r.expand(len(edits), *r.shape).flatten(0, 1) for r in call.ref]
        selected = call.select(ys, refs)
        e_idx = torch.tensor(edits)
        for o, v in zip(call.out, selected):
            o[call.lo:call.lo + n, e_idx] = v.reshape(len(edits), n, *v.shape[1:]).transpose(0, 1)
        call.bar.update(n * len(edits))


def _copies(ism, inp: Inputs, leads: list) -> Inputs:
    """``inp``'s sequences with each window list of ``leads`` written in: copy ``k * n + r`` is sequence ``r``
    with ``leads[k]`` (other model inputs repeated)."""
    n = len(inp.seq)
    idx = torch.arange(n, device=inp.seq.device).repeat(len(leads))
    seq = inp.seq.index_select(0, idx)
    rows = ism.rows(seq)
    for k, wins in enumerate(leads):
        for w in wins:
            rows[k * n:(k + 1) * n, w.start:w.end] = w.rows.to(seq.device)
    args = [seq if i == ism.seq_input_idx else a.index_select(0, idx.to(a.device)) if isinstance(a, torch.Tensor)
            else a for i, a in enumerate(inp.args)]
    return Inputs(seq, args, False, torch.device("cpu"))


def _run_mutants(ism, call: _Call, jobs: list, leads: list) -> None:
    """The mutant-sequence-form edits of the chunk: copies in blocks of at most the engine's chunk of
    sequences, one engine call per block and width class."""
    by_lead: dict = {}
    for e, j in enumerate(jobs):
        if j.lead >= 0:
            by_lead.setdefault(j.lead, []).append(e)
    n = len(call.inp.seq)
    per_block = max(1, int(np.clip(ism._seq_chunk(), 1, 64)) // n)
    ids = sorted(by_lead)
    for b0 in range(0, len(ids), per_block):
        block = ids[b0:b0 + per_block]
        inp = _copies(ism, call.inp, [leads[k] for k in block])
        own = ism.rows(inp.seq).cpu()
        by_width: dict = {}
        for k, lead in enumerate(block):
            for e in by_lead[lead]:
                j = jobs[e]
                v = _written(own[k * n:(k + 1) * n, j.start:j.start + j.width], j.run, j.start)
                by_width.setdefault(j.width, []).append(
                    _Task(k * n + np.arange(n), np.arange(n), np.full(n, e), v, j.start))
        for width in sorted(by_width):
            _run(ism, call, inp, width, by_width[width])


def _chunk_inputs(ism, inp: Inputs, lo: int, hi: int) -> Inputs:
    args = [a[lo:hi] if isinstance(a, torch.Tensor) else a for a in inp.args]
    return Inputs(args[ism.seq_input_idx], args, inp.was_numpy, inp.out_device)


def _first_ranges(ism, jobs: list) -> tuple[list, tuple | None]:
    """The hull width classes of ``jobs`` in order, and the change ranges of the engine's first call, whose
    reference pass (a FastISM's first one compares its trace with the model) starts each chunk: of the narrowest
    hull, else of a copy's run window, else of single positions (sums), else None (only references)."""
    hulls = sorted({j.width for j in jobs if j.lead == -1 and j.run})
    first = hulls[0] if hulls else min((j.width for j in jobs if j.lead >= 0), default=None)
    if first is None and any(j.lead == SUM for j in jobs):
        first = 1
    return hulls, None if first is None else every_window(first, ism.seq_len)


# --------------------------------------------------------------------------------------------- API
def multi_edits(ism, seqs, edits, *, span: int | None = None, target=None, reduce: Callable | None = None,
                alphabet: str | None = None, max_bytes: int | None = None, verbose: bool | None = None):
    """Outputs of edits that each set one or more disjoint windows of every sequence, exactly.

    Parameters
    ----------
    ism : FastISM or NaiveISM
        The engine (its layout, alphabet size C, device and batch size apply).
    seqs : array or tensor, shape=(N, C, L) for layout NCL, (N, L, C) for NLC
        Or a list/tuple of the model's inputs with the sequences at ``ism.seq_input_idx``.
    edits : list of E edits, each a list of ``(start, values)`` windows
        A window sets positions ``[start, start + w)``: ``values`` is a base index (``w = 1``, that one-hot
        base), a string of ``w`` letters of ``alphabet``, or an array ``(w, C)`` of rows (any values, e.g. 0.25
        for an N; a length-C vector is one row).  The windows of an edit may come in any order but must not
        overlap, and must lie in ``[0, L)``.  An empty edit is the reference.
    span : int, optional
        Edits whose windows span at most this many positions (first start to last end) run as one edit of
        that hull, the others as an edit of a mutant copy of the sequence (module docstring); default: chosen
        per edit from the plan's MACs (every edit a hull for NaiveISM).  Both forms are exact.
    target : int, slice or list of int, optional
        Keep only these of each row's outputs flattened and concatenated (an int drops the axis).
    reduce : callable, optional
        ``reduce(outs, refs) -> (E, T)``: reduce each edit's outputs (list of ``(E, *out)`` tensors; ``refs``
        the reference outputs of the edit's sequence, same shapes) before ``target`` applies.
    alphabet : str, optional
        The letters of the one-hot columns (e.g. ``"ACGT"``), for windows given as letters; default the
        engine's ``alphabet`` attribute if it has one.
    max_bytes : int, optional
        Refuse (``ValueError`` with the estimated size) a result larger than this; default the free memory.
    verbose : bool, optional
        Progress bar (default: the engine's ``verbose``).

    Returns
    -------
    ``(N, E, *out)`` per model output (a tuple for several; one array with ``target`` or ``reduce``):
    ``[n, e]`` is the output of sequence ``n`` with every window of edit ``e`` set, as ``ism(seqs)`` returns
    ``(N, n_ranges, *out)``.  numpy for numpy input, else torch on the input's device.

    Examples
    --------
    >>> y = ism.multi_edits(x, [[(100, 2), (140, 0)],           # a double mutant: 100 -> G, 140 -> A
    ...                         [(200, "TGATAA"), (260, "CACGTG")],   # a motif pair (alphabet="ACGT")
    ...                         [(480, np.full((5, 4), 0.25))],       # 5 positions set to N
    ...                         []], alphabet="ACGT")                 # the reference
    """
    if not all(hasattr(ism, a) for a in ("inputs", "_run_edits", "seq_len")):        # an engine (base.ISMBase)
        raise ValueError(f"ism must be a FastISM or NaiveISM; got {type(ism).__name__} (wrap a model as "
                         f"fastism_torch.FastISM(model, seq_len))")
    if span is not None and (isinstance(span, bool) or not isinstance(span, (int, np.integer)) or span < 0):
        raise ValueError(f"span must be None or an int >= 0; got {span!r}")
    select = make_select(target, reduce)
    windows = parse_edits(edits, ism.num_chars, ism.seq_len, alphabet or getattr(ism, "alphabet", None))
    inp = ism.inputs(seqs)
    jobs, leads = plan_jobs(ism, windows, span, len(inp.seq), split=len(inp.args) == 1)
    planned = getattr(ism, "gm", None)
    hulls, ranges = _first_ranges(ism, jobs)
    N, E, out = len(inp.seq), len(jobs), None
    wide = ism.num_chars * float(np.mean([j.width for j in jobs]))
    with progress(ism, N * E, verbose, "multi_edits") as bar:
        probe = ism._reference(_chunk_inputs(ism, inp, 0, 1)) if N > 1 else []     # the outputs' sizes
        step = _chunk_size(ism, sum(math.prod(r.shape[1:]) for r in probe) + int(wide), E)
        for lo in range(0, N, step):
            hi = min(N, lo + step)
            chunk = _chunk_inputs(ism, inp, lo, hi)
            ref = [r.cpu() for r in ism._reference(chunk, ranges)]      # (FastISM: the pass of the first call)
            if getattr(ism, "gm", None) is not planned:     # its first pass found the trace wrong: one op now
                jobs, leads = plan_jobs(ism, windows, span, len(inp.seq), split=len(inp.args) == 1)
                planned, (hulls, ranges) = ism.gm, _first_ranges(ism, jobs)
            ref_values = select(ref, ref)
            if out is None:
                shapes = [(N, E, *v.shape[1:]) for v in ref_values]
                check_fits(shapes, max_bytes, "multi_edits")
                out = [torch.empty(s) for s in shapes]
            for o, v in zip(out, ref_values):
                o[lo:hi] = v[:, None]
            bar.update((hi - lo) * sum(not j.run for j in jobs))
            call = _Call(chunk, ref, select, out, lo, bar)
            _run_hulls(ism, call, jobs, hulls)
            _run_sums(ism, call, jobs)
            _run_mutants(ism, call, jobs, leads)
    return ism._finish(out, inp)
