"""From raw ISM predictions to scores.

The convention is tangermeme's (``tangermeme.saturation_mutagenesis``): for every position and base, the
prediction on the mutant minus the prediction on the reference, mean-centred across the 4 bases at each
position; averaged over the targets; projected onto the observed base (multiplied by the one-hot
sequence) unless ``hypothetical``.

Profile models give a vector or matrix per sequence; a *reduction* turns each model output into one number
per target (task) first:

``none``     every output value is a target (all heads flattened and concatenated).
``counts``   the counts head (the output with one value per task) if the model has one; else the sum of the
             profile head over its profile axis.
``profile``  ``sum(y * softmax(y))`` over the profile axis of the profile head (logits), per task.
``log2fc``   log2 fold change of the total signal: the counts head is taken as natural-log counts, so the
             score is ``(c_mut - c_ref) / ln 2``; without one, ``log2(sum(profile))`` (profile must be > 0).
``jsd``      Jensen-Shannon divergence (base 2) between ``softmax(profile)`` of the mutant and of the
             reference, per task; the reference scores 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

REDUCTIONS = ("none", "counts", "profile", "log2fc", "jsd")


def _heads(outs, sample_ndims: Sequence[int]):
    """Split heads into (profile, counts) by their per-sample rank: profile >= 2 dims, counts == 1 dim."""
    profile = next((o for o, d in zip(outs, sample_ndims) if d >= 2), None)
    counts = [o for o, d in zip(outs, sample_ndims) if d <= 1]
    return profile, (counts[-1] if counts else None)


def _tasks_last(y: torch.Tensor, batch_ndims: int, profile_axis: int) -> torch.Tensor:
    """Profile head as ``(*batch, tasks, P)``: the profile axis last, the other per-sample axes flattened."""
    nd = y.dim() - batch_ndims
    ax = batch_ndims + (profile_axis % nd)
    y = y.movedim(ax, -1)
    return y.reshape(*y.shape[:batch_ndims], -1, y.shape[-1])


def reduce_outputs(outs: list, refs: list, reduction: str, batch_ndims: int, profile_axis: int = -1
                   ) -> torch.Tensor:
    """One value per target for every row: ``(*batch, T)``.

    ``outs`` are the model's heads with ``batch_ndims`` leading batch axes; ``refs`` the reference heads
    broadcastable to them (used by ``jsd``).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    outs = [o.double() for o in outs]
    batch = outs[0].shape[:batch_ndims]
    sample_ndims = [o.dim() - batch_ndims for o in outs]
    if reduction == "none":
        return torch.cat([o.reshape(*batch, -1) for o in outs], dim=-1)
    profile, counts = _heads(outs, sample_ndims)
    if reduction in ("counts", "log2fc") and counts is not None:
        c = counts.reshape(*batch, -1)
        return c if reduction == "counts" else c / math.log(2)
    if profile is None:
        raise ValueError(f"reduction {reduction!r} needs a profile output (at least 2 dimensions per sequence); "
                         f"the model's outputs have per-sequence shapes {[tuple(o.shape[batch_ndims:]) for o in outs]}")
    p = _tasks_last(profile, batch_ndims, profile_axis)
    if reduction == "counts":
        return p.sum(-1)
    if reduction == "log2fc":
        tot = p.sum(-1)
        if (tot <= 0).any():
            raise ValueError("reduction 'log2fc' without a counts head needs a positive total profile")
        return torch.log2(tot)
    if reduction == "profile":
        return (p * torch.softmax(p, -1)).sum(-1)
    # jsd
    r_profile, _ = _heads([r.double() for r in refs], sample_ndims)
    q = _tasks_last(r_profile, batch_ndims, profile_axis)
    lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    m = torch.logaddexp(lp, lq) - math.log(2)
    kl = lambda la, lb: (la.exp() * (la - lb)).sum(-1)   # noqa: E731
    return ((0.5 * kl(lp, m) + 0.5 * kl(lq, m)) / math.log(2)).clamp_min(0)


def select_targets(values: torch.Tensor, targets: Sequence[int] | None) -> torch.Tensor:
    return values if targets is None else values[..., list(targets)]


def ism_scores(mut: np.ndarray, ref: np.ndarray, centre: bool = True) -> np.ndarray:
    """``mut (N, K, L, T) - ref (N, T)``, mean-centred across the K bases when ``centre``."""
    d = mut - ref[:, None, None, :]
    if centre:
        d = d - d.mean(axis=1, keepdims=True)
    return d


def attributions(ism: np.ndarray, onehot: np.ndarray, hypothetical: bool = False) -> np.ndarray:
    """``(N, 4, L)``: the scores averaged over targets, projected onto the observed base unless hypothetical.

    With one row per position (``--replace-with``), the row is broadcast to the 4 bases before projecting.
    """
    a = ism.mean(axis=-1)
    if a.shape[1] == 1:
        a = np.broadcast_to(a, (a.shape[0], 4, a.shape[2]))
    return (a if hypothetical else a * onehot).astype(np.float32)


def reverse_complement(x: np.ndarray) -> np.ndarray:
    """Reverse complement of one-hot ``(N, 4, L)`` ACGT (flip both axes)."""
    return np.ascontiguousarray(x[:, ::-1, ::-1])


def from_reverse_strand(values: np.ndarray) -> np.ndarray:
    """Map ``(N, K, Lw, T)`` values computed on the reverse complement back to forward coordinates.

    Mutating base ``b`` at position ``i`` is mutating ``3 - b`` at ``L - 1 - i`` on the other strand.
    """
    return np.ascontiguousarray(values[:, ::-1, ::-1])
