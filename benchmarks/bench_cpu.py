"""CPU speed of full saturation mutagenesis: FastISM vs batched NaiveISM vs tangermeme 1.6 ``fast=True``.

For each model (Basset, Factorized Basset, BPNet from :mod:`fastism_torch.models`) the same random one-hot
sequences go through the three methods in one process; the outputs are checked against each other, and one
markdown table is appended to ``--out`` (default ``benchmarks/RESULTS.md``)::

    python -m benchmarks.bench_cpu --models basset,factorized_basset,bpnet --n-seqs 2 --length 1000 \\
        --device cpu --out benchmarks/RESULTS.md

Columns: seconds per sequence in steady state (set-up excluded) for each method, the set-up each pays
(FastISM: construction with its correctness self-test, plus the first call's plan building; tangermeme:
its first slow batch, ``torch.export`` capture and verification, paid on *every* call), speed-ups over naive,
the theoretical MAC ratio from the plan (``FastISM.mac_summary()``: MACs of a full forward pass / MACs
recomputed per single-base mutation) and the fraction of it reached, FastISM against tangermeme on this
call's sequences with set-up included, and the largest output difference to naive (relative to output
scale).

The process re-executes itself with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` (glibc then
keeps freed large blocks instead of mapping and unmapping them every batch, which otherwise slows naive ISM
1.3-2.3x on this kind of machine); ``--no-malloc-env`` measures with the default allocator instead.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks import common

MODELS = ("basset", "factorized_basset", "bpnet")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: basset,factorized_basset,bpnet,tiny")
    p.add_argument("--n-seqs", type=int, default=2)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default="fast,naive,tangermeme",
                   help="any of fast,fast_compiled,naive,tangermeme (fast_compiled: FastISM(compile=True))")
    p.add_argument("--fast-batch", type=int, default=None, help="FastISM batch_size (default: automatic)")
    p.add_argument("--naive-batch", type=int, default=128, help="NaiveISM batch_size")
    p.add_argument("--tm-batch", type=int, default=128, help="tangermeme batch_size")
    p.add_argument("--tm-force-fast", action="store_true",
                   help="keep tangermeme on its fast path even where its own check finds it slower")
    p.add_argument("--bpnet-head", default="conv", choices=["conv", "conv_transpose"],
                   help="BPNet profile head; tangermeme computes a transposed conv in full for every edit, "
                        "so 'conv' (same size, the default) gives it its best case")
    p.add_argument("--repeat", type=int, default=2,
                   help="steady-state calls of FastISM and tangermeme (whole calls, set-up included); the "
                        "fastest counts (a shared machine's noise)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's). On a small machine shared with other "
                        "work, 1 avoids thread-pool stalls of up to 100x on small ops")
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' = don't)")
    p.add_argument("--no-malloc-env", action="store_true", help="do not re-exec with the allocator settings")
    return p.parse_args(argv)


def bench_model(name: str, args, device: torch.device) -> dict:
    methods = args.methods.split(",")
    model = common.make_model(name, args.length, bpnet_head=args.bpnet_head)
    seqs = common.random_seqs(args.n_seqs, args.length)
    res: dict = {"model": name}
    sats = {}
    if "fast" in methods:
        res["fast"], sats["fast"] = common.run_fastism(model, seqs, device, batch_size=args.fast_batch,
                                                             repeat=args.repeat)
        print(f"  FastISM    {res['fast'].per_seq:8.3f} s/seq steady, set-up {res['fast'].setup_s:.2f} s", flush=True)
    if "fast_compiled" in methods:
        res["fastc"], sats["fastc"] = common.run_fastism(model, seqs, device, batch_size=args.fast_batch,
                                                         compile=True, label="FastISM compiled",
                                                         repeat=args.repeat)
        print(f"  compiled   {res['fastc'].per_seq:8.3f} s/seq steady, set-up {res['fastc'].setup_s:.2f} s",
              flush=True)
    if "naive" in methods:
        res["naive"], sats["naive"] = common.run_naive(model, seqs, device, batch_size=args.naive_batch)
        print(f"  NaiveISM   {res['naive'].per_seq:8.3f} s/seq", flush=True)
    if "tangermeme" in methods:
        res["tm"], sats["tm"] = common.run_tangermeme(model, seqs, device, batch_size=args.tm_batch,
                                                    force_fast=args.tm_force_fast, repeat=args.repeat)
        print(f"  tangermeme {res['tm'].per_seq:8.3f} s/seq steady, set-up {res['tm'].setup_s:.2f} s "
              f"{res['tm'].note}", flush=True)
    ref = sats.get("naive")
    for k in ("fast", "fastc", "tm"):
        if ref is not None and k in sats:
            res[f"diff_{k}"] = common.max_rel_diff(sats[k], ref)
    return res


def table(results: list[dict], n_seqs: int) -> str:
    headers = ["model", "naive s/seq", "FastISM s/seq", "FastISM set-up s", "tangermeme s/seq",
               "tangermeme set-up s", "FastISM × naive", "tangermeme × naive", "MAC ratio (bound)",
               "of bound", f"FastISM × tangermeme, {n_seqs} seqs incl. set-up", "FastISM × tangermeme, steady",
               "max rel diff to naive (fast / tm)", "FastISM compiled s/seq (set-up s)", "compiled × naive"]
    rows = []
    for r in results:
        f, nv, tm = r.get("fast"), r.get("naive"), r.get("tm")
        macs = f.extra["macs"] if f else None
        sp_fast = nv.per_seq / f.per_seq if f and nv else None
        rows.append([
            r["model"], nv.per_seq if nv else None, f.per_seq if f else None, f.setup_s if f else None,
            tm.per_seq if tm else None, tm.setup_s if tm else None,
            sp_fast, nv.per_seq / tm.per_seq if tm and nv else None,
            macs["ratio"] if macs else None,
            f"{100 * sp_fast / macs['ratio']:.0f}%" if sp_fast and macs else None,
            tm.per_seq_with_setup / f.per_seq_with_setup if f and tm else None,
            tm.per_seq / f.per_seq if f and tm else None,
            " / ".join(common.fmt(r.get(k), 2) for k in ("diff_fast", "diff_tm")),
            f"{r['fastc'].per_seq:.3g} ({r['fastc'].setup_s:.3g})" if r.get("fastc") else None,
            nv.per_seq / r["fastc"].per_seq if r.get("fastc") and nv else None,
        ])
    notes = [f"- {r['model']}: tangermeme {r['tm'].note}" for r in results if r.get("tm") and r["tm"].note]
    macs = [f"- {r['model']}: full pass {r['fast'].extra['macs']['full_macs'] / 1e6:.1f} M MACs, "
            f"{r['fast'].extra['macs']['fast_macs_per_mutation'] / 1e6:.2f} M recomputed per mutation; FastISM "
            f"build {r['fast'].extra['build_s']:.2f} s, first call {r['fast'].extra['first_call_s']:.2f} s"
            for r in results if r.get("fast")]
    return common.markdown_table(headers, rows) + "\n\n" + "\n".join(macs + notes) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if not args.no_malloc_env and argv is None:
        common.reexec_with_malloc_env("benchmarks.bench_cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{common.machine(device)}; torch {torch.__version__}; L={args.length}, {args.n_seqs} sequences",
          flush=True)
    results = []
    for name in args.models.split(","):
        print(name, flush=True)
        results.append(bench_model(name, args, device))
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (f"Full saturation mutagenesis (3 alternative bases × {args.length} positions), L={args.length}, "
            f"{args.n_seqs} random sequences, seconds per sequence (× = times faster). Batch sizes: FastISM "
            f"{args.fast_batch or 'auto'}, naive {args.naive_batch}, tangermeme {args.tm_batch}; BPNet profile "
            f"head: {args.bpnet_head}. FastISM and tangermeme: fastest of {args.repeat} steady-state calls; "
            f"naive: one call. Load average at the end: {load_end:.2f}.\n\n" + table(results, args.n_seqs))
    print(body)
    if args.out:
        common.append_results(args.out, f"CPU, L={args.length}", device, body)
        print(f"appended to {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
