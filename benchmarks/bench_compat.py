"""The one-line switch: ``tangermeme.saturation_mutagenesis(model, X)`` vs ``fastism_torch.saturation_mutagenesis``.

The same call, with tangermeme's defaults (attributions, ``batch_size=32``, ``fast=True``) and ``device`` set,
goes through both on the same random one-hot sequences in one process, for 1 sequence and for 64 (``--n-seqs``),
and one markdown table is appended to ``--out`` (default ``benchmarks/RESULTS.md``)::

    python -m benchmarks.bench_compat --models basset --length 1000 --n-seqs 1,64 --threads 1

What each side pays:

- tangermeme 1.6, per call: its first batch of edits through ``fast=False``, timed; if the whole job would take
  under 30 s at that rate, it stays on ``fast=False`` (one forward pass per edit); otherwise it captures the
  model with ``torch.export``, checks its fastISM path against ``fast=False`` on one batch, and uses it.  Its
  thresholds are left as they are (the call a user makes); the table says which path it took.
- fastism_torch: the first call builds the engine (capture, analysis, plan; no self-check) and keeps it
  (:mod:`fastism_torch.engine_cache`); the table has the first call and a second, steady call.

The naive baseline is :class:`fastism_torch.NaiveISM` on the first sequence (its batch size measured on the
call's first batches), in the same process; the two attributions are checked against each other (largest
difference relative to the largest attribution).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="basset", help="comma-separated: basset,factorized_basset,tiny")
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--n-seqs", default="1,64", help="comma-separated numbers of sequences per call")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-naive", action="store_true", help="skip the naive ISM baseline")
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' for none)")
    p.add_argument("--no-malloc-env", action="store_true", help="keep glibc's default allocator settings")
    return p.parse_args(argv)


def _tangermeme(model, X, device):
    """tangermeme's call, timed; which path it took (its ``_fast_path`` is wrapped only to read the answer)."""
    from tangermeme import saturation_mutagenesis as tsm
    path = {"fast": False}
    original = tsm._fast_path

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        path["fast"] = out[0] is not None
        return out
    tsm._fast_path = spy
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attr, t = common.timed(lambda: tsm.saturation_mutagenesis(model, X, device=device), device)
    finally:
        tsm._fast_path = original
    note = "fastISM path" if path["fast"] else "fast=False path"
    fell = [str(w.message).split(". ")[0][:120] for w in caught if "fast=False because" in str(w.message)]
    return attr, t, note + (f" ({fell[0]})" if fell else "")


def bench(name: str, n: int, args, device) -> dict:
    import fastism_torch as ft
    model = common.make_model(name, args.length)
    X = common.random_seqs(n, args.length)
    ft.compat.clear_cache()
    ours, t_first = common.timed(lambda: ft.saturation_mutagenesis(model, X, device=device), device)
    ours, t_steady = common.timed(lambda: ft.saturation_mutagenesis(model, X, device=device), device)
    theirs, t_tm, note = _tangermeme(model, X, device)
    diff = float((ours - theirs).abs().max()) / (float(theirs.abs().max()) or 1.0)
    res = dict(model=name, n=n, first=t_first, steady=t_steady, tm=t_tm, note=note, diff=diff, naive=None)
    print(f"  {name} N={n}: fastism_torch first call {t_first:.2f} s, steady {t_steady:.2f} s; tangermeme "
          f"{t_tm:.2f} s ({note}); max rel diff {diff:.2g}", flush=True)
    return res


def naive_per_seq(name: str, args, device) -> tuple[float, str]:
    """NaiveISM seconds per sequence on one sequence (full saturation), with the batch size it measured."""
    t, _ = common.run_naive(common.make_model(name, args.length), common.random_seqs(1, args.length), device)
    return t.per_seq, t.note


def table(rows: list[dict]) -> str:
    headers = ["model", "L", "N", "tangermeme s (its path)", "fastism_torch first call s", "fastism_torch steady s",
               "× tangermeme, first call", "× tangermeme, steady", "naive ISM s/seq (batch)", "fastism_torch steady × naive",
               "max rel diff"]
    out = []
    for r in rows:
        nv = r["naive"]
        out.append([r["model"], r["L"], r["n"], f"{common.fmt(r['tm'])} ({r['note']})", r["first"], r["steady"],
                    r["tm"] / r["first"], r["tm"] / r["steady"], f"{common.fmt(nv[0])} ({nv[1]})" if nv else None,
                    nv[0] * r["n"] / r["steady"] if nv else None, common.fmt(r["diff"], 2)])
    return common.markdown_table(headers, out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if not args.no_malloc_env and argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_compat")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{common.machine(device)}; torch {torch.__version__}; L={args.length}", flush=True)
    rows = []
    for name in args.models.split(","):
        nv = None if args.no_naive else naive_per_seq(name, args, device)
        for n in (int(x) for x in args.n_seqs.split(",")):
            rows.append({**bench(name, n, args, device), "L": args.length, "naive": nv})
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (f"`saturation_mutagenesis(model, X, device=...)` through tangermeme 1.6 and through fastism_torch (the "
            f"same call, tangermeme's defaults: attributions, batch_size=32, fast=True), seconds per call on random "
            f"one-hot sequences, {torch.get_num_threads()} torch thread(s); × = times faster. fastism_torch's first "
            f"call builds its engine (no self-check), the steady call reuses it; tangermeme pays its set-up on "
            f"every call. Naive ISM: NaiveISM on one sequence, same run. Load average at the end: {load_end:.2f}. "
            f"On a machine shared with other work these timings are noisy (±15% or more between runs).\n\n"
            + table(rows))
    print(body)
    if args.out:
        common.append_results(args.out, f"CPU, tangermeme call, L={args.length}", device, body)
        print(f"appended to {args.out}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
