"""Shared pieces of the speed benchmarks: models, sequences, timing, the peers, and RESULTS.md.

Three ways to get a full saturation mutagenesis ``(N, 4, L, *out)`` of the same model on the same sequences:

- :func:`run_fastism`: ``fastism_torch.FastISM`` (build, first call and a second, steady-state call timed apart);
- :func:`run_naive`: ``fastism_torch.NaiveISM`` (one full forward pass per edit, batched; with
  ``batch_size=None`` it measures its fastest batch size on the call's first batches: the fastest naive
  baseline we have, and the one every speed-up here is against);
- :func:`run_tangermeme`: tangermeme 1.6's ``saturation_mutagenesis(model, X, fast=True, raw_outputs=True)``.
  Its set-up (``_fast_path``: a first batch through the slow path, ``torch.export`` capture and a verification
  against the slow path on one batch; done on every call) is timed by wrapping that function; the rest of the
  call is its steady state.  Its rule "not worth capturing below 30 s of slow-path work"
  (``_FAST_MIN_SECONDS``) is set to 0 so that small benchmark runs measure its fast path; a fallback to the
  slow path (a ``TangermemeWarning``, e.g. when its check finds the fast path slower) is reported, never
  hidden; ``force_fast=True`` keeps the fast path even then.

Each returns a :class:`Timing` and the saturation outputs, so the caller can check all three agree.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
#: OpenMP threads pinned one per core.  Unpinned, on the 2-vCPU AMD EPYC VM, a process settles at a speed level of
#: its own: the same 10-ms call (gReLU's dilated-conv model, 24 windows x 3 bases, 2 threads) ran at a median of
#: 9.9-17.9 ms in eight fresh processes, and the same in one process all along; pinned, 9.7-10.4 ms (naive ISM and
#: FastISM alike; 2026-12-06).  A value the user set is kept (``OMP_PROC_BIND=false`` turns it off).
THREAD_ENV = {"OMP_PROC_BIND": "true", "OMP_PLACES": "cores"}
#: the CPUs the run started with, for its subprocesses (:func:`unpinned`)
CPUS_ENV = "FASTISM_BENCH_CPUS"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "RESULTS.md")


# ------------------------------------------------------------------ environment
def reexec_with_malloc_env(module: str) -> None:
    """Re-run this process with glibc's allocator told to keep large blocks (see NOTES-performance) and its
    OpenMP threads pinned to cores (:data:`THREAD_ENV`, unless the user set them).

    glibc maps and unmaps every tensor over 32 MB on each allocation; naive ISM at large batches then spends as
    long in the kernel as in compute.  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` keeps freed
    memory in the heap, so naive ISM (and every other method in the run) is measured at its best.
    """
    if CPUS_ENV not in os.environ and hasattr(os, "sched_getaffinity"):        # (Linux)
        # the shell's CPUs: once pinned, this process's main thread holds one core, and so would its subprocesses
        try:
            cpus = os.sched_getaffinity(os.getppid())
        except OSError:
            cpus = os.sched_getaffinity(0)
        os.environ[CPUS_ENV] = ",".join(str(c) for c in sorted(cpus))
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()) and all(k in os.environ for k in THREAD_ENV):
        return
    env = {**THREAD_ENV, **os.environ, **MALLOC_ENV}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def unpinned() -> None:
    """``preexec_fn`` of a benchmark's subprocess: the CPUs the run started with.  The parent's OpenMP runtime
    pinned its main thread to one core (:data:`THREAD_ENV`), and a child inherits that mask: its threads would
    then share that core (measured: half the speed)."""
    cpus = os.environ.get(CPUS_ENV)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])


def machine(device: torch.device) -> str:
    """The accelerator's name (GPU) or the CPU model, cores and SIMD level (CPU)."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    f = line.split(":", 1)[1].split()
                    flags = "AVX-512" if "avx512f" in f else "AVX2" if "avx2" in f else ""
    except OSError:
        pass
    load = ", load average %.2f (other processes compete for the cores above 0)" % os.getloadavg()[0] \
        if hasattr(os, "getloadavg") else ""
    return (f"{name} CPU, {os.cpu_count()} cores{', ' + flags if flags else ''}, {torch.get_num_threads()} torch "
            f"threads{load}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)`` with the device synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ------------------------------------------------------------------ models and data
def make_model(name: str, seq_len: int, seed: int = 0, bpnet_head: str = "conv") -> torch.nn.Module:
    """A reference model from :mod:`fastism_torch.models` (Kaiming init, calibrated BatchNorm statistics), or
    one of :data:`benchmarks.bench_zoo.MODELS` (the field's packages, e.g. ``bpnetlite_chrombpnet``)."""
    from fastism_torch import models
    if name == "bpnet":
        return models.bpnet(seq_len=seq_len, seed=seed, profile_head=bpnet_head)
    if name not in models.MODELS:
        from benchmarks import bench_zoo
        if name in bench_zoo.MODELS:
            return bench_zoo.MODELS[name](seq_len).eval()
        raise ValueError(f"unknown model {name!r}; choose from {sorted(models.MODELS) + sorted(bench_zoo.MODELS)}")
    return models.MODELS[name](seq_len=seq_len, seed=seed)


def random_seqs(n: int, seq_len: int, seed: int = 123) -> torch.Tensor:
    from fastism_torch.models import random_onehot
    return random_onehot(n, seq_len, seed=seed)


def as_list(y) -> list[torch.Tensor]:
    return [y] if isinstance(y, torch.Tensor) else list(y)


@torch.inference_mode()
def naive_edit_loop(model, x: torch.Tensor, n_edits: int, batch: int, write) -> list[torch.Tensor]:
    """The fastest naive loop of the pairwise and multi-window benches: ``model`` on ``n_edits`` edited copies of
    ``x`` (1, ...), ``batch`` per forward pass in one reused input buffer; ``write(xb, lo)`` writes edits
    ``lo .. lo + len(xb)`` into the copies ``xb``.  Returns ``(n_edits, *out)`` per model output."""
    buf = torch.empty((batch, *x.shape[1:]))
    outs = None
    for lo in range(0, n_edits, batch):
        n = min(batch, n_edits - lo)
        xb = buf[:n]
        xb.copy_(x.expand(n, *x.shape[1:]))
        write(xb, lo)
        y = as_list(model(xb))
        if outs is None:
            outs = [torch.empty((n_edits, *o.shape[1:])) for o in y]
        for o, v in zip(outs, y):
            o[lo:lo + n] = v
    return outs


def fastest_batch(run, n_edits: int, choice: str, sizes=(8, 16, 32, 64, 128)) -> tuple[int, dict]:
    """A naive loop's batch size: ``choice``, or with ``auto`` the fastest per edit of ``sizes``, each timed on
    up to twice as many edits as the batch after a warm-up run; ``run(n, size)`` runs the first ``n`` edits at
    batch ``size``.  Returns the size and the seconds per edit of each."""
    if choice != "auto":
        return int(choice), {}
    per = {}
    for size in sizes:
        n = min(n_edits, 2 * size)
        run(n, size)
        _, t = timed(lambda: run(n, size), torch.device("cpu"))
        per[size] = t / n
    return min(per, key=per.get), per


@torch.no_grad()
def naive_float64(model, seqs, device, batch_size: int = 256) -> list[torch.Tensor]:
    """Full saturation mutagenesis ``(N, 4, L, *out)`` per output in float64 (a float64 copy of the model, one
    forward pass per position and base, no TF32 or autocast: they act on float32 and 16-bit types only): the
    reference the precision tiers' errors are measured against.  ``seqs``: ``(N, 4, L)`` one-hot, NCL."""
    import copy
    m = copy.deepcopy(model).to(device).double().eval()
    n, c, length = seqs.shape
    eye = torch.eye(c, dtype=torch.float64, device=device)
    pos, base = torch.arange(length, device=device).repeat_interleave(c), torch.arange(c, device=device).repeat(length)
    outs = None
    for i in range(n):
        x = seqs[i].to(device, torch.float64)
        parts = []
        for lo in range(0, c * length, batch_size):
            p, b = pos[lo:lo + batch_size], base[lo:lo + batch_size]
            xb = x.expand(len(p), c, length).clone()
            xb[torch.arange(len(p), device=device), :, p] = eye[b]
            parts.append(as_list(m(xb)))
        per_out = [torch.cat(o).view(length, c, *o[0].shape[1:]).transpose(0, 1).cpu() for o in zip(*parts)]
        outs = [[] for _ in per_out] if outs is None else outs
        for acc, o in zip(outs, per_out):
            acc.append(o)
    return [torch.stack(o) for o in outs]


def max_rel_diff(a, b) -> float:
    """Largest ``|a - b|`` over all outputs, relative to each output's largest ``|b|``."""
    worst = 0.0
    for x, y in zip(as_list(a), as_list(b)):
        x, y = x.detach().float().cpu(), y.detach().float().cpu()
        worst = max(worst, float((x - y).abs().max()) / (float(y.abs().max()) or 1.0))
    return worst


# ------------------------------------------------------------------ the three methods
@dataclass
class Timing:
    """Seconds for one method on ``n_seqs`` sequences; ``setup_s`` is paid once per call (or per object)."""
    method: str
    n_seqs: int
    setup_s: float = 0.0          # build / capture / verification, not per sequence
    steady_s: float = 0.0         # the per-call work on all n_seqs sequences, set-up excluded
    peak_gib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def per_seq(self) -> float:
        return self.steady_s / self.n_seqs

    @property
    def per_seq_with_setup(self) -> float:
        return (self.setup_s + self.steady_s) / self.n_seqs


def run_fastism(model, seqs, device, batch_size=None, compile=False, label="FastISM", repeat=1, tf32=False,
                dtype=None, cudnn_benchmark=None, delta=True):
    """Build FastISM (with its correctness self-test), then full calls: the first (plan building, compilation;
    with ``cudnn_benchmark=True`` cuDNN's autotuning of each shape) and ``repeat`` steady ones (the fastest
    counts).  ``cudnn_benchmark``: None = FastISM's own policy (:attr:`FastISM.cudnn_benchmark`); ``delta``:
    ``FastISM(delta=...)``."""
    from fastism_torch import FastISM
    seqs = seqs.to(device)
    reset_peak(device)

    def build():
        ism = FastISM(model, seqs.shape[-1], device=device, batch_size=batch_size, compile=compile, tf32=tf32,
                      dtype=dtype, delta=delta)
        if cudnn_benchmark is not None:
            ism.cudnn_benchmark = cudnn_benchmark
        return ism
    ism, t_build = timed(build, device)
    sat, t_first = timed(lambda: ism.saturation_mutagenesis(seqs), device)
    t_steady = float("inf")
    for _ in range(max(1, repeat)):
        sat, t = timed(lambda: ism.saturation_mutagenesis(seqs), device)
        t_steady = min(t_steady, t)
    t = Timing(label, seqs.shape[0], setup_s=t_build + max(0.0, t_first - t_steady), steady_s=t_steady,
               peak_gib=peak_gib(device))
    t.extra["macs"] = ism.mac_summary()
    t.extra["build_s"], t.extra["first_call_s"] = t_build, t_first
    t.extra["engine"] = ism                  # for a caller that times it again on other sequences
    if compile:
        t.note = f"{ism.compiled_graphs} graph(s) compiled"
    return t, sat


def run_naive(model, seqs, device, batch_size=None, compile=False, label="NaiveISM", tf32=False, dtype=None):
    """NaiveISM, batched; ``compile=True`` wraps its model copy in ``torch.compile``.  With ``compile`` or on a
    GPU a first call is the warm-up (compilation; cuDNN's autotuning of each batch shape and its library
    loading: unwarmed, Factorized Basset's eager run took 219, 238 and 362 s per 1000 sequences in three runs
    on one H100) and the second is timed; on the CPU the one call is timed, as in every CPU section of
    benchmarks/RESULTS.md (no autotuning there)."""
    from fastism_torch import NaiveISM
    seqs = seqs.to(device)
    reset_peak(device)
    ism = NaiveISM(model, seqs.shape[-1], device=device, batch_size=batch_size, tf32=tf32, dtype=dtype)
    warm = 0.0
    if compile:
        ism.model = torch.compile(ism.model)
    if compile or device.type != "cpu":     # the first call compiles / autotunes every batch shape of this job
        _, warm = timed(lambda: ism.saturation_mutagenesis(seqs), device)
    sat, t = timed(lambda: ism.saturation_mutagenesis(seqs), device)
    used = batch_size or next(iter(getattr(ism, "_tuned", {}).values()), ism.default_batch_size)
    note = f"{used}" + ("" if batch_size else " (measured)" if getattr(ism, "_tuned", None) else "")
    timing = Timing(label, seqs.shape[0], setup_s=max(0.0, warm - t), steady_s=t, peak_gib=peak_gib(device),
                    note=note)
    timing.extra["engine"] = ism             # for a caller that times it again on other sequences
    return timing, sat


def rerun(ism, first: Timing, seqs, device, label: str):
    """Time ``ism``, the engine of an earlier :func:`run_fastism` / :func:`run_naive` (``first``: its timing; the
    engine is ``first.extra["engine"]``), on other sequences: a first call (recompilation or autotuning of new
    shapes, if any) and a steady one.  The set-up is the engine's own plus what the first call took over the
    steady one: what a user of these sequences pays."""
    seqs = seqs.to(device)
    reset_peak(device)
    _, t_first = timed(lambda: ism.saturation_mutagenesis(seqs), device)
    sat, t = timed(lambda: ism.saturation_mutagenesis(seqs), device)
    again = Timing(label, seqs.shape[0], setup_s=first.setup_s + max(0.0, t_first - t), steady_s=t,
                   peak_gib=peak_gib(device), note=(first.note + "; " if first.note else "") +
                   f"engine of the n={first.n_seqs} run (its set-up counted)")
    return again, sat


def run_tangermeme(model, seqs, device, batch_size=32, force_fast=False, label="tangermeme fast=True", repeat=1):
    """tangermeme 1.6 ``saturation_mutagenesis(fast=True, raw_outputs=True)``; set-up timed inside the call.

    With ``repeat`` > 1 the call is repeated and the fastest set-up and steady part count (each call pays
    its set-up again).  Returns ``(Timing, y_hat)`` with ``y_hat`` shaped ``(N, 4, L, *out)`` per output like
    FastISM's.
    """
    best = None
    for _ in range(max(1, repeat)):
        t, y_hat = _tangermeme_once(model, seqs, device, batch_size, force_fast, label)
        if best is None:
            best = t
        else:
            best.setup_s, best.steady_s = min(best.setup_s, t.setup_s), min(best.steady_s, t.steady_s)
            best.note = best.note or t.note
    return best, y_hat


def _tangermeme_once(model, seqs, device, batch_size, force_fast, label):
    from tangermeme import saturation_mutagenesis as tsm
    model = model.to(device).eval()
    setup = {"s": 0.0, "used_fast": None}
    original_fast_path, original_min = tsm._fast_path, tsm._FAST_MIN_SECONDS

    def fast_path_timed(*args, **kwargs):
        out, s = timed(lambda: original_fast_path(*args, **kwargs), device)
        setup["s"] += s
        setup["used_fast"] = out[0] is not None
        return out

    original_rel = tsm._FAST_MAX_RELATIVE_TIME
    tsm._fast_path, tsm._FAST_MIN_SECONDS = fast_path_timed, 0.0
    if force_fast:              # keep the fast path even where its own check finds it slower than fast=False
        tsm._FAST_MAX_RELATIVE_TIME = float("inf")
    reset_peak(device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, total = timed(lambda: tsm.saturation_mutagenesis(
                model, seqs, batch_size=batch_size, device=device, raw_outputs=True, fast=True), device)
    finally:
        tsm._fast_path, tsm._FAST_MIN_SECONDS = original_fast_path, original_min
        tsm._FAST_MAX_RELATIVE_TIME = original_rel
    note = "" if setup["used_fast"] else "FELL BACK to fast=False"
    msgs = [str(w.message).split(". ")[0] for w in caught if "fast" in str(w.message)]
    if msgs:
        note = (note + ": " if note else "") + msgs[0][:160]
    t = Timing(label, seqs.shape[0], setup_s=setup["s"], steady_s=total - setup["s"], peak_gib=peak_gib(device),
               note=note)
    return t, res.y_hat


# ------------------------------------------------------------------ RESULTS.md
def fmt(x, digits=3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(path: str, title: str, device: torch.device, body: str) -> str:
    """Append a dated section (machine, torch version, command, then ``body``) to ``path``; returns it."""
    cmd = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), "-m",
                                             _module_name(), *sys.argv[1:]])
    env = " ".join(f"{k}={os.environ[k]}" for k in {**MALLOC_ENV, **THREAD_ENV} if k in os.environ)
    section = (f"\n## {title}: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n\n"
               f"- machine: {machine(device)}\n- torch {torch.__version__}, Python {platform.python_version()}"
               f"{_versions()}{_git_state()}\n- command: `{(env + ' ') if env else ''}{cmd}`\n\n{body.rstrip()}\n")
    new = not os.path.exists(path)
    with open(path, "a") as fh:
        if new:
            fh.write("# Benchmark results\n\nAppended by `benchmarks/bench_cpu.py` and `benchmarks/bench_gpu.py`; "
                     "each section records the machine, versions and the exact command.\n")
        fh.write(section)
    return section


def _git_state() -> str:
    """``, commit abc1234`` of the working tree (``+ uncommitted changes to fastism_torch`` if any)."""
    import subprocess
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "fastism_torch"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f", commit {head}{' + uncommitted changes to fastism_torch' if dirty else ''}" if head else ""


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.relpath(sys.argv[0])


def _versions() -> str:
    out = []
    for mod in ("fastism_torch", "tangermeme"):
        try:
            m = __import__(mod)
            out.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            pass
    return (", " + ", ".join(out)) if out else ""


@contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` inside the block, the caller's setting restored after it (a test's process
    goes on)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
