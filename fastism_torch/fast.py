"""Fast, exact ISM: :class:`FastISM`."""
from __future__ import annotations

import inspect
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from .common import gc_paused
from .base import Inputs, ISMBase, is_out_of_memory, log
from .execute import Batching, as_output_list
from .kernels import onednn_dense
from .kinds import State
from .routing import NaiveRouting
from .selfcheck import check_against_naive, default_rtol, random_onehot
from .sizing import batch_for, per_edit_bytes
from .static_batches import MIN_BATCH


def _compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def _compiled(module, mode):
    """``torch.compile`` with symbolic sizes: the batch size and the number of sequences vary between calls
    (widths are fixed per width class: :attr:`FastISM.compiled_width_classes`).  Duck sizing is off while it
    compiles, so sizes that happen to be equal (a batch of 40 edits, a cache 40 positions long) are not
    assumed equal, which would recompile for every new batch size."""
    import torch.fx.experimental._config as fx_config
    compiled = torch.compile(module, dynamic=True, mode=mode)

    def call(**feed):
        with fx_config.patch(use_duck_shape=False):
            return compiled(**feed)
    return call


def _not_deterministic(e: BaseException) -> bool:
    """PyTorch's error for an op without a deterministic implementation under
    ``torch.use_deterministic_algorithms(True)``."""
    return (isinstance(e, RuntimeError) and torch.are_deterministic_algorithms_enabled()
            and "does not have a deterministic implementation" in str(e))


MAX_BATCH = 1 << 16
TAIL_CHUNK_BYTES = 5 * 2 ** 20    # bytes of the executor's tail's widest window per chunk, one thread (BPNet: 13)
MAX_BATCH_WITH_TAIL = 512   # a tail in chunks frees memory, but a batch spans batch/3 positions whose windows
#                             share one width (the widest): larger groups recompute more at the edges


class FastISM(NaiveRouting, ISMBase):
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
        caller's model keeps its mode, device and weights (unless ``copy_model=False``).
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
    tf32 : bool, default False
        Let cuDNN and matrix products run in TF32 on GPUs (faster, ~1e-3 relative error; see :mod:`.precision`).
    delta : bool or "always", default True
        Let linear ops (convolutions) add the change propagated from their input's change to their reference
        output, where that costs less than recomputing their changed range (the plan shows the choice and both
        costs per layer); ``False`` recomputes everywhere, as fastISM does; ``"always"`` propagates wherever an
        op can (benchmarks, error measurements, debugging).
    copy_model : bool, default True
        ``False`` runs ``model`` itself (set to eval mode and moved to ``device`` in place) instead of a private
        copy: one copy of a large model in memory.
    """

    memory_budget = 256 * 2 ** 20       # bytes of activations per batch on CPU (auto batch size)
    #: kernel form of the edit graph: None = static (sync-free, fixed-shape) on GPUs and with ``compile``, the
    #: CPU eager form otherwise; True/False force one (the tests run both forms on the CPU)
    static_kernels: bool | None = None
    #: cuDNN autotuning (``torch.backends.cudnn.benchmark``) inside the engine's calls, the caller's setting
    #: restored after (None: the caller's setting).  Off: the static path's shapes are now fixed per run (one
    #: width per node, one batch size), so autotuning would run once per shape per process, but its one-time
    #: cost was measured at 410 s on an H100 (Factorized Basset eager, batch 4096, first call, at d63c328, which
    #: already had fixed widths) and its steady-state gain has not been measured.  ``benchmarks/bench_gpu.py``
    #: (``fast_eager+autotune``, ``fast_compiled+autotune``: first-call cost in the set-up column) and
    #: ``benchmarks/profile_gpu.py --cudnn-benchmark`` measure both; ``scripts/gpu_check.sh part2`` runs them.
    cudnn_benchmark: bool | None = False
    #: width classes of the static path (:mod:`.static_batches`) under ``compile`` where windows reach a strided
    #: op (pooling): dynamo specialises their widths, so each class compiles a graph of its own (20-40 s on a GPU);
    #: one class (every window at its widest) unless raised.  Elsewhere (stride-1 towers such as BPNet: one graph
    #: for all classes, measured on the CPU) the static kernels run :data:`.static_batches.WIDTH_CLASSES`
    compiled_width_classes = 1
    #: run a call as naive ISM where the cost model says that is cheaper (CPU eager); the tests turn it off.
    #: Without the self-check this also makes the engine lazy: nothing is built until a call's naive ISM, timed
    #: on its first batches, would cost more than the build (:meth:`_run_lazy`)
    naive_when_cheaper = True

    def __init__(self, model: nn.Module, seq_len: int, *, early_stop_layers=None, test_correctness: bool = True,
                 strict: bool = False, compile: bool | str = False, delta: bool | str = True, **options):
        super().__init__(model, seq_len, **options)
        if delta not in (True, False, "always"):
            raise ValueError(f"delta must be True, False or 'always'; got {delta!r}")
        self.delta = delta
        self.early_stop_layers = list(early_stop_layers or [])
        self.strict = strict
        self.compile = compile
        self.compiled_graphs = 0          # graphs torch.compile built for this engine (compile=True)
        self._test_correctness = test_correctness
        self._engines: dict = {}
        self._window_macs: dict = {}      # executor -> its MAC summary (:meth:`window_macs`)
        self._sum_reach = None            # (graph, far_pairs.Reach) of :meth:`sum_reach`
        self._pattern = None
        self.gm = None
        self._example = None              # the inputs the graph was captured for (two sequences)
        self._trace_checked = False       # the trace compared with the model (on the first reference pass)
        self._pending = None              # (sequences, ranges, Reference) of the last reference pass
        # lazy (CPU eager, no self-check): build at the first call that pays for it (:mod:`.routing`)
        self._init_routing(lazy=not test_correctness and not strict and not compile and self.device.type == "cpu"
                           and self.static_kernels is not True)
        if self._lazy:                    # (a built engine refuses them in its analysis)
            from .analysis import refuse_batch_statistics
            refuse_batch_statistics(self.model)
        params = inspect.signature(self.model.forward).parameters.values()
        n_required = sum(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                         for p in params)
        self._example_ok = n_required <= 1 and self.seq_input_idx == 0    # random one-hot input is enough
        self._optional_inputs = n_required != len(params)
        if not self._lazy:
            self._build_on_example()

    def _build_on_example(self) -> None:
        """Build (capture, analysis, self-check) on random one-hot input where the sequence is all the model
        needs; otherwise at the first call, which brings every input."""
        if not self._example_ok:
            return
        try:
            self._lazy = False
            self._inputs(torch.as_tensor(random_onehot(2, self.seq_len, self.num_chars, self.layout)))
        except Exception:
            if not self._optional_inputs:
                raise
            # forward(x, ctl=None) may need ctl in this configuration: build at the first call, which
            # brings every input the model needs
            self.gm, self._pattern = None, None

    # --------------------------------------------------------------- building
    def _build(self, inp: Inputs) -> None:
        """Capture and analyse: no pass over real data (shapes come from the meta device); the trace is checked
        against the model on the first reference pass (:meth:`_reference`)."""
        from .capture import capture, is_one_op
        self._example = [a[:2] if isinstance(a, torch.Tensor) else a for a in inp.args]
        with gc_paused():
            self._analyse(capture(self.model, self._example, check=False))
        self._trace_checked = is_one_op(self.gm)
        if self._test_correctness:
            self.check_correctness(inp)

    def _analyse(self, gm) -> None:
        from .analysis import analyse
        self.gm = gm
        self._engines.clear()
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.seq_node = placeholders[self.seq_input_idx]
        self.infos = analyse(self.gm, self.seq_node, self.length_axis, self.seq_len, self.early_stop_layers,
                             self.strict)

    def plan_for(self, ranges):
        """The plan for mutation windows ``ranges`` (a tuple of ``(start, end)``); built once per ranges."""
        return self._engine(tuple(tuple(r) for r in ranges)).plan

    def _engine(self, ranges):
        if self.gm is None and self._lazy:
            self._build_on_example()
        if self.gm is None:
            raise RuntimeError("this model takes inputs besides the sequence: call the FastISM object once "
                               "(or .predict) with all its inputs before reading its plan")
        if ranges not in self._engines:
            with gc_paused():
                self._engines[ranges] = self._new_engine(ranges)
        return self._engines[ranges]

    def _new_engine(self, ranges):
        """The executor for ``ranges``: its plan and edit graph (static kernels on GPUs and with ``compile``, which
        compiles it)."""
        from .execute import Executor
        from .plan import build_plan
        from .rewrite import build_edit_module
        plan = build_plan(self.gm, self.infos, self.seq_node, ranges, delta=self.delta)
        static = self.static_kernels
        if static is None:
            static = self.device.type != "cpu" or bool(self.compile)
        edit = build_edit_module(self.gm, self.infos, plan, self.seq_node, static=static)
        mode = self.compile if isinstance(self.compile, str) else None
        if self.compile:
            edit.module = _compiled(edit.module, mode)
        ex = Executor(self.gm, plan, edit, self.device, self.length_axis)
        ex.mark_step = mode is not None and "reduce-overhead" in mode
        if self.compile and any(abs(g.window.stride) > 1 for g in plan.gathers):
            ex.width_classes = self.compiled_width_classes     # a graph per class: pooling guards on widths
        ex.min_batch = MIN_BATCH if self.compile else 1
        return ex

    @property
    def plan(self):
        """The plan for ``change_ranges`` (printable)."""
        return self._engine(self.change_ranges).plan

    # --------------------------------------------------------------- engine
    def _inputs(self, seqs) -> Inputs:
        inp = super()._inputs(seqs)
        pattern = tuple(a is None for a in inp.args)         # which inputs were given: fixed in the trace
        if self._deferred:
            return inp                                       # built by the first call that pays for it
        if self.gm is None or pattern != self._pattern:
            self._engines.clear()
            self._costs.clear()
            self._pattern = pattern
            self._build(inp)
        return inp

    def _seq_chunk(self) -> int:
        """Sequences per chunk: bounded reference caches and per-chunk results (~1 GiB of outputs)."""
        if self.gm is None:
            return super()._seq_chunk()              # (lazy, not built: naive ISM's; a build re-chunks)
        out = sum(int(np.prod(n.meta["tensor_meta"].shape[1:])) for n in self._output_nodes()
                  if hasattr(n.meta.get("tensor_meta"), "shape"))
        per_seq = 4 * max(1, out) * self.seq_len * self.num_chars
        return int(np.clip((1 << 30) // per_seq, 1, 64))

    def _output_nodes(self):
        return next(n for n in self.gm.graph.nodes if n.op == "output").all_input_nodes

    def _per_edit_bytes(self, plan, nodes=None, full: bool = True) -> int:
        """Activation bytes one edit needs in the edit graph: windows of the windowed ``nodes`` (default all),
        and with ``full`` the full tensors after stops."""
        per_edit = 0.0
        for r in plan.nodes.values():
            if nodes is not None and r.name not in nodes:
                continue
            per_edit += int(np.prod(r.feat)) * (float((r.hi - r.lo).max()) + 1)
        for n in self.gm.graph.nodes:
            tm = n.meta.get("tensor_meta")
            if full and self.infos[n].state == State.FULL and tm is not None and hasattr(tm, "shape"):
                per_edit += int(np.prod(tm.shape[1:]))
        return int(8 * per_edit) + 64          # float32, x2 for gathered copies and conv workspaces

    def _auto_batch(self, ex) -> int:
        """Edits per batch: :attr:`memory_budget` of activations on the CPU (where the executor runs a wide
        tail in chunks, the budget of the segments before it), 40% of the free memory on a GPU; fewer than 16
        only where 16 do not fit in half the free memory (long inputs: :func:`.sizing.batch_for`).  Raises
        ``ValueError`` when one edit does not fit."""
        if self.batch_size:
            return self.batch_size
        budget = self.memory_budget
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.4)
        live = per_edit_bytes(ex.plan, self.gm, self.infos)
        if ex.tail is None:
            return batch_for(self._per_edit_bytes(ex.plan), live, budget, self.device, 16, MAX_BATCH)
        head = set(ex.plan.nodes) - ex.tail_nodes
        return batch_for(self._per_edit_bytes(ex.plan, head, full=False), live, budget, self.device, 16,
                         MAX_BATCH_WITH_TAIL)

    def _batching(self, ex) -> Batching:
        """How the executor cuts a run (this method is the one place batch sizes are chosen): edits per batch
        (:meth:`_auto_batch`) and, where the executor runs a wide tail in chunks, edits per chunk of the tail:
        :data:`TAIL_CHUNK_BYTES` of its widest window on one thread; with more threads as many as memory allows
        (every op is a parallel region whose fixed cost small chunks multiply: BPNet on 2 cores, chunks of 13,
        26, 52, 113 and none took 1.86, 1.76, 1.74, 1.75 and 1.83 s/seq); at most what :attr:`memory_budget`
        holds of the tail's activations."""
        size = self._auto_batch(ex)
        if ex.tail is None:
            return Batching(size)
        fits = self.memory_budget // self._per_edit_bytes(ex.plan, ex.tail_nodes)
        chunk = 1 << 62 if torch.get_num_threads() > 1 else max(1, TAIL_CHUNK_BYTES // max(1, ex.tail_window))
        return Batching(size, int(max(1, min(chunk, fits))))

    # --------------------------------------------------------------- reference pass
    def _reference(self, inp: Inputs, ranges=None) -> list[torch.Tensor]:
        """The reference outputs.  With ``ranges`` (a scan), from the engine's reference pass, whose caches the
        following :meth:`_run_edits` of the same chunk reuses: one forward pass per sequence, not two.  The
        first one is compared with the model's outputs on the same chunk; a trace that differs is replaced by the
        model as one op (exact, naive speed, with a warning)."""
        if self.gm is None:                            # (lazy: timed, the naive cost's first estimate)
            t0 = time.perf_counter()
            outs = super()._reference(inp)
            self._ref_s_per_seq = (time.perf_counter() - t0) / max(1, len(inp.seq))
            return outs
        if ranges is None or (self.naive_when_cheaper and ranges in self._naive_ranges and self._trace_checked):
            return super()._reference(inp)             # (the last call for these ranges ran as naive ISM)
        self._pending = None
        ref = self._reference_pass(self._engine(ranges), inp)
        outs = [o.float() for o in as_output_list(ref.outputs)]
        if not self._trace_checked and not self._check_trace(inp, outs):
            return self._reference(inp, ranges)                        # rebuilt as one op
        self._pending = (inp.seq, ranges, ref)
        return outs

    def _check_trace(self, inp: Inputs, outs: list) -> bool:
        """Compare the traced graph's outputs ``outs`` on ``inp`` with the model's (on the same batch: dense
        products round differently at other batch sizes); on a difference, rebuild as one op and return False.
        Long inputs come in chunks of one sequence: one forward pass."""
        from .capture import as_one_op, same_outputs
        self._trace_checked = True
        rtol = default_rtol(self.device, self.dtype, self.tf32)       # the self-check's tolerance
        diff = same_outputs(outs, self._forward(inp.args), rtol)
        if diff is None:
            return True
        self._analyse(as_one_op(self.model, self._example, diff))
        return False

    def _take_reference(self, inp: Inputs, ranges, ex):
        """The reference pass of ``inp`` for ``ranges``: the one :meth:`_reference` just ran, or a new one."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is inp.seq and pending[1] == ranges:
            return pending[2]
        return self._reference_pass(ex, inp)

    def _reference_pass(self, ex, inp: Inputs):
        """``ex``'s reference pass on ``inp``, with the engine's numerics and, on the CPU, the dense products
        naive ISM runs (:class:`~fastism_torch.kernels.onednn_dense`)."""
        dense = onednn_dense() if self.device.type == "cpu" else nullcontext()
        with self._precision(), dense:
            return ex.reference(inp.args)

    def _run_edits(self, inp, ranges, edits, sinks, bar):
        if self._deferred:
            self._run_lazy(inp, ranges, edits, sinks, bar)
            return
        ex = self._engine(ranges)
        if self.naive_when_cheaper and self._naive_is_cheaper(ex, len(edits.seq)):
            self._naive_ranges.add(ranges)              # the next scan of these ranges skips the engine's pass
            self._run_naive(inp, ranges, edits, sinks, bar, "naive ISM is cheaper for this call by the plan's cost "
                            "model (few edits, or little to reuse)")
            return
        self._naive_ranges.discard(ranges)
        ref = self._take_reference(inp, ranges, ex)
        with self._precision():
            batching = self._batching(ex)
            done = np.zeros(len(edits.seq), dtype=bool)
            graphs = _compiled_graphs() if self.compile else 0      # (imports torch._dynamo)
            while not done.all():
                todo = np.flatnonzero(~done)
                part = edits if len(todo) == len(done) else edits.subset(todo)
                try:
                    for written in ex.batches(ref, part, sinks, batching):
                        done[todo[written]] = True      # what is written stays written: a retry resumes after it
                        if bar is not None:
                            bar.update(len(written))
                except Exception as e:
                    if _not_deterministic(e):            # deterministic mode, an op of ours without such a kernel
                        why = (f"torch.use_deterministic_algorithms(True): an op of the fast path has no deterministic "
                               f"implementation on {self.device} ({str(e).split(' does not')[0][:80]})")
                        self._run_naive(inp, ranges, edits.subset(np.flatnonzero(~done)), sinks, bar, why)
                        break
                    if not is_out_of_memory(e):
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    batch = batching.size
                    fits = max(1, batch // 2)
                    if self.batch_size or batch == 1:
                        raise ValueError(
                            f"batch_size={batch} does not fit in {self.device} memory; batch_size={fits} or "
                            f"less should (about {per_edit_bytes(ex.plan, self.gm, self.infos) / 2**20:.1f} MiB "
                            "per edit)") from e
                    log.info("out of %s memory at batch size %d: going on at %d", self.device, batch, fits)
                    batching = batching._replace(size=fits)
            if self.compile:
                self.compiled_graphs += _compiled_graphs() - graphs
                log.info("torch.compile: %d graph(s) compiled so far for this engine", self.compiled_graphs)

    # --------------------------------------------------------------- checks
    def check_correctness(self, inp: Inputs | None = None, n_seqs: int = 2, n_ranges: int = 24,
                          rtol: float | None = None, seed: int = 0) -> float:
        """Compare with :class:`~fastism_torch.naive.NaiveISM` on random one-hot sequences at the first and last
        windows and ``n_ranges`` random ones (:func:`.selfcheck.check_against_naive`).

        Returns the largest absolute difference; raises ``RuntimeError`` if it exceeds ``rtol`` times the
        output scale (default: float32 1e-5, 5e-5 on GPUs; TF32 5e-3; 16-bit dtypes 5e-2).
        """
        return check_against_naive(self, inp, n_seqs=n_seqs, n_ranges=n_ranges, rtol=rtol, seed=seed)

    def window_macs(self, width: int) -> tuple[float, float]:
        """``(planned MACs per edit, MACs of a full forward pass)`` for edits of ``width`` positions: the plan's
        per-layer choice at each edit's exact widths, averaged over every ``width``-wide window of the sequence
        (:func:`.macs.mac_summary`); the costs :func:`fastism_torch.multi.multi_edits` chooses its forms by."""
        from .macs import mac_summary
        w = int(width)
        ex = self._engine(tuple((p, p + w) for p in range(self.seq_len - w + 1)))      # (builds a lazy engine)
        if ex not in self._window_macs:
            self._window_macs[ex] = mac_summary(self.gm, self.infos, ex.plan)
        s = self._window_macs[ex]
        return float(s["planned_macs_per_mutation"]), float(s["full_macs"])

    def sum_reach(self, split: bool = True):
        """What :func:`fastism_torch.multi_edits`' sum form needs (:class:`fastism_torch.far_pairs.Reach`: where
        single positions' changes reach at nonlinear ops, the model's head and tail), kept for the engine's
        graph (a rebuild as one op replaces it); None where the model does not split, or where it has a nonlinear
        tail and ``split`` is False (other model inputs)."""
        from .far_pairs import reach
        self._engine(tuple((p, p + 1) for p in range(self.seq_len)))          # (builds a lazy engine)
        if self._sum_reach is None or self._sum_reach[0] is not self.gm:
            self._sum_reach = (self.gm, reach(self))
        r = self._sum_reach[1]
        return None if r is None or (r.split is not None and not split) else r

    def mac_summary(self) -> dict:
        """MACs of one full forward pass vs the MACs the plan recomputes per mutation (averaged)."""
        from .macs import mac_summary
        plan = self.plan_for((i, i + 1) for i in range(self.seq_len))          # (builds a lazy engine)
        return mac_summary(self.gm, self.infos, plan)
