"""CPU speed on the field's own convolutional models from PyPI (bpnet-lite, gReLU), unmodified, at their lengths.

For each model, on the same random one-hot sequences, in one process: FastISM (set-up = construction with its
self-check + the first call's plan building), NaiveISM (batched, one full pass per edit) and tangermeme 1.6
``saturation_mutagenesis(fast=True)`` (its "not worth it below 30 s" rule lifted; its set-up is paid on every
call), at each ``--threads``.  Columns as in ``bench_cpu``: steady seconds per sequence, set-up, speed-up over
naive, the plan's MAC bound (``mac_summary``, counting convolutions, dense layers, pooling, attention and
recurrent layers) and the fraction of it reached, and FastISM against tangermeme with set-up included for one
sequence (the call a user makes to look at one locus)::

    python -m benchmarks.bench_zoo --threads 1,2          # needs `bash scripts/install_zoo.sh .venv/bin/python`

The configurations are the packages' own architectures at CPU-friendly widths (64 filters where the default
is larger), weights from :func:`fastism_torch.models.init_weights` (He-normal, calibrated BatchNorm).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks import common


def _trimming(L):
    """bpnet-lite's own trimming at its 2114 bp (557 per side, a 1000-bp profile); at other lengths the same
    share of flanks (e.g. 263 per side at 1000 bp: a 474-bp profile), since its default would leave none."""
    return None if L == 2114 else (L - round(L * 1000 / 2114)) // 2


def _bpnet(L):
    from bpnetlite import BPNet
    torch.manual_seed(0)
    return BPNet(n_filters=64, n_layers=8, n_outputs=1, n_control_tracks=0, verbose=False,   # bpnet-lite's default
                 trimming=_trimming(L))


def _chrombpnet(L):
    from bpnetlite import BPNet, ChromBPNet
    torch.manual_seed(0)
    bias = BPNet(n_filters=32, n_layers=4, n_outputs=1, n_control_tracks=0, verbose=False, trimming=_trimming(L))
    acc = BPNet(n_filters=64, n_layers=8, n_outputs=1, n_control_tracks=0, verbose=False, trimming=_trimming(L))
    return ChromBPNet(bias, acc)


def _grelu_dilated(L):
    from grelu.model.models import DilatedConvModel
    torch.manual_seed(0)
    return DilatedConvModel(n_tasks=2, channels=64, stem_kernel_size=21, kernel_size=3, dilation_mult=2,
                            act_func="relu", n_conv=8, crop_len=0)


MODELS = {"bpnetlite_bpnet": _bpnet, "bpnetlite_chrombpnet": _chrombpnet, "grelu_dilatedconv": _grelu_dilated}
#: input length: bpnet-lite's models take 2114 bp for a 1000-bp profile (they crop 557 bp on each side)
LENGTHS = {"bpnetlite_bpnet": 2114, "bpnetlite_chrombpnet": 2114, "grelu_dilatedconv": 1000}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--length", type=int, default=None, help="default: each model's own (LENGTHS)")
    p.add_argument("--n-seqs", type=int, default=1)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--naive-batch", default="auto", help="NaiveISM batch_size, or 'auto' (measured: its fastest)")
    p.add_argument("--tm-batch", type=int, default=128)
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' = don't)")
    p.add_argument("--no-malloc-env", action="store_true", help="do not re-exec with the allocator settings")
    return p.parse_args(argv)


def bench(name: str, threads: int, args) -> dict:
    from fastism_torch.models import init_weights
    torch.set_num_threads(threads)
    L = args.length or LENGTHS[name]
    model = init_weights(MODELS[name](L), L)
    seqs = common.random_seqs(args.n_seqs, L)
    dev = torch.device("cpu")
    row = {"model": name, "L": L, "threads": threads}
    naive_batch = None if args.naive_batch == "auto" else int(args.naive_batch)
    tn, naive = common.run_naive(model, seqs, dev, batch_size=naive_batch)
    tf, fast = common.run_fastism(model, seqs, dev, repeat=2)
    tt, tm = common.run_tangermeme(model, seqs, dev, batch_size=args.tm_batch, repeat=2)
    row.update(naive=tn, fast=tf, tm=tt, macs=tf.extra["macs"],
               diff_fast=common.max_rel_diff(fast, naive), diff_tm=common.max_rel_diff(tm, naive))
    return row


def table(rows) -> str:
    headers = ["model", "L", "threads", "naive s/seq", "FastISM s/seq", "FastISM set-up s", "tangermeme s/seq",
               "tangermeme set-up s", "FastISM × naive", "MAC bound", "of bound", "tangermeme × naive",
               "FastISM × tangermeme, 1 seq incl. set-up", "max rel diff (fast / tm)", "note"]
    out = []
    for r in rows:
        n, f, t, m = r["naive"], r["fast"], r["tm"], r["macs"]
        speed = n.per_seq / f.per_seq
        one = (t.setup_s + t.per_seq) / (f.setup_s + f.per_seq)
        out.append([r["model"], r["L"], r["threads"], n.per_seq, f.per_seq, f.setup_s, t.per_seq, t.setup_s,
                    speed, m["ratio"], f"{100 * speed / m['ratio']:.0f}%", n.per_seq / t.per_seq, one,
                    f"{r['diff_fast']:.1e} / {r['diff_tm']:.1e}", t.note])
    return common.markdown_table(headers, out)


def main(argv=None):
    args = parse_args(argv)
    if not args.no_malloc_env:
        common.reexec_with_malloc_env("benchmarks.bench_zoo")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for name in args.models.split(","):
            print(f"{name} L={args.length or LENGTHS[name]} threads={threads} ...", flush=True)
            rows.append(bench(name, threads, args))
            print(table(rows[-1:]), flush=True)
    body = (f"Full saturation mutagenesis (3 alternative bases × L positions), {args.n_seqs} random "
            "sequence(s), seconds per sequence. FastISM and tangermeme: fastest of 2 steady calls; naive: one call "
            f"(NaiveISM, batch {args.naive_batch}: 'auto' = measured on its first batches); tangermeme batch "
            f"{args.tm_batch}, its 30-s threshold lifted.\n\n"
            + table(rows))
    print(body)
    if args.out:
        common.append_results(args.out, "Zoo models on CPU", torch.device("cpu"), body)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("USE_TF", "0")
    main()
    sys.exit(0)
