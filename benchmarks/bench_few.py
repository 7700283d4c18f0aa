"""Never slower than naive: third-party models from PyPI (the test zoo's configurations, unmodified classes), one
sequence, a few windows and full saturation, FastISM with its set-up against the fastest naive ISM, same run.

``python -m benchmarks.bench_few [--models ...] [--windows 24] [--threads 1] [--out RESULTS.md]``

For each model: ``--windows`` single-position windows evenly spaced over the sequence, every alternative base
(``3 x windows`` edits), then full saturation (``3 x L``).  FastISM's time includes building the engine
(``test_correctness=False``, as ``fastism_torch.saturation_mutagenesis`` builds it; with the self-check, the
construction column) and its first call; naive ISM's is its best of two calls at a batch size measured on the
call (``NaiveISM(batch_size=None)``).  With the cost model on (the default) FastISM may run a call as naive ISM;
the table says which path ran.  Needs ``bash scripts/install_zoo.sh .venv/bin/python``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from benchmarks import common

MODELS = ("bpnetlite_bpnet", "bpnetlite_chrombpnet", "grelu_dilatedconv", "grelu_convgru", "basenji2_pytorch")


def _zoo(name):
    sys.path.insert(0, os.path.join(os.path.dirname(common.HERE), "tests"))
    import zoo_models
    return zoo_models.ZOO[name]()


def _best(fn, n=2):
    out, best = None, float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench(name: str, n_windows: int) -> list:
    import fastism_torch as ft
    model, L, layout, _ = _zoo(name)
    x = common.random_seqs(1, L)
    if layout == "NLC":
        x = x.transpose(1, 2).contiguous()
    pos = np.unique(np.linspace(0, L - 1, n_windows).round().astype(int))
    ranges = [(int(p), int(p) + 1) for p in pos]
    rows = []
    for label, kw, call in (
            (f"{len(pos)} windows x 3 bases", dict(change_ranges=ranges), "windows"),
            ("full saturation", {}, "saturation")):
        def run(e):
            if call == "saturation":
                return e.saturation_mutagenesis(x)
            return [e(x, replace_with=torch.eye(4)[b]) for b in range(4)]
        t0 = time.perf_counter()
        fast = ft.FastISM(model, L, layout=layout, test_correctness=False, **kw)
        out_f = run(fast)
        t_fast = time.perf_counter() - t0                    # set-up and the first call
        _, t_steady = _best(lambda: run(fast), 1)
        path = "naive (cost model)" if fast._naive is not None else "fast"
        naive = ft.NaiveISM(model, L, layout=layout, **kw)
        out_n, t_naive = _best(lambda: run(naive))
        t0 = time.perf_counter()
        ft.FastISM(model, L, layout=layout, **kw)
        t_check = time.perf_counter() - t0
        diff = max(common.max_rel_diff(a, b) for a, b in zip(common.as_list(out_f), common.as_list(out_n)))
        rows.append([name, L, label, t_naive, t_fast, t_steady, t_naive / t_fast, t_naive / t_steady, path,
                     t_check, f"{diff:.1e}"])
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="", help="markdown file to append to ('' = don't)")
    args = p.parse_args(argv)
    if argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_few")
    os.environ.setdefault("USE_TF", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    import fastism_torch as ft
    from fastism_torch import models
    t0 = time.perf_counter()          # once per process: imports and first-use costs of fx, meta kernels, ...
    ft.FastISM(models.tiny(seq_len=50), 50, test_correctness=False)(models.random_onehot(1, 50))
    warm = time.perf_counter() - t0
    rows = [r for name in args.models.split(",") for r in bench(name, args.windows)]
    body = (f"One random sequence, {torch.get_num_threads()} thread(s), load average at the end "
            f"{os.getloadavg()[0]:.2f}. FastISM: seconds for construction (self-check off) + the first call, and a "
            "second call; naive: best of two calls, batch size measured; × = naive / FastISM. The process's first "
            f"FastISM (a tiny model, built and called before the rows) took {warm:.2f} s: imports and first uses, "
            "paid once per process and not in the rows.\n\n"
            + common.markdown_table(["model", "L", "edits", "naive s", "FastISM s incl. set-up", "FastISM s, 2nd call",
                                     "× incl. set-up", "× 2nd call", "path FastISM took",
                                     "construction with self-check s", "max rel diff"], rows))
    print(body)
    if args.out:
        common.append_results(args.out, "CPU, third-party models, one sequence: few windows and full saturation",
                              torch.device("cpu"), body)


if __name__ == "__main__":
    main()
