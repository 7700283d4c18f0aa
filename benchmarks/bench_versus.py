"""FastISM of this tree against FastISM of another commit, same run: "N× faster than the engine of then".

``python -m benchmarks.bench_versus --commit e0f64e5 [--models basset,bpnet,bpnetlite_chrombpnet] [--length 1000]
[--threads 2] [--rounds 3] [--out benchmarks/RESULTS.md]``

The other commit is checked out in a temporary ``git worktree`` (its package is pure Python: nothing to build).
Each engine runs in a fresh process, the order alternating over ``--rounds`` pairs (the medians), on the same
model (built by *this* tree's :func:`benchmarks.common.make_model`; the reference models' definitions are the
same in both trees, the zoo's come from PyPI) and the same random sequences: FastISM built with the self-check
off, full saturation mutagenesis of ``--n-seqs`` sequences, the first call (construction included) and the best
of two steady calls; in a process of its own, the default construction (build and self-check).  The sums of
the outputs are compared, so the two engines are known to compute the same thing.  ``--length`` applies to the
reference models; bpnet-lite's take their 2114 bp.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks import common

ROOT = os.path.dirname(common.HERE)     # this tree



def _one(tree: str, name: str, L: int, n_seqs: int, threads: int, construct: bool = False) -> dict:
    """In this (fresh) process: FastISM imported from ``tree``, one model, first and steady calls (or, with
    ``construct``, the default construction alone)."""
    sys.path.insert(0, tree)
    import fastism_torch as ft                    # this tree's or the other commit's package
    sys.path.remove(tree)
    assert os.path.dirname(os.path.dirname(os.path.abspath(ft.__file__))) == os.path.abspath(tree), ft.__file__
    torch.set_num_threads(threads)
    model = common.make_model(name, L).eval()
    x = common.random_seqs(n_seqs, L)
    if construct:                                 # a user's default construction: build and self-check
        t0 = time.perf_counter()
        ft.FastISM(model, L)
        return {"construct": time.perf_counter() - t0}
    t0 = time.perf_counter()
    e = ft.FastISM(model, L, test_correctness=False)
    out = e.saturation_mutagenesis(x)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        out = e.saturation_mutagenesis(x)
        best = min(best, time.perf_counter() - t0)
    total = sum(float(t.double().sum()) for t in common.as_list(out))
    return {"first": first, "steady": best / n_seqs, "sum": total}


def _worktree(commit: str, where: str) -> str:
    path = os.path.join(where, "tree")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, commit], check=True)
    return path


def bench(trees: dict, name: str, L: int, args) -> list:
    runs: dict = {label: [] for label in trees}
    labels = list(trees)
    for r in range(args.rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            res = {}
            for extra in ([], ["--construct"]):
                cmd = [sys.executable, "-m", "benchmarks.bench_versus", "--one", trees[label], name, str(L),
                       "--n-seqs", str(args.n_seqs), "--threads", str(args.threads), *extra]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                      cwd=ROOT, preexec_fn=common.unpinned)
                res.update(json.loads(done.stdout.strip().splitlines()[-1]))
            runs[label].append(res)
            print(label, name, res, flush=True)
    keys = ("steady", "first", "construct")
    med = {label: {k: statistics.median(x[k] for x in v) for k in keys} for label, v in runs.items()}
    sums = {label: v[-1]["sum"] for label, v in runs.items()}
    then, now = labels
    rel = abs(sums[then] - sums[now]) / max(1e-30, abs(sums[now]))
    return [name, L, args.threads, *[c for k in keys for c in (med[then][k], med[now][k], med[then][k] / med[now][k])],
            f"{rel:.1e}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", default="e0f64e5", help="the other commit (default: the engine when issue 21 was "
                   "filed, before delta propagation)")
    p.add_argument("--models", default="basset,factorized_basset,bpnet,bpnetlite_chrombpnet")
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-seqs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="", help="markdown file to append to ('' = don't)")
    p.add_argument("--one", nargs=3, metavar=("TREE", "MODEL", "L"), help=argparse.SUPPRESS)
    p.add_argument("--construct", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_versus")
    if args.one:
        tree, name, L = args.one
        print(json.dumps(_one(tree, name, int(L), args.n_seqs, args.threads, args.construct)))
        return
    from benchmarks import bench_zoo
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.commit], capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {commit: _worktree(commit, tmp), "this tree": ROOT}
        try:
            rows = [bench(trees, name, bench_zoo.LENGTHS.get(name, args.length), args)
                    for name in args.models.split(",")]
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", trees[commit]], check=False)
    body = (f"FastISM at commit {commit} against FastISM of this tree, full saturation of {args.n_seqs} random "
            f"sequence(s), {args.threads} thread(s), self-check off; each engine in a fresh process, {args.rounds} "
            "rounds with the order alternating, medians. Steady: best of two calls after the first, seconds per "
            "sequence; first call: construction with the self-check off and the first call, seconds; default "
            "construction: `FastISM(model, L)` alone (build and self-check), seconds, in a process of its own. "
            "× = then / now. The outputs' sums agree to the last column's relative difference.\n\n"
            + common.markdown_table(["model", "L", "threads", f"{commit} s/seq", "this tree s/seq", "× steady",
                                     f"{commit} 1st call s", "this tree 1st call s", "× 1st call",
                                     f"{commit} default construction s", "this tree", "× construction",
                                     "outputs' sums, rel diff"], rows))
    print(body)
    if args.out:
        with common.torch_threads(args.threads):       # (the machine line reports the children's threads)
            common.append_results(args.out, f"CPU, FastISM against commit {commit}", torch.device("cpu"), body)


if __name__ == "__main__":
    main()
