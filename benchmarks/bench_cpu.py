"""CPU speed of full saturation mutagenesis: FastISM vs the fastest naive ISM vs tangermeme 1.6 ``fast=True``.

For each model, length and thread count the same random one-hot sequences go through the three methods in
one process; the outputs are checked against each other, and one markdown table is appended to ``--out``
(default ``benchmarks/RESULTS.md``)::

    python -m benchmarks.bench_cpu --models basset,factorized_basset,bpnet --n-seqs 2 --length 1000 \\
        --threads 1,2 --out benchmarks/RESULTS.md
    python -m benchmarks.bench_cpu --models bpnet,bpnetlite_bpnet,bpnetlite_chrombpnet --length 1000,2114 \\
        --threads 1,2 --n-seqs 1

Models: ``basset``, ``factorized_basset``, ``bpnet``, ``tiny`` from :mod:`fastism_torch.models`, and
bpnet-lite's own ``BPNet`` / ``ChromBPNet`` classes (``bpnetlite_bpnet``, ``bpnetlite_chrombpnet``, built as
in :mod:`benchmarks.bench_zoo`; at lengths other than their 2114 bp they crop the same share of flanks).

The naive baseline is :class:`fastism_torch.NaiveISM` at its fastest: its batch size is measured on the
first batches of the call (``--naive-batch auto``, the default; the table names the size it chose), the
input buffer is reused across batches, and the allocator is told to keep freed memory (below).  On this
kind of 2-core CPU that is 15-20% faster for BPNet than a fixed batch of 128.

Columns: seconds per sequence in steady state (set-up excluded) for each method, the set-up each pays
(FastISM: construction with its correctness self-test, plus the first call's plan building; tangermeme:
its first slow batch, ``torch.export`` capture and verification, paid on *every* call), speed-ups over naive,
the MAC bounds from the plan (``FastISM.mac_summary()``: MACs of a full forward pass / MACs per single-base
mutation, recomputing every changed range as fastISM does, or with delta propagation: the bound FastISM's
plans aim at) and the fraction of the delta bound reached, the MACs FastISM actually executed
(``macs.executed_macs``, counted over a call on one sequence), FastISM against tangermeme on this
call's sequences with set-up included, and the largest output difference to naive (relative to output
scale).

The process re-executes itself with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` (glibc then
keeps freed large blocks instead of mapping and unmapping them every batch, which otherwise slows naive ISM
1.3-2.3x on this kind of machine) and its OpenMP threads pinned to cores (``OMP_PROC_BIND=true OMP_PLACES=cores``
unless set: unpinned, a process's speed settles at a level of its own, see ``common.THREAD_ENV``);
``--no-malloc-env`` measures with neither.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks import common

MODELS = ("basset", "factorized_basset", "bpnet")
ZOO = ("bpnetlite_bpnet", "bpnetlite_chrombpnet")        # bpnet-lite's own classes (benchmarks.bench_zoo)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated: basset,factorized_basset,bpnet,tiny,bpnetlite_bpnet,bpnetlite_chrombpnet")
    p.add_argument("--n-seqs", type=int, default=2)
    p.add_argument("--length", default="1000", help="comma-separated sequence lengths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default="fast,naive,tangermeme",
                   help="any of fast,fast_recompute,fast_compiled,naive,tangermeme (fast_recompute: "
                        "FastISM(delta=False), fastISM's recomputation; fast_compiled: FastISM(compile=True))")
    p.add_argument("--fast-batch", type=int, default=None, help="FastISM batch_size (default: automatic)")
    p.add_argument("--naive-batch", default="auto",
                   help="NaiveISM batch_size, or 'auto': measured on the call's first batches (its fastest)")
    p.add_argument("--tm-batch", type=int, default=128, help="tangermeme batch_size")
    p.add_argument("--tm-force-fast", action="store_true",
                   help="keep tangermeme on its fast path even where its own check finds it slower")
    p.add_argument("--bpnet-head", default="conv", choices=["conv", "conv_transpose"],
                   help="BPNet profile head; tangermeme computes a transposed conv in full for every edit, "
                        "so 'conv' (same size, the default) gives it its best case")
    p.add_argument("--repeat", type=int, default=2,
                   help="steady-state calls of FastISM and tangermeme (whole calls, set-up included); the "
                        "fastest counts (a shared machine's noise)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each row this many times (FastISM, naive, tangermeme again each round) and report "
                        "the round with the median FastISM × naive, with the range over rounds: on a shared machine "
                        "the 2-thread rows move by ±15%% between runs")
    p.add_argument("--threads", default=None, help="comma-separated torch.set_num_threads values (default: torch's). "
                   "On a small machine shared with other work, 1 avoids thread-pool stalls of up to 100x on small ops")
    p.add_argument("--profile", action="store_true",
                   help="also profile one steady FastISM call per row (torch.profiler, self CPU time by op) and add "
                        "the table to the results: where the time goes")
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' = don't)")
    p.add_argument("--no-malloc-env", action="store_true", help="do not re-exec with the allocator settings")
    return p.parse_args(argv)


def make_model(name: str, length: int, bpnet_head: str) -> torch.nn.Module:
    if name in ZOO:
        os.environ.setdefault("USE_TF", "0")
        from benchmarks import bench_zoo
        from fastism_torch.models import init_weights
        return init_weights(bench_zoo.MODELS[name](length), length)
    return common.make_model(name, length, bpnet_head=bpnet_head)


def bench_model(name: str, length: int, args, device: torch.device) -> dict:
    methods = args.methods.split(",")
    model = make_model(name, length, args.bpnet_head)
    seqs = common.random_seqs(args.n_seqs, length)
    res: dict = {"model": name, "L": length, "threads": torch.get_num_threads()}
    sats = {}
    if "fast" in methods:
        res["fast"], sats["fast"] = common.run_fastism(model, seqs, device, batch_size=args.fast_batch,
                                                             repeat=args.repeat)
        print(f"  FastISM    {res['fast'].per_seq:8.3f} s/seq steady, set-up {res['fast'].setup_s:.2f} s", flush=True)
    if "fast" in methods:
        from fastism_torch.macs import executed_macs
        res["executed"] = executed_macs(res["fast"].extra["engine"], seqs[:1].to(device))
    if "fast_recompute" in methods:
        res["fastr"], sats["fastr"] = common.run_fastism(model, seqs, device, batch_size=args.fast_batch,
                                                         label="FastISM delta=False", repeat=args.repeat, delta=False)
        print(f"  recompute  {res['fastr'].per_seq:8.3f} s/seq steady, set-up {res['fastr'].setup_s:.2f} s", flush=True)
    if "fast" in methods and args.profile:
        res["profile"] = profile_fastism(model, seqs, device)
    if "fast_compiled" in methods:
        res["fastc"], sats["fastc"] = common.run_fastism(model, seqs, device, batch_size=args.fast_batch,
                                                         compile=True, label="FastISM compiled",
                                                         repeat=args.repeat)
        print(f"  compiled   {res['fastc'].per_seq:8.3f} s/seq steady, set-up {res['fastc'].setup_s:.2f} s",
              flush=True)
    if "naive" in methods:
        nb = None if args.naive_batch == "auto" else int(args.naive_batch)
        res["naive"], sats["naive"] = common.run_naive(model, seqs, device, batch_size=nb)
        print(f"  NaiveISM   {res['naive'].per_seq:8.3f} s/seq (batch {res['naive'].note})", flush=True)
    if "tangermeme" in methods:
        res["tm"], sats["tm"] = common.run_tangermeme(model, seqs, device, batch_size=args.tm_batch,
                                                    force_fast=args.tm_force_fast, repeat=args.repeat)
        print(f"  tangermeme {res['tm'].per_seq:8.3f} s/seq steady, set-up {res['tm'].setup_s:.2f} s "
              f"{res['tm'].note}", flush=True)
    ref = sats.get("naive")
    for k in ("fast", "fastr", "fastc", "tm"):
        if ref is not None and k in sats:
            res[f"diff_{k}"] = common.max_rel_diff(sats[k], ref)
    return res


def profile_fastism(model, seqs, device, top: int = 8) -> str:
    """One steady FastISM call under ``torch.profiler``: self CPU seconds of the ``top`` ops, and the rest."""
    from torch.profiler import ProfilerActivity, profile

    from fastism_torch import FastISM
    ism = FastISM(model, seqs.shape[-1], device=device)
    ism.saturation_mutagenesis(seqs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ism.saturation_mutagenesis(seqs)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    parts = [f"{e.key} {e.self_cpu_time_total / 1e6 / seqs.shape[0]:.3f} s "
             f"({100 * e.self_cpu_time_total / total:.0f}%)" for e in events[:top]]
    rest = sum(e.self_cpu_time_total for e in events[top:])
    return "; ".join(parts + [f"other ops {rest / 1e6 / seqs.shape[0]:.3f} s ({100 * rest / total:.0f}%)"])


def speedup(r: dict) -> float | None:
    return r["naive"].per_seq / r["fast"].per_seq if r.get("fast") and r.get("naive") else None


def median_round(rounds: list[dict]) -> dict:
    """The round with the median FastISM × naive (the lower middle one for an even count), with the range over
    all rounds in ``res["rounds"]``."""
    if len(rounds) == 1 or speedup(rounds[0]) is None:
        return rounds[0]
    ranked = sorted(rounds, key=speedup)
    res = dict(ranked[(len(ranked) - 1) // 2])
    res["rounds"] = [speedup(r) for r in rounds]
    return res


def table(results: list[dict], n_seqs: int) -> str:
    headers = ["model", "L", "threads", "naive batch", "naive s/seq", "FastISM s/seq", "FastISM set-up s", "tangermeme s/seq",
               "tangermeme set-up s", "FastISM × naive", "tangermeme × naive", "recompute bound",
               "delta bound", "of delta bound", "executed MAC ratio", "FastISM delta=False × naive",
               f"FastISM × tangermeme, {n_seqs} seqs incl. set-up", "FastISM × tangermeme, steady",
               "max rel diff to naive (fast / tm)", "FastISM compiled s/seq (set-up s)", "compiled × naive"]
    rows = []
    for r in results:
        f, nv, tm = r.get("fast"), r.get("naive"), r.get("tm")
        macs = f.extra["macs"] if f else None
        sp_fast = nv.per_seq / f.per_seq if f and nv else None
        rows.append([
            r["model"], r["L"], r["threads"], nv.note if nv else None, nv.per_seq if nv else None, f.per_seq if f else None, f.setup_s if f else None,
            tm.per_seq if tm else None, tm.setup_s if tm else None,
            sp_fast, nv.per_seq / tm.per_seq if tm and nv else None,
            macs["ratio"] if macs else None, macs["delta_ratio"] if macs else None,
            f"{100 * sp_fast / macs['delta_ratio']:.0f}%" if sp_fast and macs else None,
            macs["full_macs"] / r["executed"]["per_mutation"] if r.get("executed") else None,
            nv.per_seq / r["fastr"].per_seq if r.get("fastr") and nv else None,
            tm.per_seq_with_setup / f.per_seq_with_setup if f and tm else None,
            tm.per_seq / f.per_seq if f and tm else None,
            " / ".join(common.fmt(r.get(k), 2) for k in ("diff_fast", "diff_tm")),
            f"{r['fastc'].per_seq:.3g} ({r['fastc'].setup_s:.3g})" if r.get("fastc") else None,
            nv.per_seq / r["fastc"].per_seq if r.get("fastc") and nv else None,
        ])
    notes = [f"- {r['model']} L={r['L']}, {r['threads']} thread(s): tangermeme {r['tm'].note}" for r in results
             if r.get("tm") and r["tm"].note]
    macs = [f"- {r['model']} L={r['L']}, {r['threads']} thread(s): full pass {r['fast'].extra['macs']['full_macs'] / 1e6:.1f} M MACs; "
            f"per mutation {r['fast'].extra['macs']['fast_macs_per_mutation'] / 1e6:.2f} M recomputed (recompute bound), "
            f"{r['fast'].extra['macs']['delta_macs_per_mutation'] / 1e6:.2f} M (delta bound), "
            f"{r['fast'].extra['macs']['planned_macs_per_mutation'] / 1e6:.2f} M planned, "
            f"{r['executed']['per_mutation'] / 1e6:.2f} M executed (counted, reference pass and padding included); FastISM "
            f"build {r['fast'].extra['build_s']:.2f} s, first call {r['fast'].extra['first_call_s']:.2f} s"
            for r in results if r.get("fast")]
    spread = [f"- {r['model']} L={r['L']}, {r['threads']} thread(s): FastISM × naive over {len(r['rounds'])} rounds "
              f"(median in the table): " + ", ".join(f"{x:.2f}" for x in r["rounds"]) for r in results if r.get("rounds")]
    profiles = [f"- {r['model']} L={r['L']}, {r['threads']} thread(s), FastISM self CPU time per sequence by op "
                f"(torch.profiler, one steady call): {r['profile']}" for r in results if r.get("profile")]
    return common.markdown_table(headers, rows) + "\n\n" + "\n".join(spread + macs + notes + profiles) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if not args.no_malloc_env and argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_cpu")
    device = torch.device(args.device)
    lengths = [int(x) for x in str(args.length).split(",")]
    threads = [int(t) for t in str(args.threads).split(",")] if args.threads else [torch.get_num_threads()]
    print(f"{common.machine(device)}; torch {torch.__version__}; L={args.length}, {args.n_seqs} sequences",
          flush=True)
    results = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for length in lengths:
            for name in args.models.split(","):
                print(f"{name} L={length} threads={n_threads}", flush=True)
                results.append(median_round([bench_model(name, length, args, device) for _ in range(args.rounds)]))
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (f"Full saturation mutagenesis (3 alternative bases × L positions), {args.n_seqs} random sequences, "
            f"seconds per sequence (× = times faster). Batch sizes: FastISM {args.fast_batch or 'auto'}, naive "
            f"{args.naive_batch} (NaiveISM; 'auto' = measured on the call's first batches, size in the table), "
            f"tangermeme {args.tm_batch}; BPNet profile head: {args.bpnet_head}. FastISM and tangermeme: fastest "
            f"of {args.repeat} steady-state calls; naive: one call; rounds per row: {args.rounds}. Load average at the end: {load_end:.2f}.\n\n"
            + table(results, args.n_seqs))
    print(body)
    if args.out:
        common.append_results(args.out, f"CPU, L={args.length}", device, body)
        print(f"appended to {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
