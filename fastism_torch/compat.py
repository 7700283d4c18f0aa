"""``saturation_mutagenesis(model, X, ...)`` with tangermeme 1.6's signature, results and conventions.

For users of ``tangermeme.saturation_mutagenesis``: change the import, keep the call.  The predictions for the
single-base edits come from :class:`~fastism_torch.FastISM` (built once per model, weights and settings:
:mod:`.engine_cache`); everything around them follows tangermeme 1.6 line by line:

- ``X`` is held as int8 (a soft encoding is truncated toward zero, with a warning), a ``PackedSequence`` is
  decoded; ``args`` are extra model inputs with ``X``'s batch size, given to the model as ``model(X, *args)``
  in float;
- ``end`` < 0 means ``length + 1 + end`` (``end=-1`` includes the last position);
- the edits of a column that is a clean one-hot of one character leave out that character (the identity
  substitution), whose prediction is the reference ``y0``; an all-zero (``N``) or multi-hot column gets every
  character;
- ``raw_outputs=True`` returns ``(y0, y_hat)``: ``y0`` as the model returns it, ``y_hat`` of shape
  ``(N, len(alphabet), end - start, *output_shape)``, a list of each for a model with several outputs;
- otherwise the attributions: ``y_hat[:, :, :, target] - y0[:, None, None, target]``, mean-centred across the
  alphabet, averaged over the remaining output axes, times ``X[:, :, start:end]`` unless ``hypothetical``.

Results are on the CPU in the dtype tangermeme returns (the model's output dtype; under ``dtype=float16`` or
``bfloat16`` that of the model run under autocast).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .engine_cache import cache_info, cached_engine, clear_cache
from .errors import InputWarning

__all__ = ["saturation_mutagenesis", "SaturationMutagenesisRawResult", "cached_engine", "clear_cache",
           "cache_info"]

#: bytes of ``y_hat`` computed per chunk of sequences (the engine's edit outputs and the assembled grid)
CHUNK_BYTES = 256 * 2 ** 20
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class SaturationMutagenesisRawResult(NamedTuple):
    """What ``raw_outputs=True`` returns, as tangermeme's namedtuple of the same name: ``y0, y_hat = ...``."""
    y0: torch.Tensor | list
    y_hat: torch.Tensor | list


# ------------------------------------------------------------------ validation (tangermeme's rules)
def _as_int8(X) -> torch.Tensor:
    """``X`` as tangermeme holds it: int8 on the CPU (soft values truncated toward zero, with a warning)."""
    if hasattr(X, "to_one_hot") and not isinstance(X, torch.Tensor):      # tangermeme's PackedSequence
        X = X.to_one_hot()
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"X must be a torch.Tensor (N, len(alphabet), length); got {type(X).__name__}")
    if X.dim() != 3 or X.shape[0] == 0 or X.shape[2] == 0:
        raise ValueError(f"X must have shape (N, len(alphabet), length) with N, length > 0; got {tuple(X.shape)}")
    if X.is_floating_point() and not torch.equal(X, X.round()):
        warnings.warn("X contains non-integer values which will be truncated toward zero by the int8 cast; values "
                      "with magnitude < 1 become 0. Pass a hard one-hot encoding to avoid silently zeroing "
                      "positions.", InputWarning, stacklevel=3)
    return X.type(torch.int8).cpu()


def _check_span(start: int, end: int, length: int) -> int:
    """``end`` resolved (``< 0``: ``length + 1 + end``); ``0 <= start < end <= length`` or ValueError."""
    if end < 0:
        end = length + 1 + end
    if start < 0 or end > length or start >= end:
        raise ValueError(f"start and end must satisfy 0 <= start < end <= length; got start={start}, end={end} "
                         f"for length {length}.")
    return int(end)


def _check_args(args, n: int) -> tuple:
    if args is None:
        return ()
    if isinstance(args, torch.Tensor) or not isinstance(args, (tuple, list)):
        raise ValueError(f"args must be a tuple or list of tensors (extra model inputs); got {type(args).__name__}")
    out = []
    for i, a in enumerate(args):
        a = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        if not isinstance(a, torch.Tensor) or a.dim() == 0 or a.shape[0] != n:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"args[{i}] must be a tensor with the same first dimension as X ({n}); got {shape}")
        out.append(a)
    return tuple(out)


def _resolve(model: nn.Module, dtype, device) -> tuple[torch.dtype, torch.device]:
    """tangermeme's defaults (the model's dtype; CUDA when available), limited to what the engine runs."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else torch.device(device)
    floats = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if floats - {torch.float32}:
        raise ValueError(f"the model's parameters are {sorted(map(str, floats))}; fastism_torch runs float32 models "
                         "(call model.float(); dtype=torch.float16 or torch.bfloat16 runs it under autocast)")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype.startswith(("float", "bfloat", "half")) else None
        if dtype is None:
            raise ValueError("dtype must be float32, float16 or bfloat16 (a torch.dtype or its name)")
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype} is not supported: fastism_torch runs float32, or float16/bfloat16 under "
                         "autocast")
    return dtype, device


def _autocast(device: torch.device, dtype: torch.dtype):
    """tangermeme's autocast rule: CPU for 16-bit dtypes, CUDA for anything but float32."""
    if dtype != torch.float32 and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def _output_dtypes(engine, inputs: list, dtype: torch.dtype) -> list[torch.dtype] | torch.dtype:
    """The dtype of each model output as tangermeme's ``predict`` returns it (one sequence, run its way: inputs
    in ``dtype``, under autocast); a list for a model with several outputs, ValueError for other structures."""
    dev = engine.device
    with torch.no_grad(), _autocast(dev, dtype):
        out = engine.model(*[t[:1].to(dev, dtype) for t in inputs])
    if isinstance(out, torch.Tensor):
        return out.dtype
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return [o.dtype for o in out]
    raise ValueError(f"Cannot interpret output from model: it returned {type(out).__name__}; tangermeme takes a "
                     "tensor or a list/tuple of tensors")


# ------------------------------------------------------------------ the edits and their predictions
def _edits(X8: torch.Tensor, start: int, end: int):
    """``(sequence, character, position - start)`` of every edit in ``[start, end)``, sequence-major.

    tangermeme's rule: a character whose column is a clean one-hot of it is the identity substitution (its
    prediction is ``y0``) and is left out; an all-zero (``N``) or multi-hot column keeps every character.
    """
    ref = X8[:, :, start:end]
    identity = (ref == 1) & (ref.sum(dim=1, keepdim=True) == 1)
    return torch.nonzero(~identity, as_tuple=True)


def _predict(engine, X8: torch.Tensor, args: tuple, start: int, end: int, verbose: bool):
    """``y0`` (``(N, *out)``) and ``y_hat`` (``(N, C, end - start, *out)``) per model output, float32 on the CPU.

    Chunks of sequences bounded by :data:`CHUNK_BYTES` of ``y_hat`` (64 at most); each chunk's grid is filled
    with its ``y0`` (the identity substitutions) and its edits' predictions (:meth:`FastISM.edit_outputs`) are
    written over it.
    """
    from tqdm.auto import tqdm
    n, C, _ = X8.shape
    W = end - start
    inputs = [X8.float(), *(a.float() for a in args)]
    y0, y_hat, step = None, None, 1
    eye = torch.eye(C)
    with tqdm(total=n, disable=not verbose, unit="seq", desc="saturation_mutagenesis", leave=False) as bar:
        lo = 0
        while lo < n:
            hi = min(n, lo + step)
            chunk = [t[lo:hi] for t in inputs]
            ref = engine.predict(chunk)
            ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
            if y0 is None:                      # the first sequence sizes the chunks
                y0 = [torch.empty((n, *r.shape[1:]), dtype=torch.float32) for r in ref]
                y_hat = [torch.empty((n, C, W, *r.shape[1:]), dtype=torch.float32) for r in ref]
                per_seq = max(1, 4 * C * W * sum(int(np.prod(r.shape[1:])) for r in ref))
                step = int(np.clip(CHUNK_BYTES // per_seq, 1, 64))
            for y, yh, r in zip(y0, y_hat, ref):
                y[lo:hi] = r
                yh[lo:hi] = r.reshape(hi - lo, 1, 1, *r.shape[1:])
            s, c, p = _edits(X8[lo:hi], start, end)
            if len(s):
                outs = engine.edit_outputs(engine.inputs(chunk), s.numpy(), p.numpy(), eye[c][:, None, :])
                rows = (s * C + c) * W + p
                for yh, o in zip(y_hat, outs):
                    yh[lo:hi].view(-1, *o.shape[1:])[rows] = o.to("cpu", torch.float32)
            bar.update(hi - lo)
            lo = hi
    return y0, y_hat


def _attributions(X8: torch.Tensor, y0: torch.Tensor, y_hat: torch.Tensor, target, hypothetical: bool,
                  start: int, end: int) -> torch.Tensor:
    """tangermeme's ``_attribution_score``, projected onto ``X`` unless ``hypothetical``: ``(N, C, end - start)``."""
    attr = y_hat[:, :, :, target] - y0[:, None, None, target]
    attr -= torch.mean(attr, dim=1, keepdim=True)
    if attr.dim() > 3:
        attr = torch.mean(attr, dim=tuple(range(3, attr.dim())))
    return attr if hypothetical else X8[:, :, start:end] * attr


# ------------------------------------------------------------------ the call
def saturation_mutagenesis(model: nn.Module, X, args: tuple | None = None, start: int = 0, end: int = -1,
                           batch_size: int = 32, target=None, hypothetical: bool = False,
                           raw_outputs: bool = False, dtype=None, device=None, verbose: bool = False,
                           func=None, fast: bool = True):
    """In-silico saturation mutagenesis, as ``tangermeme.saturation_mutagenesis`` (1.6) computes and returns it.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(X, *args)``; not modified (its mode, device and weights stay as they are).
    X : torch.Tensor, shape=(N, len(alphabet), length), or tangermeme's PackedSequence
        One-hot sequences, held as int8 (soft values are truncated toward zero, with a warning).
    args : tuple of torch.Tensor or None, default None
        Extra model inputs, each with first dimension N, given to the model in float.
    start, end : int, default 0, -1
        The positions mutated, ``[start, end)``; ``end < 0`` means ``length + 1 + end``.
    batch_size : int, default 32
        With ``fast=False``: edits per forward pass.  The fast engine sizes its batches of edits from memory
        (a batch of 32 edits would leave it 3-10x slower), so here it is only checked.
    target : int, slice or None, default None
        The output index (first axis after the batch) the attributions are computed on; None averages all.
    hypothetical : bool, default False
        Attributions for every character (``(N, C, W)``) rather than projected onto ``X``.
    raw_outputs : bool, default False
        Return :class:`SaturationMutagenesisRawResult` ``(y0, y_hat)`` instead of attributions (required for a
        model with several outputs).
    dtype : str, torch.dtype or None, default None
        ``float16``/``bfloat16``: run under autocast in that dtype; None or ``float32``: float32.
    device : str, torch.device or None, default None
        Where the engine runs; None: CUDA when available, else the CPU.  Results are on the CPU.
    verbose : bool, default False
        A progress bar over the sequences.
    func : None
        Not supported (a post-processing function between the model and the scores); wrap the model instead,
        e.g. ``nn.Sequential(model, Head())``, and the engine analyses ``func`` as part of it.
    fast : bool, default True
        :class:`~fastism_torch.FastISM` (exact: recomputes only what each edit reaches); False runs
        :class:`~fastism_torch.NaiveISM` (one full forward pass per edit).

    Returns
    -------
    attr : torch.Tensor, shape=(N, len(alphabet), end - start)
        Mean-centred effects (mutant - reference), averaged over the targets, times ``X`` unless hypothetical.
    or, with ``raw_outputs=True``, SaturationMutagenesisRawResult
        ``y0`` (model output on ``X``, ``(N, *out)``) and ``y_hat`` (``(N, len(alphabet), end - start, *out)``);
        lists of tensors for a model with several outputs.
    """
    if func is not None:
        raise ValueError("func is not supported by fastism_torch.saturation_mutagenesis: wrap the model instead "
                         "(a module whose forward returns func(model(x))), or use tangermeme for func")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    X8 = _as_int8(X)
    n, C, L = X8.shape
    args = _check_args(args, n)
    end = _check_span(int(start), int(end), L)
    dtype, device = _resolve(model, dtype, device)
    settings = dict(num_chars=C, change_ranges=tuple((p, p + 1) for p in range(start, end)), device=device,
                    dtype=None if dtype == torch.float32 else dtype)
    if not fast:
        settings["batch_size"] = int(batch_size)
    engine = cached_engine(model, L, fast=fast, n_inputs=1 + len(args), **settings)
    out_dtypes = _output_dtypes(engine, [X8, *args], dtype)
    multi = isinstance(out_dtypes, list)
    if multi and not raw_outputs:
        raise ValueError("raw_outputs=True is required for models that return multiple output tensors; the "
                         "attribution aggregation assumes a single output tensor.")
    y0, y_hat = _predict(engine, X8, args, start, end, verbose)
    dts = out_dtypes if multi else [out_dtypes]
    y0 = [y.to(d) for y, d in zip(y0, dts)]
    y_hat = [y.to(d) for y, d in zip(y_hat, dts)]
    if raw_outputs:
        return SaturationMutagenesisRawResult(y0, y_hat) if multi else SaturationMutagenesisRawResult(y0[0], y_hat[0])
    return _attributions(X8, y0[0], y_hat[0], target, hypothetical, start, end)
