"""The scoring pipeline: one-hot sequences in; ISM scores, contributions and predictions out.

What the ``fastism-torch ism`` command computes, callable from Python::

    from fastism_torch import pipeline
    model = pipeline.Model.from_module(net, seq_len=1000)        # or loading.load_model("model.h5")
    spec = pipeline.ScoreSpec(reduction="counts", rc_average=True)
    s = pipeline.score(model, onehot, spec)                       # onehot: (N, 4, L)
    s.ism            # (N, 4, Lw, T) mutant - reference, mean-centred over the 4 bases
    s.hypothetical   # (N, 4, Lw) averaged over targets: modisco's hypothetical contributions
    s.projected      # (N, 4, Lw) the same on the observed base only

Outputs are reduced per target (:data:`fastism_torch.scores.REDUCTIONS`: e.g. a profile head's log
counts or Jensen-Shannon distance to the reference profile), optionally averaged with the reverse
complement strand, and restricted to chosen targets.  With a fixed replacement (``replace_with``, e.g. N)
there is one row per position (K = 1) and no centring.

User intent (:class:`ScoreSpec`) is resolved once against the model and the sequence length by
:func:`resolve` into a :class:`ResolvedSpec` (the window checked, the sets of scores and their target
names known); everything downstream reads the resolved spec.  ``reduction="auto"`` (the command line's
default) scores a profile model's counts and profile heads as two sets (:func:`score_heads`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import numpy as np

from . import scores
from .errors import UserError, first_line
from .loading import Model, as_list, to_layout

__all__ = ["Model", "ScoreSpec", "ResolvedSpec", "Head", "Scores", "resolve", "score", "score_heads", "target_names",
           "parse_replace", "parse_targets"]


@dataclass(frozen=True)
class ScoreSpec:
    """What to compute for each sequence, as the user asked for it.

    ``window``: positions to mutate ``(start, end)`` (default: all; a negative end counts from the end);
    ``replace_with``: a (4,) vector put at each position instead of full saturation;
    ``reduction``/``profile_axis``: per-target value of each output (see
    :func:`fastism_torch.scores.reduce_outputs`), or ``"auto"``: for a model with several outputs one of
    which has a length axis (BPNet, ChromBPNet), two sets of scores, ``counts`` and ``profile``, else
    ``none``; ``targets``: indices into the reduced targets (default: all); ``rc_average``: average with
    the reverse-complement strand; ``raw``: keep the reduced mutant predictions.

    :func:`resolve` turns it, with the model and the sequences' length, into a :class:`ResolvedSpec`.
    """
    window: tuple[int, int] | None = None
    replace_with: np.ndarray | None = None
    reduction: str = "none"
    profile_axis: int = -1
    targets: tuple[int, ...] | None = None
    rc_average: bool = False
    raw: bool = False


@dataclass(frozen=True)
class Head:
    """One set of scores: ``name`` (None: a single set, stored at the top of the result file), the
    ``reduction`` that makes it, the ``targets`` kept (indices into the reduced values; None: all) and the
    kept targets' names."""
    name: str | None
    reduction: str
    target_names: tuple[str, ...]
    targets: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ResolvedSpec:
    """A :class:`ScoreSpec` resolved once against a model and a sequence length: the window as
    ``0 <= start < end <= seq_len``, the sets of scores (:class:`Head`) with their target names, and
    ``values_per_seq``, the number of raw output values per sequence (all heads)."""
    seq_len: int
    window: tuple[int, int]
    heads: tuple[Head, ...]
    values_per_seq: int
    replace_with: np.ndarray | None = None
    profile_axis: int = -1
    rc_average: bool = False
    raw: bool = False

    @property
    def n_bases(self) -> int:
        """Rows per position: 4 bases, or 1 with a fixed replacement."""
        return 4 if self.replace_with is None else 1

    @property
    def full(self) -> bool:
        return self.window == (0, self.seq_len)


class Scores(NamedTuple):
    ism: np.ndarray                 # (N, K, Lw, T)
    hypothetical: np.ndarray        # (N, 4, Lw)
    projected: np.ndarray           # (N, 4, Lw)
    y_ref: np.ndarray               # (N, T)
    raw: np.ndarray | None          # (N, K, Lw, T) with spec.raw


# --------------------------------------------------------------------------------------------- options
def parse_replace(spec) -> np.ndarray | None:
    """``0``/``N``, ``uniform`` or ``"a,c,g,t"`` as a (4,) replacement vector; None stays None."""
    if spec is None:
        return None
    txt = str(spec).strip().upper()
    if txt in ("0", "ZERO", "N"):
        return np.zeros(4, dtype=np.float32)
    if txt == "UNIFORM":
        return np.full(4, 0.25, dtype=np.float32)
    try:
        v = np.asarray([float(t) for t in txt.split(",")], dtype=np.float32)
    except ValueError:
        v = None
    if v is None or v.shape != (4,) or not np.isfinite(v).all():
        raise UserError(f"--replace-with must be 0, N, uniform or 4 comma-separated numbers (A,C,G,T); got {spec!r}")
    return v


def parse_targets(spec, names: Sequence[str]) -> list | None:
    """``"name,3,-1"`` as indices into ``names``; None or "" means all."""
    if spec is None or spec == "":
        return None
    n, out = len(names), []
    for tok in str(spec).split(","):
        tok = tok.strip()
        if tok in names:
            out.append(list(names).index(tok))
        elif tok.lstrip("-").isdigit() and -n <= int(tok) < n:
            out.append(int(tok) % n)
        else:
            shown = ", ".join(names[:20]) + (", ..." if n > 20 else "")
            raise UserError(f"target {tok!r} does not exist; the model has {n} target(s): {shown}")
    return out


# --------------------------------------------------------------------------------------------- resolving
def _as_model(model, seq_len: int) -> Model:
    if isinstance(model, Model):
        return model
    from torch import nn
    if isinstance(model, nn.Module):
        return Model.from_module(model, seq_len)
    raise TypeError(f"model must be a fastism_torch.loading.Model or a torch.nn.Module; got {type(model).__name__}")


def _as_onehot(onehot) -> np.ndarray:
    x = np.asarray(onehot, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != 4:
        raise UserError(f"sequences must be one-hot (N, 4, L); got shape {x.shape}")
    return x


def check_window(window, seq_len: int) -> tuple[int, int]:
    """``(start, end)`` with ``0 <= start < end <= seq_len`` (None: every position; a negative end counts
    from the end)."""
    s, e = (0, seq_len) if window is None else window
    s, e = (0 if s is None else s), (seq_len if e is None else e)
    e = e + seq_len if e < 0 else e
    if not 0 <= s < e <= seq_len:
        raise UserError(f"the window (--start/--end) must satisfy 0 <= start < end <= {seq_len}; got {s}, {e}")
    return int(s), int(e)


def _reduce(outs: list, refs: list, reduction: str, profile_axis: int, batch_ndims: int):
    import torch
    t = lambda xs: [torch.from_numpy(np.asarray(x)) for x in xs]   # noqa: E731
    try:
        return scores.reduce_outputs(t(outs), t(refs), reduction, batch_ndims, profile_axis).numpy()
    except ValueError as e:
        raise UserError(str(e)) from None


def predict(model: Model, x: np.ndarray, window) -> list:
    """The reference predictions per head (numpy), from the engine for ``window``."""
    eng = model.engine(window)
    return [np.asarray(r) for r in as_list(eng.predict(to_layout(x, eng.layout)))]


def auto_reductions(refs: list) -> tuple[str, ...]:
    """``("counts", "profile")`` for a model with several outputs one of which has a length axis (2 or more
    dimensions per sequence: BPNet, ChromBPNet), else ``("none",)`` (every output value a target)."""
    return ("counts", "profile") if len(refs) > 1 and max(r.ndim - 1 for r in refs) >= 2 else ("none",)


def _head(name, reduction: str, refs: list, names, spec: ScoreSpec, target) -> Head:
    n = _reduce(refs, refs, reduction, spec.profile_axis, 1).shape[-1]
    names = [str(t) for t in names] if names is not None and len(names) == n else [str(i) for i in range(n)]
    idx = parse_targets(target, names) if target is not None else spec.targets
    if idx is not None and not all(-n <= int(i) < n for i in idx):
        raise UserError(f"targets {list(idx)} out of range: the {reduction!r} scores have {n} target(s)")
    idx = None if idx is None else tuple(int(i) % n for i in idx)
    return Head(name, reduction, tuple(names if idx is None else [names[i] for i in idx]), idx)


def resolve(model, onehot, spec: ScoreSpec = ScoreSpec(), target: str | None = None) -> ResolvedSpec:
    """Resolve ``spec`` once for ``model`` and sequences ``onehot`` (N, 4, L): check the window, and
    predict one sequence to learn the sets of scores and their targets.  ``target`` ("name,3,-1", the
    command line's ``--target``) replaces ``spec.targets``; with several sets it applies to each."""
    x = _as_onehot(onehot)
    seq_len = x.shape[2]
    model = _as_model(model, seq_len)
    window = check_window(spec.window, seq_len)
    if spec.reduction != "auto" and spec.reduction not in scores.REDUCTIONS:
        raise UserError(f"reduction must be 'auto' or one of {scores.REDUCTIONS}; got {spec.reduction!r}")
    try:
        refs = predict(model, x[:1], window)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"the model fails on the sequences ({first_line(e)})") from None
    reductions = auto_reductions(refs) if spec.reduction == "auto" else (spec.reduction,)
    heads = tuple(_head(r if len(reductions) > 1 else None, r, refs, model.target_names, spec, target)
                  for r in reductions)
    return ResolvedSpec(seq_len, window, heads, sum(int(np.prod(r.shape[1:])) for r in refs), spec.replace_with,
                        spec.profile_axis, spec.rc_average, spec.raw)


def target_names(model, x: np.ndarray, spec: ScoreSpec = ScoreSpec()) -> list[str]:
    """Names of the reduced targets of the first set of scores (the model's names when it has as many,
    else indices), from one sequence's prediction; ``spec.targets`` is not applied."""
    return list(resolve(model, x, replace(spec, targets=None)).heads[0].target_names)


# --------------------------------------------------------------------------------------------- scoring
def _raw_edits(model: Model, x: np.ndarray, window: tuple, replace_with, full: bool) -> list:
    """Raw model outputs per head, ``(n, K, Lw, *out)`` in forward (NCL) base/position order; the engine
    for ``window`` mutates exactly the window (:meth:`fastism_torch.loading.Model.engine`)."""
    eng = model.engine(window)
    xin = to_layout(x, eng.layout)
    if replace_with is None and full:
        outs = as_list(eng.saturation_mutagenesis(xin))
        return [np.swapaxes(o, 1, 2) if eng.layout == "NLC" else np.asarray(o) for o in outs]   # (n, 4, L, *out)
    per_base = []
    for r in ([replace_with] if replace_with is not None else list(np.eye(4, dtype=np.float32))):
        per_base.append([np.asarray(a) for a in as_list(eng(xin, replace_with=r))])        # (n, R, *out)
    return [np.stack(hs, axis=1) for hs in zip(*per_base)]


def _strand(model: Model, x: np.ndarray, spec: ResolvedSpec, window: tuple, replace_with) -> dict:
    """Per head: reduced values ``(n, K, Lw, T_all)`` for the edits and ``(n, T_all)`` for the references."""
    refs = predict(model, x, window)
    muts = _raw_edits(model, x, window, replace_with, full=spec.full)
    ax = spec.profile_axis
    return {h: (_reduce(muts, [r[:, None, None] for r in refs], h.reduction, ax, 3),
                _reduce(refs, refs, h.reduction, ax, 1)) for h in spec.heads}


def _scores(v_mut: np.ndarray, v_ref: np.ndarray, head: Head, spec: ResolvedSpec, seq: np.ndarray) -> Scores:
    v_mut = np.asarray(scores.select_targets(v_mut, head.targets))
    v_ref = np.asarray(scores.select_targets(v_ref, head.targets))
    ism = scores.ism_scores(v_mut, v_ref, centre=spec.replace_with is None)
    hyp = scores.attributions(ism, seq, hypothetical=True)
    return Scores(ism.astype(np.float32), hyp, (hyp * seq).astype(np.float32), v_ref.astype(np.float32),
                  v_mut.astype(np.float32) if spec.raw else None)


def score_heads(model, onehot: np.ndarray, spec: ScoreSpec | ResolvedSpec = ScoreSpec()) -> dict:
    """ISM scores of one-hot sequences ``(N, 4, L)`` (ACGT), one :class:`Scores` per set of scores
    (``{head.name: Scores}``; the name is None for a single set).

    ``model`` is a :class:`~fastism_torch.loading.Model` (engines are built once per window and reused
    across calls) or an ``nn.Module`` taking ``(N, 4, L)``; ``spec`` a :class:`ScoreSpec` (resolved here)
    or a :class:`ResolvedSpec` from :func:`resolve`.
    """
    x = _as_onehot(onehot)
    model = _as_model(model, x.shape[2])
    if isinstance(spec, ScoreSpec):
        spec = resolve(model, x, spec)
    elif x.shape[2] != spec.seq_len:
        raise UserError(f"the spec was resolved for length {spec.seq_len}; the sequences have length {x.shape[2]}")
    w, L = spec.window, spec.seq_len
    values = _strand(model, x, spec, w, spec.replace_with)
    if spec.rc_average:
        rc_rep = None if spec.replace_with is None else spec.replace_with[::-1].copy()
        rc = _strand(model, scores.reverse_complement(x), spec, (L - w[1], L - w[0]), rc_rep)
        values = {h: ((m + scores.from_reverse_strand(rc[h][0])) / 2, (r + rc[h][1]) / 2)
                  for h, (m, r) in values.items()}
    seq = x[:, :, w[0]:w[1]]
    return {h.name: _scores(m, r, h, spec, seq) for h, (m, r) in values.items()}


def score(model, onehot: np.ndarray, spec: ScoreSpec | ResolvedSpec = ScoreSpec()) -> Scores:
    """ISM scores of one-hot sequences ``(N, 4, L)`` under ``spec``, for a spec with one set of scores
    (any reduction but ``"auto"`` on a profile model: use :func:`score_heads` there)."""
    out = score_heads(model, onehot, spec)
    if len(out) != 1:
        raise UserError(f"the spec gives {len(out)} sets of scores ({', '.join(map(str, out))}); use score_heads")
    return next(iter(out.values()))
