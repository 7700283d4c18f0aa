"""GPU speed of full saturation mutagenesis, batch sizes swept (issue 4); runs on CPU too, for checking.

For each model and length, on the same random one-hot sequences: FastISM compiled
(``FastISM(..., compile=True)``) and eager, NaiveISM batched with the model under ``torch.compile`` and
eager, and tangermeme 1.6's ``saturation_mutagenesis(fast=True)``, each at every batch size of the sweep.
One markdown table is appended to ``--out`` (default ``benchmarks/RESULTS.md``)::

    python -m benchmarks.bench_gpu --device cuda                       # Basset, Factorized Basset, BPNet; L=1000,2000
    python -m benchmarks.bench_gpu --device cpu --models tiny --lengths 100 --batch-sizes 64 --n-seqs 2   # smoke run

Columns: seconds per 1000 sequences in steady state (set-up excluded), the one-time set-up (FastISM:
construction with its self-test, plan building and compilation; naive compiled: compilation; tangermeme: its
per-call capture and verification), speed-up over the fastest naive row of the same model and length,
achieved TFLOP/s (2 x the MACs the method performs / time: a full pass per edit for naive, the plan's
recomputed MACs per edit plus one reference pass per sequence for FastISM; not known for tangermeme), the
fraction of the theoretical MAC ratio reached (FastISM rows), and peak GPU memory
(``torch.cuda.max_memory_allocated``).  Results are checked against the first naive run (largest difference
relative to output scale; the naive methods run first).  A run that fails (out of memory, compile error) is a row with the error, not a
crash.  Models with a profile output (BPNet: ``(N, 4, L, tasks, L)`` floats) run fewer sequences, so that
the results fit in ``--max-output-gib``; times are still per 1000 sequences.
"""
from __future__ import annotations

import argparse
import gc
import sys

import torch

from benchmarks import common

METHODS = ("fast_compiled", "fast_reduce_overhead", "fast_eager", "naive_compiled", "naive_eager", "tangermeme")
MAX_REL_DIFF = 1e-4          # a row that differs more from the naive reference is an error (float32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="basset,factorized_basset,bpnet")
    p.add_argument("--lengths", default="1000,2000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(METHODS), help="any of " + ",".join(METHODS))
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated sweep for every method; 'auto' = FastISM's own choice (FastISM rows "
                        "only). Default: auto,1024,4096,16384 for FastISM and 256,1024 for the others on CUDA; "
                        "auto,256 / 128 on CPU")
    p.add_argument("--naive-batch-sizes", default=None,
                   help="comma-separated sweep for the naive and tangermeme rows (default: as --batch-sizes)")
    p.add_argument("--n-seqs", type=int, default=None, help="sequences per run (default: 128 on CUDA, 2 on CPU)")
    p.add_argument("--max-output-gib", type=float, default=2.0,
                   help="fewer sequences for models whose saturation output would be larger")
    p.add_argument("--bpnet-head", default="conv", choices=["conv", "conv_transpose"])
    p.add_argument("--tf32", action="store_true",
                   help="every method with TF32 convolutions and matmuls (default: IEEE float32, FastISM's own "
                        "default, for all methods alike)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for CPU runs; 1 on a shared small machine (see RESULTS.md)")
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' = don't)")
    return p.parse_args(argv)


def _sweeps(args, device):
    if args.batch_sizes:
        fast = [None if b == "auto" else int(b) for b in args.batch_sizes.split(",")]
        other = [b for b in fast if b is not None] or [128]
    elif device.type == "cuda":
        fast, other = [None, 1024, 4096, 16384], [256, 1024]
    else:
        fast, other = [None, 256], [128]
    if args.naive_batch_sizes:
        other = [int(b) for b in args.naive_batch_sizes.split(",")]
    return fast, other


def _n_seqs(args, device, model, L) -> int:
    n = args.n_seqs or (128 if device.type == "cuda" else 2)
    with torch.no_grad():
        outs = common.as_list(model(common.random_seqs(1, L)))
    per_seq = 4 * L * 4 * sum(o[0].numel() for o in outs)          # float32, 4 bases x L positions
    return max(1, min(n, int(args.max_output_gib * 2**30 // per_seq)))


def _run(method, model, seqs, device, batch, tf32):
    from fastism_torch.precision import float32_precision
    if method.startswith("fast"):
        compile_ = {"fast_compiled": True, "fast_reduce_overhead": "reduce-overhead"}.get(method, False)
        return common.run_fastism(model, seqs, device, batch_size=batch, compile=compile_, label=method, tf32=tf32)
    if method.startswith("naive"):
        return common.run_naive(model, seqs, device, batch_size=batch, compile=method == "naive_compiled",
                                label=method, tf32=tf32)
    with float32_precision(tf32):
        return common.run_tangermeme(model, seqs, device, batch_size=batch, label=method)


def bench(name: str, L: int, args, device) -> list[dict]:
    methods = [m for m in args.methods.split(",") if m]
    methods.sort(key=lambda m: not m.startswith("naive"))      # the naive reference first, for the checks
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown --methods {sorted(unknown)}; choose from {METHODS}")
    fast_sweep, other_sweep = _sweeps(args, device)
    model = common.make_model(name, L, bpnet_head=args.bpnet_head)
    n = _n_seqs(args, device, model, L)
    seqs = common.random_seqs(n, L)
    from fastism_torch import FastISM
    macs = FastISM(model, L, test_correctness=False).mac_summary()
    rows, ref = [], None
    for method in methods:
        for batch in (fast_sweep if method.startswith("fast") else other_sweep):
            if batch is None and not method.startswith("fast"):
                continue
            row = {"model": name, "L": L, "method": method, "batch": batch or "auto", "n": n}
            print(f"{name} L={L} {method} batch={row['batch']} n={n} ...", end=" ", flush=True)
            try:
                t, sat = _run(method, model, seqs, device, batch, args.tf32)
                row["timing"] = t
                if ref is None and method.startswith("naive"):
                    ref = sat
                row["diff"] = common.max_rel_diff(sat, ref) if ref is not None else None
                if row["diff"] is not None and row["diff"] > MAX_REL_DIFF * (100 if args.tf32 else 1):
                    row["error"] = f"differs from naive ISM: max rel diff {row['diff']:.3g}"
                print(f"{1000 * t.per_seq:.3f} s/1000 seqs, set-up {t.setup_s:.2f} s {t.note}", flush=True)
            except Exception as e:                       # noqa: BLE001 - a failed configuration is a result too
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}" if str(e) else type(e).__name__
                print(row["error"], flush=True)
            sat = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
    _derive(rows, macs, L)
    return rows


def _derive(rows, macs, L):
    """Speed-up over the fastest naive row, TFLOP/s and fraction of the MAC bound."""
    naive = [r["timing"].per_seq for r in rows if "timing" in r and r["method"].startswith("naive")]
    best_naive = min(naive) if naive else None
    edits = 3 * L
    for r in rows:
        t = r.get("timing")
        r["macs"] = macs
        if t is None:
            continue
        r["speedup"] = best_naive / t.per_seq if best_naive else None
        if r["method"].startswith("naive"):
            r["tflops"] = 2 * macs["full_macs"] * edits / t.per_seq / 1e12
        elif r["method"].startswith("fast"):
            r["tflops"] = 2 * (macs["fast_macs_per_mutation"] * edits + macs["full_macs"]) / t.per_seq / 1e12
            r["of_bound"] = r["speedup"] / macs["ratio"] if r["speedup"] else None


def table(rows) -> str:
    headers = ["model", "L", "method", "batch", "seqs run", "s / 1000 seqs", "set-up s", "× best naive",
               "TFLOP/s", "of MAC bound", "peak GiB", "max rel diff", "note"]
    out = []
    for r in rows:
        t = r.get("timing")
        if t is None or "error" in r:
            out.append([r["model"], r["L"], r["method"], r["batch"], r["n"], None, None, None, None, None, None,
                        r.get("diff"), "ERROR: " + r["error"]])
            continue
        out.append([r["model"], r["L"], r["method"], r["batch"], r["n"], 1000 * t.per_seq, t.setup_s,
                    r.get("speedup"), r.get("tflops"),
                    f"{100 * r['of_bound']:.0f}%" if r.get("of_bound") else None, t.peak_gib, r.get("diff"),
                    t.note or ""])
    macs = sorted({(r["model"], r["L"], r["macs"]["full_macs"], r["macs"]["fast_macs_per_mutation"],
                    r["macs"]["ratio"]) for r in rows})
    notes = [f"- {m} L={L}: full pass {f / 1e6:.1f} M MACs, {p / 1e6:.2f} M recomputed per mutation, "
             f"MAC ratio {ratio:.2f}×" for m, L, f, p, ratio in macs]
    return common.markdown_table(headers, out) + "\n\n" + "\n".join(notes) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available; use --device cpu for a smoke run")
    print(f"{common.machine(device)}; torch {torch.__version__}", flush=True)
    rows = []
    for name in args.models.split(","):
        for L in (int(x) for x in args.lengths.split(",")):
            part = bench(name, L, args, device)      # one section per model and length: a cut run keeps the rest
            rows += part
            _report(part, args, device)
    return rows


def _report(rows, args, device):
    tf32 = (f"TF32 {'on' if args.tf32 else 'off'} for every method; cuDNN autotuning as each engine sets it: on "
            "for NaiveISM, off for FastISM, torch's default (off) for tangermeme; " if device.type == "cuda" else "")
    body = ("Full saturation mutagenesis (3 alternative bases × L positions), float32 (" + tf32 +
            "torch defaults otherwise). Seconds per 1000 sequences in steady state; set-up once per object (FastISM, "
            "compiled naive) or per call (tangermeme); × best naive = against the fastest naive row of the same "
            "model and length.\n\n" + table(rows))
    print(body, flush=True)
    if args.out:
        title = f"{'GPU' if device.type == 'cuda' else 'bench_gpu on CPU (smoke run)'}, {rows[0]['model']} L={rows[0]['L']}"
        common.append_results(args.out, title, device, body)
        print(f"appended to {args.out}", flush=True)


def exit_status(rows) -> int:
    """1 if any row failed (an error, or results that differ from naive ISM), else 0."""
    bad = [f"{r['model']} L={r['L']} {r['method']} batch={r['batch']}: {r['error']}" for r in rows if "error" in r]
    for line in bad:
        print("FAILED:", line, file=sys.stderr)
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(exit_status(main()))
