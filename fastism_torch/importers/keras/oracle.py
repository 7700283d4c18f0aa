"""Keras's own naive ISM (run by the worker, cached) and the comparison of a converted model against it."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...selfcheck import check_windows, max_difference, random_onehot
from .export import KerasExport
from .jobs import WorkerFailed, run_jobs


def keras_naive_ism(export: KerasExport, inputs: list[np.ndarray], seq_input_idx: int, s_idx, starts, values,
                    batch_size: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keras's own naive ISM, in the worker: outputs ``(E, *out)`` for edit ``e`` (sequence ``s_idx[e]`` with
    ``values[e]`` (``(width, C)``) written from position ``starts[e]``), and the reference outputs ``(N, *out)``.
    Results are cached next to the converted model."""
    res = keras_naive_ism_many([(export, inputs, seq_input_idx, s_idx, starts, values)], batch_size)[0]
    if isinstance(res, Exception):
        raise res
    return res


def keras_naive_ism_many(requests, batch_size: int = 256) -> list:
    """:func:`keras_naive_ism` for several ``(export, inputs, seq_input_idx, s_idx, starts, values)`` requests,
    one subprocess per Keras flavour. Returns ``(outputs, references)`` or a ``ValueError`` per request."""
    results: list = [None] * len(requests)
    groups: dict = {}
    with tempfile.TemporaryDirectory(prefix="fastism_torch_naive_") as d:
        for i, (export, inputs, seq_input_idx, s_idx, starts, values) in enumerate(requests):
            arrays = {"n_inputs": np.array(len(inputs)),
                      **{f"input_{k}": np.asarray(x, np.float32) for k, x in enumerate(inputs)},
                      "s_idx": np.asarray(s_idx, np.int64), "starts": np.asarray(starts, np.int64),
                      "values": np.asarray(values, np.float32)}
            h = hashlib.sha256(export.key.encode() + str(seq_input_idx).encode())
            for k in sorted(arrays):
                h.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
            cached = Path(export.cache_dir) / f"naive_{h.hexdigest()[:20]}.npz"
            if cached.exists():
                results[i] = _read_naive(cached)
                continue
            inp = os.path.join(d, f"in_{i}.npz")
            np.savez(inp, **arrays)
            args = ["naive", "--model", export.model_path, "--inputs", inp, "--out", str(cached) + ".tmp.npz",
                    "--seq-input-idx", str(seq_input_idx), "--batch-size", str(batch_size)]
            if export.custom_objects:
                args += ["--custom-objects", json.dumps(export.custom_objects)]
            if export.allow_unsafe:
                args.append("--allow-unsafe")
            groups.setdefault(bool(export.meta.get("legacy")), []).append((i, args, cached))
        for legacy, items in groups.items():
            try:
                outs = run_jobs([a for _, a, _ in items], legacy)
            except WorkerFailed as e:
                outs = [{"ok": False, "message": e.message}] * len(items)
            for (i, args, cached), out in zip(items, outs):
                if not out["ok"]:
                    results[i] = ValueError(f"Keras naive ISM failed: {out['message']}")
                    continue
                if os.path.exists(str(cached) + ".tmp.npz"):        # (absent: a duplicate request)
                    os.replace(str(cached) + ".tmp.npz", cached)
                results[i] = _read_naive(cached)
    return results


def _read_naive(path):
    with np.load(path) as z:
        n = int(z["n_outputs"])
        return [z[f"out_{i}"] for i in range(n)], [z[f"ref_{i}"] for i in range(n)]


def check_request(ism, ex: KerasExport, n_seqs: int = 2, n_ranges: int = 12, seed: int = 0) -> tuple:
    """A :func:`keras_naive_ism` request checking ``ism``: random one-hot sequences (other inputs normal),
    the first and last 3 windows of ``change_ranges`` plus ``n_ranges`` random ones, random one-hot values."""
    rng = np.random.default_rng(seed)
    L, C, idx = ism.seq_len, ism.num_chars, ism.seq_input_idx
    inputs = [random_onehot(n_seqs, L, C, "NLC", rng) if i == idx else
              rng.normal(size=(n_seqs, *[d or 1 for d in shape[1:]])).astype(np.float32)
              for i, (name, shape) in enumerate(ex.input_specs)]
    ranges = ism.change_ranges
    pick = check_windows(len(ranges), n_ranges, 3, rng)
    s_idx, r_idx = np.repeat(np.arange(n_seqs), len(pick)), np.tile(pick, n_seqs)
    values = random_onehot(len(s_idx), ranges[0][1] - ranges[0][0], C, "NLC", rng)
    starts = np.array([ranges[r][0] for r in r_idx])
    return ex, inputs, idx, s_idx, starts, values


def compare_with_keras(ism, request: tuple, keras_result, rtol: float = 1e-4) -> float:
    """Compare ``ism`` on ``request``'s edits with Keras's results; raise ``ValueError`` on a mismatch.

    Returns the largest absolute difference over outputs (reference predictions and mutated ones).
    """
    if isinstance(keras_result, Exception):
        raise keras_result
    ex, inputs, idx, s_idx, starts, values = request
    k_out, k_ref = keras_result
    starts_of = {s: r for r, (s, _) in enumerate(ism.change_ranges)}
    r_idx = np.array([starts_of[int(s)] for s in starts])
    with torch.no_grad():
        t_ref = ism.predict(inputs if len(inputs) > 1 else inputs[0])
        inp = ism.inputs([torch.as_tensor(x) for x in inputs] if len(inputs) > 1 else torch.as_tensor(inputs[0]))
        t_out = ism.edit_outputs(inp, s_idx, r_idx, torch.as_tensor(values))
    t_ref = t_ref if isinstance(t_ref, tuple) else (t_ref,)
    if len(k_ref) != len(t_ref):
        raise ValueError(f"the converted model has {len(t_ref)} outputs, Keras {len(k_ref)}")
    worst = 0.0
    for j, (kr, tr, ko, to) in enumerate(zip(k_ref, t_ref, k_out, t_out)):
        for what, k, t in (("predictions", kr, np.asarray(tr)),
                           ("outputs on mutated sequences", ko, to.detach().cpu().numpy())):
            if k.shape != t.shape:
                raise ValueError(f"output {j}: the converted model gives shape {t.shape[1:]}, Keras {k.shape[1:]}")
            diff, scale, ok = max_difference(k, t, rtol, atol=1e-6)
            worst = max(worst, diff)
            if not ok:
                raise ValueError(f"the converted model disagrees with Keras on output {j} ({what}): max |difference| "
                                 f"= {diff:.3g} at output scale {scale:.3g} (tolerance {rtol:g} relative). Please "
                                 "report this model; early_stop_layers may work around an engine problem.")
    return worst


def check_against_keras(ism, ex: KerasExport, rtol: float = 1e-4, **request_kw) -> float:
    """Compare ``ism`` with Keras's naive ISM on random sequences (see :func:`check_request`)."""
    req = check_request(ism, ex, **request_kw)
    return compare_with_keras(ism, req, keras_naive_ism_many([req])[0], rtol)
