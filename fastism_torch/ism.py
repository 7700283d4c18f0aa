"""The public API: :class:`FastISM` and its oracle :class:`NaiveISM`.

Both share one front end (:class:`ISMBase`): argument validation, the choice of
edits (which (sequence, window, replacement) triples must be computed), the
identity-edit shortcut, output layout and type conversion.  A subclass only
says how to compute the model's outputs for a batch of edits
(:meth:`ISMBase._run_edits`).

An *edit* is ``(seq_idx, range_idx, value)``: sequence ``seq_idx`` with window
``ranges[range_idx]`` replaced by ``value`` (``(width, num_chars)``).
"""
from __future__ import annotations

import copy
import inspect
import logging
import time
from contextlib import ExitStack, nullcontext
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .execute import Edits, as_output_list, check_output_shape, to_device
from .kinds import State
from .precision import TF32_RTOL, cudnn_benchmark, float32_precision, float32_rtol
from .validate import (as_tensor, check_change_ranges, check_layout, check_replace_with,
                       check_seqs)


class Inputs(NamedTuple):
    """One call's model inputs, validated and on the engine's device."""
    seq: torch.Tensor             # (N, C, L) or (N, L, C), float32
    args: list                    # every positional model input (seq at seq_input_idx); None allowed
    was_numpy: bool               # return numpy arrays
    out_device: torch.device      # where torch results go


def _compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def _compiled(module, mode):
    """``torch.compile`` with symbolic sizes: the edit graph's widths and batch sizes vary between groups.
    Duck sizing is off while it compiles, so sizes that happen to be equal (a batch of 40 edits, a cache
    40 positions long) are not assumed equal, which would recompile for every new batch size."""
    import torch.fx.experimental._config as fx_config
    compiled = torch.compile(module, dynamic=True, mode=mode)

    def call(**feed):
        with fx_config.patch(use_duck_shape=False):
            return compiled(**feed)
    return call


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
                 dtype: torch.dtype | None = None, verbose: bool = False, tf32: bool = False):
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
        # A private eval-mode copy on our device: the caller's model keeps its mode, device and weights.
        self.model = copy.deepcopy(model).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

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
                ref = self._reference(chunk)
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
        ref = self._reference(inp)
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
        stack.enter_context(float32_precision(self.tf32))
        stack.enter_context(cudnn_benchmark(self.cudnn_benchmark))
        return stack

    def _forward(self, args) -> list[torch.Tensor]:
        with self._precision():
            return [o.float() for o in as_output_list(self.model(*args))]

    def _reference(self, inp: Inputs) -> list[torch.Tensor]:
        return self._forward(inp.args)

    def _run_edits(self, inp: Inputs, ranges, edits: Edits, sinks: list, bar) -> None:
        """Write the model's outputs for ``edits`` to rows ``edits.dest`` of each of ``sinks`` (one tensor
        ``(rows, *out)`` per model output, on the engine's device)."""
        raise NotImplementedError


class NaiveISM(ISMBase):
    """Naive ISM: one full forward pass per edit, batched. The oracle for :class:`FastISM`.

    Same parameters and call API as :class:`FastISM` (``early_stop_layers`` and ``test_correctness`` do not
    apply).  On the CPU with ``batch_size=None`` the batch size is measured, not guessed: the first call with
    enough edits times real batches of each of :attr:`tune_sizes` (twice, interleaved; their outputs are
    kept) and goes on with the fastest per edit.  Measured on a 2-core Zen 4, BPNet is fastest at 8-16 edits
    per batch (its activations then stay in cache; 15-20% faster than 128) and Basset at 64-128.
    """

    #: batch sizes timed on the CPU when ``batch_size`` is None (each twice; the fastest per edit is kept)
    tune_sizes = (8, 16, 32, 64, 128)

    def _run_edits(self, inp, ranges, edits, sinks, bar):
        E = len(edits.seq)
        width = ranges[0][1] - ranges[0][0]
        starts = torch.tensor([s for s, _ in ranges], device=self.device)
        offsets = torch.arange(width, device=self.device)
        idx = to_device({"seq": edits.seq, "window": edits.window, "dest": edits.dest}, self.device)
        bs = self._batch_size(tuple(inp.seq.shape[1:]))
        if bs is None and E < 2 * sum(self.tune_sizes):
            bs = self.default_batch_size          # too few edits to time every candidate: not worth tuning
        buf = torch.empty((min(bs or max(self.tune_sizes), max(E, 1)), *inp.seq.shape[1:]),
                          device=self.device)                                  # reused per batch

        def run(lo: int, hi: int) -> None:
            n = hi - lo
            s_idx = idx["seq"][lo:hi]
            x = torch.index_select(inp.seq, 0, s_idx, out=buf[:n])
            pos = starts[idx["window"][lo:hi]][:, None] + offsets
            self.rows(x)[torch.arange(n, device=self.device)[:, None], pos] = edits.values[lo:hi]
            args = [x if i == self.seq_input_idx else (a.index_select(0, s_idx) if isinstance(a, torch.Tensor) else a)
                    for i, a in enumerate(inp.args)]
            for sink, o in zip(sinks, self._forward(args)):
                check_output_shape(o, sink)
                sink.index_copy_(0, idx["dest"][lo:hi], o.to(sink.dtype))
            if bar is not None:
                bar.update(n)

        lo = 0
        if bs is None:                       # CPU, no batch size given: time each candidate on real edits
            per_edit = {}
            for _ in range(2):
                for size in self.tune_sizes:
                    hi = min(E, lo + size)
                    t0 = time.perf_counter()
                    run(lo, hi)
                    per_edit[size] = min(per_edit.get(size, float("inf")), (time.perf_counter() - t0) / size)
                    lo = hi
            bs = min(per_edit, key=per_edit.get)
            self.__dict__.setdefault("_tuned", {})[tuple(inp.seq.shape[1:])] = bs
            log.info("NaiveISM: batch size %d (seconds per edit by batch size: %s)", bs,
                     {k: f"{v:.2e}" for k, v in per_edit.items()})
        for b0 in range(lo, E, bs):
            run(b0, min(E, b0 + bs))

    def _batch_size(self, shape: tuple) -> int | None:
        """The batch size to use, or None to measure it now (CPU, enough edits to time every candidate)."""
        if self.batch_size:
            return self.batch_size
        if self.device.type != "cpu":
            return self.default_batch_size
        return self.__dict__.setdefault("_tuned", {}).get(shape)


class FastISM(ISMBase):
    """Fast, exact ISM: recompute only the positions each mutation can reach.

    The model is captured as a ``torch.fx`` graph (:mod:`fastism_torch.capture`), every op is classified by
    a per-op change-range rule (:mod:`fastism_torch.analysis`), and for each set of mutation windows a frozen
    :class:`~fastism_torch.plan.Plan` says which window of each intermediate output is recomputed, from
    which gathered inputs.  The rewritten *edit graph* (:mod:`fastism_torch.rewrite`) runs batches of
    (sequence, window, replacement) edits at once; everything after a stop point (flatten, dense across the
    length axis, global pooling, attention, unknown ops, ``early_stop_layers``) runs in full.

    Parameters
    ----------
    model : torch.nn.Module
        Takes the sequences as ``(N, num_chars, seq_len)`` (layout ``"NCL"``) or ``(N, seq_len, num_chars)``
        (``"NLC"``); may take further inputs (see ``seq_input_idx``). A private eval-mode copy is used: the
        caller's model keeps its mode, device and weights.
    seq_len : int
        Sequence length L.
    num_chars : int, default 4
        Alphabet size.
    layout : {"NCL", "NLC"}, default "NCL"
    seq_input_idx : int, default 0
        Which model input is the sequence when ``seqs`` is a list/tuple of inputs.
    change_ranges : list of (start, end), optional
        Equal-width half-open windows to mutate. Default: every single position.
    early_stop_layers : list of str, optional
        Module or fx node names; they and everything after them run in full.
    test_correctness : bool, default True
        Compare with :class:`NaiveISM` on random one-hot input once the graph is built; raise if they differ.
    device : str or torch.device, optional
        Default: the model's device.
    batch_size : int, optional
        Edits per batch (the memory knob). Default: chosen from the plan's per-edit memory.
    strict : bool, default False
        Raise instead of warning when an op cannot be analysed.
    compile : bool or str, default False
        Compile the edit graph with ``torch.compile`` (``True``; or a mode such as ``"reduce-overhead"`` for
        CUDA graphs). The gather/slice-assign kernels are custom ops, so there are no graph breaks.
    dtype : torch.dtype, optional
        Run under autocast in this dtype (e.g. ``torch.bfloat16``); default float32.
    verbose : bool, default False
        Show a progress bar.
    """

    memory_budget = 256 * 2 ** 20       # bytes of activations per batch on CPU (auto batch size)
    #: kernel form of the edit graph: None = static (sync-free, fixed-shape) on GPUs and with ``compile``, the
    #: CPU eager form otherwise; True/False force one (the tests run both forms on the CPU)
    static_kernels: bool | None = None
    cudnn_benchmark = False

    def __init__(self, model: nn.Module, seq_len: int, *, num_chars: int = 4, layout: str = "NCL",
                 seq_input_idx: int = 0, change_ranges=None, early_stop_layers=None, test_correctness=True,
                 device=None, batch_size: int | None = None, strict: bool = False, compile: bool = False,
                 dtype: torch.dtype | None = None, verbose: bool = False, tf32: bool = False):
        super().__init__(model, seq_len, num_chars=num_chars, layout=layout, seq_input_idx=seq_input_idx,
                         change_ranges=change_ranges, device=device, batch_size=batch_size, dtype=dtype,
                         verbose=verbose, tf32=tf32)
        self.early_stop_layers = list(early_stop_layers or [])
        self.strict = strict
        self.compile = compile
        self.compiled_graphs = 0          # graphs torch.compile built for this engine (compile=True)
        self._test_correctness = test_correctness
        self._engines: dict = {}
        self._pattern = None
        self.gm = None
        params = inspect.signature(self.model.forward).parameters.values()
        n_required = sum(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                         for p in params)
        if n_required <= 1 and self.seq_input_idx == 0:
            try:
                self._inputs(self._random_seqs(2))     # builds (capture, analysis, self-check) once
            except Exception:
                if n_required == len(params):
                    raise
                # forward(x, ctl=None) may need ctl in this configuration: build at the first call, which
                # brings every input the model needs
                self.gm, self._pattern = None, None

    # --------------------------------------------------------------- building
    def _random_seqs(self, n: int, generator=None) -> torch.Tensor:
        g = generator or torch.Generator().manual_seed(0)
        idx = torch.randint(0, self.num_chars, (n, self.seq_len), generator=g)
        x = torch.nn.functional.one_hot(idx, self.num_chars).float()
        return x.transpose(1, 2).contiguous() if self.layout == "NCL" else x

    def _build(self, inp: Inputs) -> None:
        from .analysis import analyse
        from .capture import capture
        example = [a[:2] if isinstance(a, torch.Tensor) else a for a in inp.args]
        self.gm = capture(self.model, example)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.seq_node = placeholders[self.seq_input_idx]
        self._nodes = {n.name: n for n in self.gm.graph.nodes}
        self.infos = analyse(self.gm, self.seq_node, self.length_axis, self.seq_len, self.early_stop_layers,
                             self.strict)
        if self._test_correctness:
            self.check_correctness(inp)

    def plan_for(self, ranges):
        """The plan for mutation windows ``ranges`` (a tuple of ``(start, end)``); built once per ranges."""
        return self._engine(tuple(tuple(r) for r in ranges)).plan

    def _engine(self, ranges):
        from .execute import Executor
        from .plan import build_plan
        from .rewrite import build_edit_module
        if self.gm is None:
            raise RuntimeError("this model takes inputs besides the sequence: call the FastISM object once "
                               "(or .predict) with all its inputs before reading its plan")
        if ranges not in self._engines:
            plan = build_plan(self.gm, self.infos, self.seq_node, ranges)
            # GPUs and torch.compile get the kernels that never read tensor values on the host
            static = self.static_kernels
            if static is None:
                static = self.device.type != "cpu" or bool(self.compile)
            edit = build_edit_module(self.gm, self.infos, plan, self.seq_node, static=static)
            mode = self.compile if isinstance(self.compile, str) else None
            if self.compile:
                edit.module = _compiled(edit.module, mode)
            ex = Executor(self.gm, plan, edit, self.device, self.length_axis)
            ex.mark_step = mode is not None and "reduce-overhead" in mode
            self._engines[ranges] = ex
        return self._engines[ranges]

    @property
    def plan(self):
        """The plan for ``change_ranges`` (printable)."""
        return self._engine(self.change_ranges).plan

    # --------------------------------------------------------------- engine
    def _inputs(self, seqs) -> Inputs:
        inp = super()._inputs(seqs)
        pattern = tuple(a is None for a in inp.args)         # which inputs were given: fixed in the trace
        if self.gm is None or pattern != self._pattern:
            self._engines.clear()
            self._pattern = pattern
            self._build(inp)
        return inp

    def _seq_chunk(self) -> int:
        """Sequences per chunk: bounded reference caches and per-chunk results (~1 GiB of outputs)."""
        out = sum(int(np.prod(n.meta["tensor_meta"].shape[1:])) for n in self._output_nodes()
                  if hasattr(n.meta.get("tensor_meta"), "shape"))
        per_seq = 4 * max(1, out) * self.seq_len * self.num_chars
        return int(np.clip((1 << 30) // per_seq, 1, 64))

    def _output_nodes(self):
        return next(n for n in self.gm.graph.nodes if n.op == "output").all_input_nodes

    def _per_edit_bytes(self, plan) -> int:
        """Activation bytes one edit needs in the edit graph (windows, gathers, full tensors after stops)."""
        per_edit = 0.0
        for r in plan.nodes.values():
            shape = self._shape(r.name)
            feat = int(np.prod([s for i, s in enumerate(shape) if i not in (0, r.laxis)]))
            per_edit += feat * (float((r.hi - r.lo).max()) + 1)
        for n in self.gm.graph.nodes:
            tm = n.meta.get("tensor_meta")
            if self.infos[n].state == State.FULL and tm is not None and hasattr(tm, "shape"):
                per_edit += int(np.prod(tm.shape[1:]))
        return int(8 * per_edit) + 64          # float32, x2 for gathered copies and conv workspaces

    def _auto_batch(self, plan) -> int:
        if self.batch_size:
            return self.batch_size
        budget = self.memory_budget
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.4)
        return int(np.clip(budget // self._per_edit_bytes(plan), 16, 1 << 16))

    def _shape(self, name):
        return tuple(self._nodes[name].meta["tensor_meta"].shape)

    def _run_edits(self, inp, ranges, edits, sinks, bar):
        ex = self._engine(ranges)
        with self._precision():
            ref = ex.reference(inp.args)
            batch = self._auto_batch(ex.plan)
            done = np.zeros(len(edits.seq), dtype=bool)
            graphs = _compiled_graphs() if self.compile else 0      # (imports torch._dynamo)
            while not done.all():
                todo = np.flatnonzero(~done)
                part = edits if len(todo) == len(done) else edits.subset(todo)
                part_done = np.zeros(len(todo), dtype=bool)
                try:
                    ex.run(ref, part, batch, sinks, part_done, bar)
                except Exception as e:
                    if not is_out_of_memory(e):
                        raise
                    done[todo[part_done]] = True          # what is written stays written: resume after it
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    fits = max(1, batch // 2)
                    if self.batch_size or batch == 1:
                        raise ValueError(
                            f"batch_size={batch} does not fit in {self.device} memory; batch_size={fits} or "
                            f"less should (about {self._per_edit_bytes(ex.plan) / 2**20:.1f} MiB per edit)") from e
                    log.info("out of %s memory at batch size %d: going on at %d", self.device, batch, fits)
                    batch = fits
                else:
                    done[:] = True
            if self.compile:
                self.compiled_graphs += _compiled_graphs() - graphs
                log.info("torch.compile: %d graph(s) compiled so far for this engine", self.compiled_graphs)

    # --------------------------------------------------------------- checks
    @torch.no_grad()
    def check_correctness(self, inp: Inputs | None = None, n_seqs: int = 2, n_ranges: int = 24,
                          rtol: float | None = None, seed: int = 0) -> float:
        """Compare with :class:`NaiveISM` on random one-hot sequences at edge and random windows.

        Returns the largest absolute difference; raises ``RuntimeError`` if it exceeds ``rtol`` times the
        output scale.
        """
        if rtol is None:        # float32: 1e-5 of the output scale (5e-5 on GPUs); TF32: 5e-3; 16 bits: 5e-2
            rtol = float32_rtol(self.device) if self.dtype in (None, torch.float32) else 5e-2
            rtol = max(rtol, TF32_RTOL) if self.tf32 else rtol
        g = torch.Generator().manual_seed(seed)
        seqs = self._random_seqs(n_seqs, g).to(self.device)
        if inp is not None:
            args = [a[:n_seqs] if isinstance(a, torch.Tensor) else a for a in inp.args]
            n_seqs = min(n_seqs, args[self.seq_input_idx].shape[0])
            args[self.seq_input_idx] = seqs[:n_seqs]
        else:
            args = [seqs]
        chk = Inputs(args[self.seq_input_idx], args, False, self.device)
        R = len(self.change_ranges)
        pick = np.array(sorted(set(range(min(4, R))) | set(range(max(0, R - 4), R))
                               | set(torch.randint(0, R, (n_ranges,), generator=g).tolist())))
        s_idx = np.repeat(np.arange(n_seqs), len(pick))
        width = self.change_ranges[0][1] - self.change_ranges[0][0]
        values = torch.nn.functional.one_hot(torch.randint(0, self.num_chars, (len(s_idx), width), generator=g),
                                             self.num_chars).float().to(self.device)
        naive = NaiveISM.__new__(NaiveISM)
        naive.__dict__.update({k: getattr(self, k) for k in
                               ("seq_len", "num_chars", "layout", "seq_input_idx", "change_ranges", "device",
                                "dtype", "verbose", "model", "tf32")})
        naive.batch_size = 256
        fast_out = self.edit_outputs(chk, s_idx, np.tile(pick, n_seqs), values)
        slow_out = [torch.empty_like(o) for o in fast_out]            # (the shapes are known: no reference pass)
        naive._run_edits(chk, self.change_ranges, Edits(s_idx, np.tile(pick, n_seqs), values, np.arange(len(s_idx))),
                         slow_out, None)
        worst = 0.0
        for f, s in zip(fast_out, slow_out):
            if not s.numel():
                continue
            scale = float(s.abs().max()) or 1.0
            diff = float((f - s).abs().max())
            worst = max(worst, diff)
            if not diff <= rtol * scale + 1e-7:
                raise RuntimeError(
                    f"FastISM differs from NaiveISM: max |difference| = {diff:.3g} at output scale {scale:.3g} "
                    f"(tolerance {rtol:g} relative). Please report this model; pass early_stop_layers to "
                    f"run the suspicious part in full.\n{self.plan}")
        return worst

    def mac_summary(self) -> dict:
        """MACs of one full forward pass vs the MACs the plan recomputes per mutation (averaged)."""
        from .macs import mac_summary
        return mac_summary(self.gm, self.infos, self.plan_for((i, i + 1) for i in range(self.seq_len)))

