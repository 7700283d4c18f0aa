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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from . import scores
from .errors import UserError, first_line
from .loading import Model, as_list, to_layout

__all__ = ["Model", "ScoreSpec", "Scores", "score", "target_names", "parse_replace", "parse_targets"]


@dataclass(frozen=True)
class ScoreSpec:
    """What to compute for each sequence.

    ``window``: positions to mutate ``(start, end)`` (default: all); ``replace_with``: a (4,) vector put at
    each position instead of full saturation; ``reduction``/``profile_axis``: per-target value of each
    output (see :func:`fastism_torch.scores.reduce_outputs`); ``targets``: indices into the reduced
    targets (default: all); ``rc_average``: average with the reverse-complement strand; ``raw``: keep the
    reduced mutant predictions.
    """
    window: tuple[int, int] | None = None
    replace_with: np.ndarray | None = None
    reduction: str = "none"
    profile_axis: int = -1
    targets: tuple[int, ...] | None = None
    rc_average: bool = False
    raw: bool = False

    def window_for(self, seq_len: int) -> tuple[int, int]:
        s, e = (0, seq_len) if self.window is None else self.window
        e = e + seq_len if e < 0 else e
        if not 0 <= s < e <= seq_len:
            raise UserError(f"the window (--start/--end) must satisfy 0 <= start < end <= {seq_len}; got {s}, {e}")
        return int(s), int(e)

    @property
    def n_bases(self) -> int:
        return 4 if self.replace_with is None else 1


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


# --------------------------------------------------------------------------------------------- scoring
def _as_model(model, seq_len: int) -> Model:
    if isinstance(model, Model):
        return model
    from torch import nn
    if isinstance(model, nn.Module):
        return Model.from_module(model, seq_len)
    raise TypeError(f"model must be a fastism_torch.loading.Model or a torch.nn.Module; got {type(model).__name__}")


def _reduce(outs: list, refs: list, spec: ScoreSpec, batch_ndims: int):
    import torch
    t = lambda xs: [torch.from_numpy(np.asarray(x)) for x in xs]   # noqa: E731
    try:
        return scores.reduce_outputs(t(outs), t(refs), spec.reduction, batch_ndims, spec.profile_axis).numpy()
    except ValueError as e:
        raise UserError(str(e)) from None


def predict(model: Model, x: np.ndarray, window) -> list:
    """The reference predictions per head (numpy), from the engine for ``window``."""
    eng = model.engine(window)
    return [np.asarray(r) for r in as_list(eng.predict(to_layout(x, eng.layout)))]


def target_names(model, x: np.ndarray, spec: ScoreSpec = ScoreSpec()) -> list[str]:
    """Names of the reduced targets (the model's names when it has as many, else indices), from one
    sequence's prediction; ``spec.targets`` is not applied."""
    model = _as_model(model, x.shape[2])
    window = spec.window_for(x.shape[2])
    try:
        refs = predict(model, x[:1].astype(np.float32), window)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"the model fails on the sequences ({first_line(e)})") from None
    n = _reduce(refs, refs, spec, 1).shape[-1]
    names = model.target_names
    return [str(t) for t in names] if names is not None and len(names) == n else [str(i) for i in range(n)]


def _raw_edits(model: Model, x: np.ndarray, window: tuple, replace) -> list:
    """Raw model outputs per head, ``(n, K, Lw, *out)`` in forward (NCL) base/position order."""
    eng = model.engine(window)
    full = window == (0, model.seq_len)
    # an engine that cannot restrict its ranges mutates everything: slice its result
    ranges = getattr(eng, "change_ranges", None)
    pick = np.arange(*window) if not full and ranges is not None and len(ranges) == model.seq_len else None
    xin = to_layout(x, eng.layout)
    if replace is None and (full or pick is not None):
        outs = as_list(eng.saturation_mutagenesis(xin))
        outs = [np.swapaxes(o, 1, 2) if eng.layout == "NLC" else np.asarray(o) for o in outs]   # (n, 4, L, *out)
        return outs if pick is None else [o[:, :, pick] for o in outs]
    per_base = []
    for r in ([replace] if replace is not None else list(np.eye(4, dtype=np.float32))):
        o = [np.asarray(a) for a in as_list(eng(xin, replace_with=r))]        # (n, R, *out)
        per_base.append(o if pick is None else [a[:, pick] for a in o])
    return [np.stack(hs, axis=1) for hs in zip(*per_base)]


def _strand(model: Model, x: np.ndarray, window: tuple, replace, spec: ScoreSpec):
    """Reduced values ``(n, K, Lw, T_all)`` for the edits and ``(n, T_all)`` for the references."""
    refs = predict(model, x, window)
    muts = _raw_edits(model, x, window, replace)
    return _reduce(muts, [r[:, None, None] for r in refs], spec, 3), _reduce(refs, refs, spec, 1)


def score(model, onehot: np.ndarray, spec: ScoreSpec = ScoreSpec()) -> Scores:
    """ISM scores of one-hot sequences ``(N, 4, L)`` (ACGT) under ``spec``.

    ``model`` is a :class:`~fastism_torch.loading.Model` (engines are built once per window and reused
    across calls) or an ``nn.Module`` taking ``(N, 4, L)``.
    """
    x = np.asarray(onehot, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != 4:
        raise UserError(f"sequences must be one-hot (N, 4, L); got shape {x.shape}")
    model = _as_model(model, x.shape[2])
    window = spec.window_for(x.shape[2])
    v_mut, v_ref = _strand(model, x, window, spec.replace_with, spec)
    if spec.rc_average:
        L = x.shape[2]
        rc_rep = None if spec.replace_with is None else spec.replace_with[::-1].copy()
        m2, r2 = _strand(model, scores.reverse_complement(x), (L - window[1], L - window[0]), rc_rep, spec)
        v_mut = (v_mut + scores.from_reverse_strand(m2)) / 2
        v_ref = (v_ref + r2) / 2
    v_mut = np.asarray(scores.select_targets(v_mut, spec.targets))
    v_ref = np.asarray(scores.select_targets(v_ref, spec.targets))
    ism = scores.ism_scores(v_mut, v_ref, centre=spec.replace_with is None)
    seq = x[:, :, window[0]:window[1]]
    hyp = scores.attributions(ism, seq, hypothetical=True)
    return Scores(ism.astype(np.float32), hyp, (hyp * seq).astype(np.float32), v_ref.astype(np.float32),
                  v_mut.astype(np.float32) if spec.raw else None)
