"""CPU speed of edits of several windows (``multi_edits``): FastISM vs naive.

For each model, one process times on the same random one-hot sequence the same edits, ``--scenario``:

- ``snps``: ``--edits`` random double SNPs (two positions ``--min-distance..--max-distance`` apart, both set to a
  base other than the sequence's own; pairs farther apart than the plan's additive distance run in the sum
  form, e.g. ``--models bpnet --length 2114 --min-distance 1100 --max-distance 2000``);
- ``scan``: a motif pair scan: ``GATAAG`` at ``L/4`` and ``CACGTG`` at every position from 10 bp after it to the
  end (the edits share their first window);

by

- the fastest naive loop we have (:func:`naive_loop`: edited sequences built in a reused input buffer, one
  batched forward pass per ``batch`` of them, the batch size measured fastest here);
- ``NaiveISM.multi_edits`` (the engine's naive form: every edit a hull, one forward pass each, batched);
- ``FastISM.multi_edits`` with the default form choice (plan's MACs), and with ``--forms`` also every edit as
  a hull (``span=L``) or on a mutant copy (``span=0``); self-check off; the steady call (best of
  ``--repeat``) apart from the set-up (construction + the first call's plans), as the other benchmarks do.

Every method's values are checked against the naive loop (max relative difference in the table)::

    python -m benchmarks.bench_multi --models basset,bpnet --edits 3000 --threads 2 --out benchmarks/RESULTS.md

The process re-executes itself with glibc's allocator told to keep freed memory (see benchmarks/common.py).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import common

CPU = torch.device("cpu")
FORMS = {"auto": None, "hull": "L", "mutant": 0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="basset,bpnet")
    p.add_argument("--scenario", default="snps", choices=["snps", "scan"])
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--edits", type=int, default=3000)
    p.add_argument("--min-distance", type=int, default=1)
    p.add_argument("--max-distance", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="steady calls of each FastISM form (the best is kept)")
    p.add_argument("--forms", default="auto,hull,mutant", help="FastISM forms: auto, hull (span=L), mutant (span=0)")
    p.add_argument("--naive-batch", default="auto", help="batch size of the naive loop, or 'auto' (measured)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append a section to this markdown file (e.g. benchmarks/RESULTS.md)")
    return p.parse_args(argv)


def double_snps(x: torch.Tensor, n: int, max_distance: int, seed: int, min_distance: int = 1) -> np.ndarray:
    """``(4, n)``: positions ``i < j`` (``j - i`` in ``min_distance..max_distance``) and their new bases ``a``,
    ``b``."""
    rng = np.random.default_rng(seed)
    L = x.shape[-1]
    d = rng.integers(min(min_distance, L - 1), min(max_distance, L - 1) + 1, n)
    i = rng.integers(0, L - d)
    own = x[0].argmax(0).numpy()
    return np.stack([i, (own[i] + rng.integers(1, 4, n)) % 4, i + d, (own[i + d] + rng.integers(1, 4, n)) % 4])


def make_edits(x: torch.Tensor, args) -> list:
    """The scenario's edits in ``multi_edits``'s form (letters of ACGT)."""
    L = x.shape[-1]
    if args.scenario == "scan":
        first = L // 4
        return [[(first, "GATAAG"), (p, "CACGTG")] for p in range(first + 16, L - 5)]
    pairs = double_snps(x, args.edits, args.max_distance, args.seed, args.min_distance)
    return [[(int(i), int(a)), (int(j), int(b))] for i, a, j, b in pairs.T]


def naive_loop(model, x: torch.Tensor, windows: list, batch: int) -> list:
    """Outputs of ``model`` on ``x`` (1, 4, L) with each edit's windows (:func:`fastism_torch.multi.parse_edits`)
    written in (:func:`benchmarks.common.naive_edit_loop`): list per output ``(E, *out)``."""
    def write(xb, lo):
        for k, wins in enumerate(windows[lo:lo + len(xb)]):
            for w in wins:
                xb[k, :, w.start:w.end] = w.rows.T
    return common.naive_edit_loop(model, x, len(windows), batch, write)


def best_batch(model, x, windows, choice: str) -> tuple[int, dict]:
    """The naive loop's batch size (:func:`benchmarks.common.fastest_batch`)."""
    return common.fastest_batch(lambda n, size: naive_loop(model, x, windows[:n], size), len(windows), choice)


def _rel(got, want) -> float:
    return max(float((torch.as_tensor(g)[0] - w).abs().max()) / (float(w.abs().max()) or 1.0)
               for g, w in zip(common.as_list(got), want))


def bench_model(name: str, args) -> list:
    import fastism_torch as ft
    from fastism_torch.multi import parse_edits
    model = common.make_model(name, args.length).eval()
    L = args.length
    x = common.random_seqs(1, L)
    edits = make_edits(x, args)
    windows = parse_edits(edits, 4, L, "ACGT")
    batch, per = best_batch(model, x, windows, args.naive_batch)
    want, t_loop = common.timed(lambda: naive_loop(model, x, windows, batch), CPU)
    naive = ft.NaiveISM(model, L)
    got, t_naive = common.timed(lambda: naive.multi_edits(x, edits, alphabet="ACGT"), CPU)
    row = [name, L, len(edits), f"{batch}" + (" (measured)" if per else ""), t_loop, t_naive]
    diffs = [_rel(got, want)]
    ism, t_build = common.timed(lambda: ft.FastISM(model, L, test_correctness=False), CPU)
    for form in args.forms.split(","):
        span = L if FORMS[form] == "L" else FORMS[form]
        got, t_first = common.timed(lambda: ism.multi_edits(x, edits, span=span, alphabet="ACGT"), CPU)
        steady = min(common.timed(lambda: ism.multi_edits(x, edits, span=span, alphabet="ACGT"), CPU)[1]
                     for _ in range(args.repeat))
        diffs.append(_rel(got, want))
        best = min(t_loop, t_naive)
        row += [steady, best / steady]
        if form == "auto":
            row += [t_build + max(0.0, t_first - steady)]
    row.append(f"{max(diffs):.1e}")
    print(row, flush=True)
    return row


def main(argv=None) -> list:
    if argv is None:                                    # (from the command line, not from a test)
        common.reexec_with_malloc_env("benchmarks.bench_multi")
    args = parse_args(argv)
    with common.torch_threads(args.threads):
        rows = [bench_model(name, args) for name in args.models.split(",")]
        report(args, rows)
    return rows


def report(args, rows: list) -> None:
    """Print the table, or append it to ``args.out`` with the machine line."""
    heads = ["model", "L", "edits", "naive batch", "naive loop s", "NaiveISM.multi_edits s"]
    for form in args.forms.split(","):
        heads += [f"FastISM {form} s", f"{form} × best naive"] + (["FastISM set-up s"] if form == "auto" else [])
    what = (f"{args.edits} random double SNPs (two positions {args.min_distance}-{args.max_distance} bp apart, both "
            "set to another base)" if args.scenario == "snps" else
            "a motif pair scan (GATAAG at L/4, CACGTG at every position from 10 bp after it on)")
    body = (f"`multi_edits` of {what} on one random sequence; seconds for all of them. Naive loop = the "
            "edited sequences built in a reused buffer, batched forward passes (batch size measured); FastISM: "
            f"steady call (best of {args.repeat}); auto = the form chosen from the plan's MACs, hull = every edit "
            "one window of its hull (span=L), mutant = every edit a single edit of a mutant copy (span=0). Set-up = "
            "construction + the first call's plans. Max rel diff: every method against the naive loop.\n\n")
    body += common.markdown_table(heads + ["max rel diff"], rows)
    body += ("\n\nCaveat: a 2-core machine; the load average above says whether other work competed. Ratios are "
             "taken within one process, but contention varies during a run.\n")
    if args.out:
        print(common.append_results(args.out, f"Edits of several windows (multi_edits, {args.scenario}), CPU, "
                                    f"L={args.length}", CPU, body))
    else:
        print(body)


if __name__ == "__main__":
    main()
