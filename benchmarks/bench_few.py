"""Never slower than naive: third-party models from PyPI (the test zoo's configurations, unmodified classes), one
sequence, a few windows and full saturation, FastISM with its set-up against the fastest naive ISM, same run.

``python -m benchmarks.bench_few [--models ...] [--windows 24] [--threads 1] [--out RESULTS.md]``

For each model: ``--windows`` single-position windows evenly spaced over the sequence, every alternative base
(``3 x windows`` edits), then full saturation (``3 x L``).  FastISM's time includes building the engine
(``test_correctness=False``, as ``fastism_torch.saturation_mutagenesis`` builds it; with the self-check, the
construction column) and its first call; naive ISM's is its first call, at a batch size measured on the call
(``NaiveISM(batch_size=None)``); each engine runs in a fresh process, so both first calls pay for the model's
kernel set-up (oneDNN primitives per shape) as a user's would.  Steady: both engines in one process, after their
first calls, alternating calls (:func:`_paired`).  With the cost model on (the default) FastISM may run a call as
naive ISM; the table says which path ran.  Needs ``bash scripts/install_zoo.sh .venv/bin/python``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from benchmarks import common

#: calls of each engine, alternating in one process, for the steady columns (:func:`_paired`)
STEADY_CALLS = 7
MODELS = ("bpnetlite_bpnet", "bpnetlite_chrombpnet", "grelu_dilatedconv", "grelu_convgru", "basenji2_pytorch")


def _zoo(name):
    sys.path.insert(0, os.path.join(os.path.dirname(common.HERE), "tests"))
    import zoo_models
    return zoo_models.ZOO[name]()


def _task(name: str, kind: str, n_windows: int):
    """``(L, make(engine), run(engine), edits)`` of one cell: the sequence length, a new engine (``"fast"`` or
    ``"naive"``), one call of an engine, and the number of windows."""
    import fastism_torch as ft
    model, L, layout, _ = _zoo(name)
    x = common.random_seqs(1, L)
    if layout == "NLC":
        x = x.transpose(1, 2).contiguous()
    pos = np.unique(np.linspace(0, L - 1, n_windows).round().astype(int))
    kw = {} if kind == "saturation" else dict(change_ranges=[(int(p), int(p) + 1) for p in pos])

    def make(engine):
        return (ft.FastISM(model, L, layout=layout, test_correctness=False, **kw) if engine == "fast"
                else ft.NaiveISM(model, L, layout=layout, batch_size=None, **kw))

    def run(e):
        if kind == "saturation":
            return e.saturation_mutagenesis(x)
        return [e(x, replace_with=torch.eye(4)[b]) for b in range(4)]
    return L, make, run, len(pos)


def _path(e) -> str:
    """What a FastISM engine ran: naive ISM without a build, naive ISM by the cost model, or the fast path."""
    return "naive (not built)" if e.gm is None else "naive (cost model)" if e._naive_ranges else "fast"


def _call(engine: str, name: str, kind: str, n_windows: int, out_path: str) -> dict:
    """One engine's first call (with construction) on one model, in this (fresh) process: ``{"first": s, "path":
    ...}``; its outputs are saved to ``out_path`` (.npz)."""
    L, make, run, edits = _task(name, kind, n_windows)
    t0 = time.perf_counter()
    e = make(engine)
    out = run(e)
    first = time.perf_counter() - t0
    flat = [t for o in (out if isinstance(out, list) else [out]) for t in common.as_list(o)]
    np.savez(out_path, *[t.numpy() for t in flat])
    return {"first": first, "path": _path(e) if engine == "fast" else engine, "L": L, "edits": edits}


def _paired(name: str, kind: str, n_windows: int, calls: int = STEADY_CALLS) -> dict:
    """Both engines in this one process, each after its first call: ``calls`` calls of each, alternating (the
    order too), the medians, and the path FastISM took last.  One process: a process's speed settles at a level of
    its own (see ``common.THREAD_ENV``), which fresh-process pairs of calls this short cannot average away."""
    import statistics
    _, make, run, _ = _task(name, kind, n_windows)
    engines = {e: make(e) for e in ("naive", "fast")}
    times: dict = {e: [] for e in engines}
    for e in engines.values():
        run(e)
    for i in range(calls):
        for label in ("naive", "fast") if i % 2 == 0 else ("fast", "naive"):
            t0 = time.perf_counter()
            run(engines[label])
            times[label].append(time.perf_counter() - t0)
    return {**{e: statistics.median(t) for e, t in times.items()}, "path": _path(engines["fast"])}


def bench(name: str, n_windows: int, threads: int | None, rounds: int = 3) -> list:
    """Naive and FastISM each in a fresh process (cold: their first calls pay for oneDNN's kernel set-up of the
    model's shapes, as a user's would), windows then full saturation; ``rounds`` pairs of processes (the order
    alternating), each time the median (calls of 10-200 ms at 2 threads move by +-20% from one process to the
    next: single rounds put the same cell at 0.6x and 1.1x); then the steady calls of both in one process."""
    import json
    import statistics
    import subprocess
    import tempfile

    def child(*argv) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.bench_few", *argv, "--windows", str(n_windows)]
        if threads:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, preexec_fn=common.unpinned)
        return json.loads(done.stdout.strip().splitlines()[-1])

    rows = []
    for kind in ("windows", "saturation"):
        runs: dict = {"naive": [], "fast": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for engine in ("naive", "fast") if r % 2 == 0 else ("fast", "naive"):
                    runs[engine].append(child("--one", engine, name, kind, "--npz", os.path.join(tmp, engine + ".npz")))
            res = {e: {**v[-1], "first": statistics.median(x["first"] for x in v)} for e, v in runs.items()}
            outs = {e: np.load(os.path.join(tmp, e + ".npz")) for e in res}
            diff = max(common.max_rel_diff(torch.from_numpy(outs["fast"][k]), torch.from_numpy(outs["naive"][k]))
                       for k in outs["fast"].files)
        steady = child("--paired", name, kind)
        n, f = res["naive"], res["fast"]
        label = f"{n['edits']} windows x 3 bases" if kind == "windows" else "full saturation"
        rows.append([name, n["L"], label, n["first"], f["first"], n["first"] / f["first"], f["path"],
                     steady["naive"], steady["fast"], steady["naive"] / steady["fast"], steady["path"], f"{diff:.1e}"])
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3, help="fresh process pairs per cell (the median is reported)")
    p.add_argument("--out", default="", help="markdown file to append to ('' = don't)")
    p.add_argument("--one", nargs=3, metavar=("ENGINE", "MODEL", "KIND"), help=argparse.SUPPRESS)
    p.add_argument("--npz", help=argparse.SUPPRESS)
    p.add_argument("--paired", nargs=2, metavar=("MODEL", "KIND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_few")
    os.environ.setdefault("USE_TF", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    import fastism_torch as ft
    from fastism_torch import models
    t0 = time.perf_counter()          # once per process: imports and first-use costs of fx, meta kernels, ...
    ft.FastISM(models.tiny(seq_len=50), 50)(models.random_onehot(1, 50))
    ft.NaiveISM(models.tiny(seq_len=50), 50)(models.random_onehot(1, 50))
    warm = time.perf_counter() - t0
    if args.one or args.paired:
        import json
        print(json.dumps(_call(*args.one, args.windows, args.npz) if args.one else _paired(*args.paired, args.windows)))
        return
    rows = [r for name in args.models.split(",") for r in bench(name, args.windows, args.threads, args.rounds)]
    body = (f"One random sequence, {torch.get_num_threads()} thread(s), load average at the end "
            f"{os.getloadavg()[0]:.2f}. Each engine in a fresh process ({args.rounds} rounds, the order alternating: "
            "the medians), where a tiny model was built and called "
            f"first ({warm:.2f} s: imports and first uses of fx, meta kernels, oneDNN, paid once per process and not in "
            "the rows). First call: construction (FastISM: self-check off) + the first call, cold for the model's "
            f"shapes as a user's first call is. Steady: both engines in one more process, after their first calls, "
            f"{STEADY_CALLS} calls each alternating, the medians (a process's speed settles at a level of its own: "
            "fresh-process pairs of calls this short put the same cell anywhere in 0.7-1.5x). Naive: NaiveISM, batch "
            "size measured on the call. × = naive / FastISM. Path: what FastISM ran (a lazy engine runs small calls "
            "as naive ISM without building, and builds once naive ISM has cost a few set-ups; a built engine's cost "
            "model may still choose naive).\n\n"
            + common.markdown_table(["model", "L", "edits", "naive s, 1st call", "FastISM s, 1st call incl. set-up",
                                     "× 1st call", "path FastISM took", "naive s, steady", "FastISM s, steady",
                                     "× steady", "path, steady", "max rel diff"], rows))
    print(body)
    if args.out:
        common.append_results(args.out, "CPU, third-party models, one sequence: few windows and full saturation",
                              torch.device("cpu"), body)


if __name__ == "__main__":
    main()
