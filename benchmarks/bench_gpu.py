"""GPU speed of full saturation mutagenesis, batch sizes swept, precision tiers (issues 4, 22); runs on CPU too.

For each model and length, in one process, on the same random one-hot sequences (1 and 64 of them by
default: ``--n-seqs 1,64``): FastISM eager, compiled (``compile=True``) and with CUDA graphs
(``"reduce-overhead"``), NaiveISM batched with the model eager and under ``torch.compile`` (warmed), and
tangermeme 1.6's ``saturation_mutagenesis(fast=True)``, each at every batch size of its sweep.  Two markdown
tables per model and length go to ``--out`` (default ``$OUT/RESULTS_gpu.md`` where ``$OUT`` is set, as on the
device machine, else ``benchmarks/RESULTS.md``)::

    python -m benchmarks.bench_gpu --device cuda                       # Basset, Factorized Basset, BPNet
    python -m benchmarks.bench_gpu --device cpu --models tiny --lengths 100 --batch-sizes 64 --n-seqs 2   # smoke run

- every row: seconds per 1000 sequences in steady state (set-up excluded), the one-time set-up (FastISM:
  construction with its self-test, plan building, compilation and, with cuDNN autotuning, the autotuning of the
  first call; naive compiled: compilation; tangermeme: its per-call capture and verification), speed-up over
  the fastest naive row of the same model, length and number of sequences, achieved TFLOP/s, the fraction of
  the MAC bound reached (FastISM rows), peak GPU memory, the largest difference from the first naive run
  (relative to output scale) and, with ``--f64-seqs K``, the largest error against float64 naive ISM on the
  first K sequences (the precision tiers' error);
- the headline table: per method and number of sequences, its best batch size of the sweep (naive: fastest
  steady state, warmed; tangermeme: fastest with its per-call set-up counted; FastISM: fastest steady state).

Methods are ``fast_eager``, ``fast_compiled``, ``fast_reduce_overhead``, ``naive_eager``, ``naive_compiled``,
``tangermeme``, each with optional modifiers after ``+``: ``+tf32`` (TF32 convolutions and matmuls),
``+bf16`` (autocast to bfloat16) -- the precision tiers -- and ``+autotune`` (FastISM with cuDNN autotuning
on: its first-call cost is in the set-up column), e.g. ``fast_compiled+tf32``.  A run that fails (out of
memory, compile error) is a row with the error, not a crash; a float32 row that differs from naive ISM by more
than 1e-4 (TF32: 1e-2, bf16: 1e-1) of the output scale is an error.  Models with a profile output (BPNet:
``(N, 4, L, tasks, L)`` floats) run fewer sequences, so that the results fit in ``--max-output-gib``.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

from benchmarks import common

BASES = ("fast_compiled", "fast_reduce_overhead", "fast_eager", "naive_compiled", "naive_eager", "tangermeme")
METHODS = BASES                 # (the names without modifiers; kept for scripts that import it)
MODIFIERS = ("tf32", "bf16", "autotune")
MAX_REL_DIFF = {"": 1e-4, "tf32": 1e-2, "bf16": 1e-1}   # against the float32 naive reference, per tier


def default_out() -> str:
    """``$OUT/RESULTS_gpu.md`` where the device machine's ``$OUT`` is set (only ``$OUT`` comes back), else
    ``benchmarks/RESULTS.md``."""
    out = os.environ.get("OUT")
    return os.path.join(out, "RESULTS_gpu.md") if out else common.DEFAULT_RESULTS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="basset,factorized_basset,bpnet")
    p.add_argument("--lengths", default="1000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(BASES),
                   help="any of " + ",".join(BASES) + ", with modifiers +" + ", +".join(MODIFIERS))
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated sweep for the FastISM rows; 'auto' = FastISM's own choice. Default: auto "
                        "on CUDA, auto,256 on CPU")
    p.add_argument("--naive-batch-sizes", default=None,
                   help="comma-separated sweep for the naive and tangermeme rows (default: 256,1024,4096 on CUDA, "
                        "128 on CPU; the batch sizes of --batch-sizes if given)")
    p.add_argument("--n-seqs", default=None, help="comma-separated numbers of sequences (default: 1,64 on CUDA, "
                                                  "1,2 on CPU); each a run of its own, the first n of the same set")
    p.add_argument("--f64-seqs", type=int, default=1,
                   help="error of every row against float64 naive ISM on the first K sequences (0: none)")
    p.add_argument("--max-output-gib", type=float, default=2.0,
                   help="fewer sequences for models whose saturation output would be larger")
    p.add_argument("--bpnet-head", default="conv", choices=["conv", "conv_transpose"])
    p.add_argument("--tf32", action="store_true", help="every method with TF32 (as the +tf32 modifier on all)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for CPU runs; 1 on a shared small machine (see RESULTS.md)")
    p.add_argument("--out", default=None, help="markdown file to append to ('' = don't; default: see above)")
    args = p.parse_args(argv)
    args.out = default_out() if args.out is None else args.out
    return args


def parse_method(spec: str) -> tuple[str, frozenset]:
    """``"fast_compiled+tf32"`` -> ``("fast_compiled", {"tf32"})``; ValueError naming what is unknown."""
    base, *mods = spec.split("+")
    bad = [m for m in mods if m not in MODIFIERS]
    if base not in BASES or bad:
        raise ValueError(f"unknown method {spec!r}: choose from {', '.join(BASES)}, with modifiers "
                         f"{', '.join('+' + m for m in MODIFIERS)}")
    if "bf16" in mods and "tf32" in mods:
        raise ValueError(f"method {spec!r}: +tf32 and +bf16 are two tiers; choose one")
    return base, frozenset(mods)


def tier(mods) -> str:
    return "bf16" if "bf16" in mods else "tf32" if "tf32" in mods else ""


def _sweeps(args, device):
    if args.batch_sizes:
        fast = [None if b == "auto" else int(b) for b in args.batch_sizes.split(",")]
        other = [b for b in fast if b is not None] or [128]
    elif device.type == "cuda":
        fast, other = [None], [256, 1024, 4096]
    else:
        fast, other = [None, 256], [128]
    if args.naive_batch_sizes:
        other = [int(b) for b in args.naive_batch_sizes.split(",")]
    return fast, other


def _n_list(args, device, model, L) -> list[int]:
    want = [int(v) for v in args.n_seqs.split(",")] if args.n_seqs else ([1, 64] if device.type == "cuda" else [1, 2])
    with torch.no_grad():
        outs = common.as_list(model(common.random_seqs(1, L)))
    per_seq = 4 * L * 4 * sum(o[0].numel() for o in outs)          # float32, 4 bases x L positions
    cap = max(1, int(args.max_output_gib * 2**30 // per_seq))
    return sorted({max(1, min(n, cap)) for n in want})


def _run(base, mods, model, seqs, device, batch, args):
    from fastism_torch.precision import float32_precision
    tf32 = args.tf32 or "tf32" in mods
    dtype = torch.bfloat16 if "bf16" in mods else None
    if base.startswith("fast"):
        compile_ = {"fast_compiled": True, "fast_reduce_overhead": "reduce-overhead"}.get(base, False)
        return common.run_fastism(model, seqs, device, batch_size=batch, compile=compile_, label=base, tf32=tf32,
                                  dtype=dtype, cudnn_benchmark=True if "autotune" in mods else None)
    if base.startswith("naive"):
        return common.run_naive(model, seqs, device, batch_size=batch, compile=base == "naive_compiled",
                                label=base, tf32=tf32, dtype=dtype)
    with float32_precision(tf32, device), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return common.run_tangermeme(model, seqs, device, batch_size=batch, label=base)


def _methods(args) -> list[tuple[str, str, frozenset]]:
    specs = [m for m in args.methods.split(",") if m]
    try:
        parsed = [(spec, *parse_method(spec)) for spec in specs]
    except ValueError as e:
        raise SystemExit(str(e)) from None
    parsed.sort(key=lambda m: not (m[1].startswith("naive") and not tier(m[2])))   # float32 naive first: reference
    return parsed


def bench(name: str, L: int, args, device) -> list[dict]:
    """Every method at every batch size of its sweep, for each number of sequences; the rows."""
    methods = _methods(args)
    fast_sweep, other_sweep = _sweeps(args, device)
    model = common.make_model(name, L, bpnet_head=args.bpnet_head)
    n_list = _n_list(args, device, model, L)
    seqs = common.random_seqs(max(n_list), L)
    from fastism_torch import FastISM
    macs = FastISM(model, L, test_correctness=False).mac_summary()
    f64 = None
    if args.f64_seqs:
        k = min(args.f64_seqs, max(n_list))
        f64 = (k, common.naive_float64(model, seqs[:k], device))
    rows, refs = [], {}
    for spec, base, mods in methods:
        sweep = fast_sweep if base.startswith("fast") else other_sweep
        for batch in _batches(sweep, base, 3 * L * max(n_list)):
            engine = None                          # built for the largest n, timed again on fewer, then dropped
            for n in sorted(n_list, reverse=True):
                if batch not in _batches(sweep, base, 3 * L * n):
                    continue                       # the same call as a smaller batch size of the sweep
                row = {"model": name, "L": L, "method": spec, "base": base, "tier": tier(mods),
                       "batch": batch or "auto", "n": n}
                print(f"{name} L={L} n={n} {spec} batch={row['batch']} ...", end=" ", flush=True)
                refs[n], engine = _one(row, base, mods, model, seqs[:n], device, batch, args, refs.get(n), f64,
                                       engine)
                rows.append(row)
            del engine
            _free(device)
    for n in n_list:
        _derive([r for r in rows if r["n"] == n], macs, L)
    return sorted(rows, key=lambda r: r["n"])


def _batches(sweep, base: str, edits: int) -> list:
    """The sweep without the batch sizes that run as the same call: every size at or above the number of edits
    after the smallest such (and no ``auto`` except for FastISM)."""
    out, whole = [], False
    for b in sweep:
        if b is None and not base.startswith("fast"):
            continue
        if b is not None and b >= edits:
            if whole:
                continue
            whole = True
        out.append(b)
    return out


def _one(row, base, mods, model, seqs, device, batch, args, ref, f64, engine):
    """Run one configuration into ``row``; returns the naive reference (set by the first float32 naive run) and
    the engine (FastISM, naive) to time again on fewer sequences (tangermeme pays its set-up on every call)."""
    sat = None
    try:
        if engine is not None:
            t, sat = common.rerun(*engine, seqs, device, base)
        else:
            t, sat = _run(base, mods, model, seqs, device, batch, args)
            engine = (t.extra.pop("engine"), t) if "engine" in t.extra else None   # (rows outlive engines)
        row["timing"] = t
        if ref is None and base.startswith("naive") and not row["tier"] and not args.tf32:
            ref = sat
        row["diff"] = common.max_rel_diff(sat, ref) if ref is not None else None
        if f64 is not None:
            k = min(f64[0], len(seqs))
            row["err64"] = common.max_rel_diff([s[:k] for s in common.as_list(sat)], [r[:k] for r in f64[1]])
        limit = MAX_REL_DIFF["tf32" if args.tf32 and not row["tier"] else row["tier"]]
        if row["diff"] is not None and row["diff"] > limit:
            row["error"] = f"differs from naive ISM: max rel diff {row['diff']:.3g}"
        print(f"{1000 * t.per_seq:.3f} s/1000 seqs, set-up {t.setup_s:.2f} s {t.note}", flush=True)
    except Exception as e:                       # noqa: BLE001 - a failed configuration is a result too
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}" if str(e) else type(e).__name__
        print(row["error"], flush=True)
        engine = None
    del sat
    _free(device)
    return ref, engine


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _derive(rows, macs, L):
    """Speed-up over the fastest float32 naive row, TFLOP/s and fraction of the MAC bound (rows of one n)."""
    naive = [r["timing"].per_seq for r in rows
             if "timing" in r and "error" not in r and r["base"].startswith("naive") and not r["tier"]]
    best_naive = min(naive) if naive else None
    edits = 3 * L
    for r in rows:
        t = r.get("timing")
        r["macs"] = macs
        if t is None:
            continue
        r["speedup"] = best_naive / t.per_seq if best_naive else None
        if r["base"].startswith("naive"):
            r["tflops"] = 2 * macs["full_macs"] * edits / t.per_seq / 1e12
        elif r["base"].startswith("fast"):
            r["tflops"] = 2 * (macs["fast_macs_per_mutation"] * edits + macs["full_macs"]) / t.per_seq / 1e12
            r["of_bound"] = r["speedup"] / macs["ratio"] if r["speedup"] else None


def best_rows(rows) -> list[dict]:
    """Per (model, L, n, method): the best row of its batch-size sweep (tangermeme: with its per-call set-up
    counted, since a user pays it on every call; the others: steady state).  Failed rows only where a method
    has no successful one."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["L"], r["n"], r["method"]), []).append(r)
    out = []
    for group in groups.values():
        ok = [r for r in group if "timing" in r and "error" not in r]
        if not ok:
            out.append(group[0])
            continue
        key = (lambda r: r["timing"].per_seq_with_setup) if group[0]["base"] == "tangermeme" else \
            (lambda r: r["timing"].per_seq)
        out.append(min(ok, key=key))
    return out


def table(rows) -> str:
    """Every row of the sweep, then the MAC notes."""
    headers = ["model", "L", "method", "batch", "seqs run", "s / 1000 seqs", "set-up s", "× best naive",
               "TFLOP/s", "of MAC bound", "peak GiB", "max rel diff", "err vs f64", "note"]
    return common.markdown_table(headers, [_cells(r) for r in rows]) + "\n\n" + _mac_notes(rows)


def headline(rows) -> str:
    """The one table: per model, length, number of sequences and method, its best batch size."""
    headers = ["model", "L", "seqs", "method", "best batch", "s / 1000 seqs", "set-up s",
               "s / 1000 with set-up", "× best naive", "of MAC bound", "max rel diff", "err vs f64", "note"]
    body = []
    for r in best_rows(rows):
        t = r.get("timing")
        if t is None or "error" in r:
            body.append([r["model"], r["L"], r["n"], r["method"], r["batch"], None, None, None, None, None,
                         r.get("diff"), r.get("err64"), "ERROR: " + r.get("error", "")])
            continue
        body.append([r["model"], r["L"], r["n"], r["method"], r["batch"], 1000 * t.per_seq, t.setup_s,
                     1000 * t.per_seq_with_setup, r.get("speedup"),
                     f"{100 * r['of_bound']:.0f}%" if r.get("of_bound") else None, r.get("diff"), r.get("err64"),
                     t.note or ""])
    return common.markdown_table(headers, body)


def _cells(r) -> list:
    t = r.get("timing")
    if t is None or "error" in r:
        return [r["model"], r["L"], r["method"], r["batch"], r["n"], None, None, None, None, None, None,
                r.get("diff"), r.get("err64"), "ERROR: " + r["error"]]
    return [r["model"], r["L"], r["method"], r["batch"], r["n"], 1000 * t.per_seq, t.setup_s, r.get("speedup"),
            r.get("tflops"), f"{100 * r['of_bound']:.0f}%" if r.get("of_bound") else None, t.peak_gib,
            r.get("diff"), r.get("err64"), t.note or ""]


def _mac_notes(rows) -> str:
    macs = sorted({(r["model"], r["L"], r["macs"]["full_macs"], r["macs"]["fast_macs_per_mutation"],
                    r["macs"]["ratio"]) for r in rows})
    return "\n".join(f"- {m} L={L}: full pass {f / 1e6:.1f} M MACs, {p / 1e6:.2f} M recomputed per mutation, "
                     f"MAC ratio {ratio:.2f}×" for m, L, f, p, ratio in macs) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available; use --device cpu for a smoke run")
    _methods(args)                                    # unknown methods: an error before any work
    print(f"{common.machine(device)}; torch {torch.__version__}", flush=True)
    rows = []
    for name in args.models.split(","):
        for L in (int(x) for x in args.lengths.split(",")):
            part = bench(name, L, args, device)      # one section per model and length: a cut run keeps the rest
            rows += part
            _report(part, args, device)
    return rows


def _report(rows, args, device):
    f64 = f"; err vs f64 = largest error against float64 naive ISM on the first {args.f64_seqs} sequence(s)" \
        if args.f64_seqs else ""
    tf32 = (f"TF32 {'on' if args.tf32 else 'off'} for every method unless +tf32; cuDNN autotuning as each engine "
            "sets it (on for NaiveISM, off for FastISM unless +autotune, torch's default for tangermeme); "
            if device.type == "cuda" else "")
    body = ("Full saturation mutagenesis (3 alternative bases × L positions), float32 unless +tf32 / +bf16 (" + tf32 +
            "torch defaults otherwise). Seconds per 1000 sequences in steady state; set-up once per object "
            "(FastISM, compiled naive) or per call (tangermeme); × best naive = against the fastest float32 naive "
            "row of the same model, length and number of sequences; max rel diff = against the first float32 "
            f"naive row{f64}.\n\nBest batch size per method (naive: warmed, steady; tangermeme: with its set-up "
            "per call):\n\n" + headline(rows) + "\n\nEvery configuration:\n\n" + table(rows))
    print(body, flush=True)
    if args.out:
        title = f"{'GPU' if device.type == 'cuda' else 'bench_gpu on CPU (smoke run)'}, {rows[0]['model']} L={rows[0]['L']}"
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        common.append_results(args.out, title, device, body)
        print(f"appended to {args.out}", flush=True)


def exit_status(rows) -> int:
    """1 if any row failed (an error, or results that differ from naive ISM), else 0."""
    bad = [f"{r['model']} L={r['L']} n={r['n']} {r['method']} batch={r['batch']}: {r['error']}"
           for r in rows if "error" in r]
    for line in bad:
        print("FAILED:", line, file=sys.stderr)
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(exit_status(main()))
