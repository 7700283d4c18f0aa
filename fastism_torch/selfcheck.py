"""The self-check: a :class:`~fastism_torch.fast.FastISM` against :class:`~fastism_torch.naive.NaiveISM` on
random one-hot sequences, and the pieces the Keras check (:mod:`.importers.keras.oracle`) shares with it:
which windows to check, random sequences, and how two outputs are compared.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Inputs
from .naive import NaiveISM
from .precision import TF32_RTOL, float32_rtol


def check_windows(n_windows: int, n_random: int, n_edge: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the windows to check, sorted and distinct: the first and last ``n_edge`` (the padded edges,
    where off-by-one errors live) and ``n_random`` drawn at random."""
    edge = set(range(min(n_edge, n_windows))) | set(range(max(0, n_windows - n_edge), n_windows))
    return np.array(sorted(edge | set(rng.integers(0, n_windows, n_random).tolist())), dtype=np.int64)


def random_onehot(n: int, length: int, num_chars: int, layout: str = "NLC",
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` random one-hot sequences, float32, ``(n, length, num_chars)`` (``"NLC"``) or ``(n, num_chars,
    length)`` (``"NCL"``)."""
    rng = rng or np.random.default_rng(0)
    x = np.eye(num_chars, dtype=np.float32)[rng.integers(0, num_chars, (n, length))]
    return np.ascontiguousarray(x.transpose(0, 2, 1)) if layout == "NCL" else x


def max_difference(expected, got, rtol: float, floor: float = 1e-3, atol: float = 1e-7) -> tuple[float, float, bool]:
    """``(max |expected - got|, scale, within tolerance)``: the scale is ``max |expected|``, the tolerance
    ``rtol * max(scale, floor) + atol`` (outputs smaller than ``floor`` are compared at that scale).  Empty
    outputs agree."""
    e = torch.as_tensor(expected).detach().double().cpu()
    g = torch.as_tensor(got).detach().double().cpu()
    if not e.numel():
        return 0.0, 0.0, True
    scale = float(e.abs().max())
    diff = float((e - g).abs().max())
    return diff, scale, diff <= rtol * max(scale, floor) + atol


def default_rtol(device: torch.device, dtype: torch.dtype | None, tf32: bool) -> float:
    """Float32: 1e-5 of the output scale (5e-5 on GPUs); TF32: 5e-3; 16-bit dtypes: 5e-2."""
    rtol = float32_rtol(device) if dtype in (None, torch.float32) else 5e-2
    return max(rtol, TF32_RTOL) if tf32 else rtol


@torch.no_grad()
def check_against_naive(fast, inp: Inputs | None = None, *, n_seqs: int = 2, n_ranges: int = 24,
                        rtol: float | None = None, seed: int = 0) -> float:
    """Run ``fast``'s edit graph and :class:`NaiveISM` (on the same model copy) on ``n_seqs`` random one-hot
    sequences at the edge windows and ``n_ranges`` random ones, with random one-hot values; other model
    inputs are taken from ``inp``.  Returns the largest absolute difference; raises ``RuntimeError`` with
    the plan if it exceeds ``rtol`` (:func:`default_rtol`) times the output scale."""
    rtol = default_rtol(fast.device, fast.dtype, fast.tf32) if rtol is None else rtol
    rng = np.random.default_rng(seed)
    seqs = torch.as_tensor(random_onehot(n_seqs, fast.seq_len, fast.num_chars, fast.layout, rng)).to(fast.device)
    args = [seqs]
    if inp is not None:
        args = [a[:n_seqs] if isinstance(a, torch.Tensor) else a for a in inp.args]
        n_seqs = min(n_seqs, args[fast.seq_input_idx].shape[0])
        args[fast.seq_input_idx] = seqs[:n_seqs]
    chk = Inputs(args[fast.seq_input_idx], args, False, fast.device)
    pick = check_windows(len(fast.change_ranges), n_ranges, 4, rng)
    s_idx, r_idx = np.repeat(np.arange(n_seqs), len(pick)), np.tile(pick, n_seqs)
    width = fast.change_ranges[0][1] - fast.change_ranges[0][0]
    values = torch.as_tensor(random_onehot(len(s_idx), width, fast.num_chars, "NLC", rng)).to(fast.device)

    cheaper, fast.naive_when_cheaper = fast.naive_when_cheaper, False     # check the fast path itself
    try:
        fast_out = fast.edit_outputs(chk, s_idx, r_idx, values)
    finally:
        fast.naive_when_cheaper = cheaper
    naive = NaiveISM(fast.model, fast.seq_len, batch_size=256, copy_model=False, **fast.settings())
    slow_out = naive.edit_outputs(chk, s_idx, r_idx, values)
    worst = 0.0
    for f, s in zip(fast_out, slow_out):
        diff, scale, ok = max_difference(s, f, rtol)
        worst = max(worst, diff)
        if not ok:
            raise RuntimeError(
                f"FastISM differs from NaiveISM: max |difference| = {diff:.3g} at output scale {scale:.3g} "
                f"(tolerance {rtol:g} relative). Please report this model; pass early_stop_layers to "
                f"run the suspicious part in full.\n{fast.plan}")
    return worst
