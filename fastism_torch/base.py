"""The engines' shared front end, :class:`ISMBase` (the engines: :mod:`.naive`, :mod:`.fast`).

Argument validation, the choice of edits (which (sequence, window, replacement) triples must be computed),
the identity-edit shortcut, output layout and type conversion live here.  A subclass only says how to compute
the model's outputs for a batch of edits (:meth:`ISMBase._run_edits`).

An *edit* is ``(seq_idx, range_idx, value)``: sequence ``seq_idx`` with window ``ranges[range_idx]`` replaced by
``value`` (``(width, num_chars)``).
"""
from __future__ import annotations

import copy
import logging
from contextlib import ExitStack, nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .common import Edits, Inputs, as_output_list  # noqa: F401  (Inputs: the engines' vocabulary)
from .kernels import onednn_dense
from .precision import cudnn_benchmark, float32_precision
from .validate import as_tensor, check_change_ranges, check_layout, check_replace_with, check_seqs


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, so the engine's device compares equal to its tensors' devices."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


log = logging.getLogger("fastism_torch")


def is_out_of_memory(e: BaseException) -> bool:
    """Out of device memory, also as cuDNN/cuBLAS report it (a plain ``RuntimeError``)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and any(k in msg for k in (
        "out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"))


class ISMBase:
    """Shared front end; see :class:`FastISM` for the parameters."""

    default_batch_size = 128
    #: cuDNN autotuning in the engine's calls: worth it for one batch shape (naive ISM); the fast path runs many
    #: window shapes, each autotuned anew (measured 28x slower on an H100 with it on)
    cudnn_benchmark = True

    def __init__(self, model: nn.Module, seq_len: int, *, num_chars: int = 4, layout: str = "NCL",
                 seq_input_idx: int = 0, change_ranges=None, device=None, batch_size: int | None = None,
                 dtype: torch.dtype | None = None, verbose: bool = False, tf32: bool = False,
                 copy_model: bool = True):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if int(seq_len) <= 0:
            raise ValueError(f"seq_len must be positive; got {seq_len}")
        if int(num_chars) <= 0:
            raise ValueError(f"num_chars must be positive; got {num_chars}")
        if batch_size is not None and int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive int or None; got {batch_size}")
        self.seq_len = int(seq_len)
        self.num_chars = int(num_chars)
        self.layout = check_layout(layout)
        self.seq_input_idx = int(seq_input_idx)
        self.change_ranges = check_change_ranges(change_ranges, self.seq_len)
        self.device = _indexed(torch.device(device) if device is not None else _model_device(model))
        self.batch_size = None if batch_size is None else int(batch_size)
        self.dtype = dtype
        self.verbose = verbose
        self.tf32 = bool(tf32)
        if copy_model:    # a private eval-mode copy on our device: the caller's model keeps mode, device, weights
            model = copy.deepcopy(model).to(self.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
        else:             # the caller's model itself (no second copy of a large model): set to eval, moved
            model = model.to(self.device).eval()
        self.model = model

    def settings(self) -> dict:
        """The keyword arguments that make another engine for the same model and inputs (not the batch size)."""
        return dict(num_chars=self.num_chars, layout=self.layout, seq_input_idx=self.seq_input_idx,
                    change_ranges=self.change_ranges, device=self.device, dtype=self.dtype, tf32=self.tf32)

    # ------------------------------------------------------------------ inputs
    @property
    def length_axis(self) -> int:
        return 2 if self.layout == "NCL" else 1

    def rows(self, seq: torch.Tensor) -> torch.Tensor:
        """``(N, L, C)`` view of a sequence batch in this engine's layout."""
        return seq.transpose(1, 2) if self.layout == "NCL" else seq

    def inputs(self, seqs) -> Inputs:
        """The validated model inputs for ``seqs`` (a FastISM also builds itself for a new input pattern)."""
        return self._inputs(seqs)

    def _inputs(self, seqs) -> Inputs:
        multi = isinstance(seqs, (list, tuple))
        args = list(seqs) if multi else [seqs]
        if not (0 <= self.seq_input_idx < len(args)):
            raise ValueError(f"seq_input_idx={self.seq_input_idx} but {len(args)} model input(s) were given")
        raw = args[self.seq_input_idx]
        if raw is None:
            raise ValueError(f"the sequence input (index {self.seq_input_idx}) is None")
        was_numpy = not isinstance(raw, torch.Tensor)
        out_device = raw.device if isinstance(raw, torch.Tensor) else torch.device("cpu")
        seq = check_seqs(as_tensor(raw), self.seq_len, self.num_chars, self.layout).to(self.device)
        n = seq.shape[0]
        for i, a in enumerate(args):
            if i == self.seq_input_idx or a is None:
                continue
            t = as_tensor(a, f"input {i}").to(self.device)
            if t.dim() == 0 or t.shape[0] != n:
                raise ValueError(f"model input {i} must have a leading batch dimension of size N={n} "
                                 f"like the sequences; got shape {tuple(t.shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"model input {i} contains non-finite values")
            args[i] = t.float() if t.is_floating_point() else t
        args[self.seq_input_idx] = seq
        return Inputs(seq, args, was_numpy, out_device)

    def _finish(self, outs: Sequence[torch.Tensor], inp: Inputs):
        res = [o.cpu().numpy() if inp.was_numpy else o.to(inp.out_device) for o in outs]
        return res[0] if len(res) == 1 else tuple(res)

    def _chunks(self, inp: Inputs):
        """Split the inputs into chunks of sequences (bounded reference caches)."""
        n = inp.seq.shape[0]
        step = max(1, self._seq_chunk())
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            args = [a[lo:hi] if isinstance(a, torch.Tensor) else a for a in inp.args]
            yield lo, hi, Inputs(args[self.seq_input_idx], args, inp.was_numpy, inp.out_device)

    # ------------------------------------------------------------- public API
    @torch.no_grad()
    def pairwise(self, seqs, start: int, end: int, **options):
        """Double-mutant ISM of the window ``[start, end)``: ``(N, W, C, W, C, *out)``; see
        :func:`fastism_torch.pairwise.pairwise` for ``options`` and the layout of the result."""
        from .pairwise import pairwise
        return pairwise(self, seqs, start, end, **options)

    @torch.no_grad()
    def multi_edits(self, seqs, edits, **options):
        """Outputs ``(N, E, *out)`` of ``E`` edits that each set one or more disjoint windows of every sequence;
        see :func:`fastism_torch.multi.multi_edits` for ``edits``, ``options`` and the result."""
        from .multi import multi_edits
        return multi_edits(self, seqs, edits, **options)

    @torch.no_grad()
    def predict(self, seqs):
        """Reference outputs ``(N, *out)`` per model output (a tuple for several outputs)."""
        inp = self._inputs(seqs)
        parts = [self._reference(chunk) for _, _, chunk in self._chunks(inp)]
        return self._finish([torch.cat(p) for p in zip(*parts)], inp)

    @torch.no_grad()
    def __call__(self, seqs, replace_with=0):
        """Outputs with every window of ``change_ranges`` replaced by ``replace_with``.

        Parameters
        ----------
        seqs : array or tensor, shape=(N, num_chars, seq_len) for layout NCL, (N, seq_len, num_chars) for NLC;
            or a list/tuple of the model's inputs with the sequences at ``seq_input_idx``.
        replace_with : 0, a length-``num_chars`` vector, or a ``(width, num_chars)`` array. Default 0 (zeros).

        Returns
        -------
        ``(N, n_ranges, *output_shape)`` per model output; a tuple for multi-output models.
        """
        inp = self._inputs(seqs)
        ranges = self.change_ranges
        width = ranges[0][1] - ranges[0][0]
        rep = check_replace_with(replace_with, width, self.num_chars)
        rep_dev = rep.to(self.device)
        pos = np.array([s for s, _ in ranges])[:, None] + np.arange(width)            # (R, w)

        def edits(chunk: Inputs):
            win = self.rows(chunk.seq).cpu()[:, pos]                               # (n, R, w, C)
            same = (win == rep).all(-1).all(-1).numpy()                            # identity edits: skipped
            s_idx, r_idx = np.nonzero(~same)
            values = rep_dev.expand(len(s_idx), width, self.num_chars)
            return Edits(s_idx, r_idx, values, s_idx * len(ranges) + r_idx), int(same.sum())
        return self._scan(inp, ranges, (len(ranges),), edits)

    @torch.no_grad()
    def saturation_mutagenesis(self, seqs):
        """Outputs for every position and every base, laid out like the input.

        Returns ``(N, num_chars, L, *out)`` for layout NCL and ``(N, L, num_chars, *out)`` for NLC (a tuple for
        multi-output models). Entries where the base equals the sequence's own are the reference output.
        """
        inp = self._inputs(seqs)
        ranges = tuple((i, i + 1) for i in range(self.seq_len))
        L, C = self.seq_len, self.num_chars
        eye = torch.eye(C)

        def edits(chunk: Inputs):
            rows = self.rows(chunk.seq).cpu()                                      # (n, L, C)
            same = (rows[:, :, None, :] == eye).all(-1).numpy()                    # (n, L, C): edit == sequence
            s_idx, p_idx, b_idx = np.nonzero(~same)
            values = eye[b_idx][:, None, :].to(self.device)                        # (E, 1, C)
            dest = (s_idx * C + b_idx) * L + p_idx if self.layout == "NCL" else (s_idx * L + p_idx) * C + b_idx
            return Edits(s_idx, p_idx, values, dest), int(same.sum())
        return self._scan(inp, ranges, (C, L) if self.layout == "NCL" else (L, C), edits)

    def _scan(self, inp: Inputs, ranges, lead: tuple, make_edits):
        """Per chunk of sequences: the reference outputs broadcast into ``(n, *lead, *out)``, then the outputs
        of the chunk's edits (``make_edits(chunk) -> (Edits, number of identity edits)``) written over them
        in place, on the engine's device; one copy per chunk to where the results are wanted."""
        n = inp.seq.shape[0]
        results = None
        with self._progress(n * int(np.prod(lead))) as bar:
            for lo, hi, chunk in self._chunks(inp):
                ref = self._reference(chunk, ranges)
                edits, n_identity = make_edits(chunk)
                if results is None:
                    where = torch.device("cpu") if inp.was_numpy else inp.out_device
                    results = [torch.empty((n, *lead, *r.shape[1:]), dtype=r.dtype, device=where) for r in ref]
                parts = [res[lo:hi] if res.device == self.device else
                         torch.empty(res[lo:hi].shape, dtype=res.dtype, device=self.device) for res in results]
                for part, r in zip(parts, ref):
                    part.copy_(r.reshape(r.shape[0], *(1,) * len(lead), *r.shape[1:]).expand_as(part))
                rows = (hi - lo) * int(np.prod(lead))
                sinks = [part.view(rows, *part.shape[1 + len(lead):]) for part in parts]   # (also empty outputs)
                self._run_edits(chunk, ranges, edits, sinks, bar)
                for res, part in zip(results, parts):
                    if part.data_ptr() != res[lo:hi].data_ptr():
                        res[lo:hi].copy_(part)
                bar.update(n_identity)
        return self._finish(results, inp)

    @torch.no_grad()
    def edit_outputs(self, inp: Inputs, s_idx, r_idx, values: torch.Tensor) -> list[torch.Tensor]:
        """Outputs ``(E, *out)`` per model output, on the engine's device, for the edits "sequence
        ``s_idx[e]`` of ``inp`` with change range ``r_idx[e]`` replaced by ``values[e]`` (``(E, width, C)``)"."""
        s_idx, r_idx = np.asarray(s_idx, dtype=np.int64), np.asarray(r_idx, dtype=np.int64)
        ref = self._reference(inp, self.change_ranges)
        sinks = [torch.empty((len(s_idx), *r.shape[1:]), device=self.device) for r in ref]
        edits = Edits(s_idx, r_idx, values.to(self.device, torch.float32), np.arange(len(s_idx)))
        self._run_edits(inp, self.change_ranges, edits, sinks, None)
        return sinks

    # ----------------------------------------------------------- for engines
    def _progress(self, total: int):
        from tqdm.auto import tqdm
        return tqdm(total=total, disable=not self.verbose, unit="edit", desc=type(self).__name__,
                    dynamic_ncols=True, leave=False)

    def _seq_chunk(self) -> int:
        return 1 << 30

    def _autocast(self):
        if not torch.amp.is_autocast_available(self.device.type):
            return nullcontext()
        if self.dtype is None or self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _precision(self) -> ExitStack:
        """The engine's numerics: autocast to ``dtype`` (if any) and the TF32 policy (:mod:`.precision`)."""
        stack = ExitStack()
        stack.enter_context(self._autocast())
        stack.enter_context(float32_precision(self.tf32, self.device))
        stack.enter_context(cudnn_benchmark(self.cudnn_benchmark))
        return stack

    def _forward(self, args) -> list[torch.Tensor]:
        """The model's outputs, float32; its dense layers run oneDNN products on the CPU, as the fast path's do."""
        dense = onednn_dense() if self.device.type == "cpu" else nullcontext()
        with self._precision(), dense:
            return [o.float() for o in as_output_list(self.model(*args))]

    def _reference(self, inp: Inputs, ranges=None) -> list[torch.Tensor]:
        """The model's outputs on ``inp`` (``ranges``: the change ranges of the scan they start, if any)."""
        return self._forward(inp.args)

    def _run_edits(self, inp: Inputs, ranges, edits: Edits, sinks: list, bar) -> None:
        """Write the model's outputs for ``edits`` to rows ``edits.dest`` of each of ``sinks`` (one tensor
        ``(rows, *out)`` per model output, on the engine's device)."""
        raise NotImplementedError
