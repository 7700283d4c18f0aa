"""What compressing the result file costs and saves: size and write time of ``PREFIX.h5`` with and without
:data:`fastism_torch.outputs.COMPRESSIONS`, on real scores.

The scores are computed once (FastISM, self-check off) and then written by
:class:`fastism_torch.outputs.ResultFile` (create, one ``write_chunk`` per ``--chunk`` sequences, finish) under
each setting; the best of ``--repeat`` writes is reported.  Models: the bundled example
(``examples/example_model.py`` on ``examples/example.fa``) and a bpnet-lite BPNet on random sequences, scored
as the command line does by default (``--reduction auto``: counts and profile sets) and in full
(``--reduction none``: every profile position a target).

    python -m benchmarks.bench_h5 [--bpnet-filters 32 --bpnet-layers 4 --seq-len 1000 --n 4] [--repeat 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import numpy as np
import torch

from fastism_torch import inputs, outputs, pipeline
from fastism_torch.loading import EngineOptions, Model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SETTINGS = {"uncompressed": {}, "gzip-1 + shuffle (the default)": outputs.COMPRESSIONS["gzip"],
            "gzip-4 + shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
            "lzf + shuffle": outputs.COMPRESSIONS["lzf"]}


def _example():
    spec = importlib.util.spec_from_file_location("example_model", os.path.join(REPO, "examples", "example_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seqs = inputs.load_sequences(os.path.join(REPO, "examples", "example.fa"))
    return mod.make_model(), seqs


def _bpnet(filters: int, layers: int, seq_len: int, n: int):
    from bpnetlite import BPNet
    torch.manual_seed(0)
    net = BPNet(n_filters=filters, n_layers=layers, n_outputs=2, n_control_tracks=0, verbose=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    rng = np.random.default_rng(0)
    raw = ["".join(rng.choice(list("ACGT"), seq_len)).encode() for _ in range(n)]
    return net.eval(), inputs.encode([f"chr1:{i * seq_len}-{(i + 1) * seq_len}" for i in range(n)], raw)


def _write(path: str, seqs, spec, by_head: dict, chunk: int) -> float:
    t0 = time.perf_counter()
    rf = outputs.ResultFile(path, "bench")
    rf.create(seqs, spec, {"bench": True})
    for lo in range(0, len(seqs), chunk):
        hi = min(len(seqs), lo + chunk)
        rf.write_chunk(lo, hi, {h: type(s)(*(None if v is None else v[lo:hi] for v in s)) for h, s in by_head.items()})
    rf.finish()
    return time.perf_counter() - t0


def measure(label: str, net, seqs, reduction: str, repeat: int, chunk: int) -> None:
    model = Model.from_module(net, seqs.onehot.shape[2], EngineOptions(check=False))
    t0 = time.perf_counter()
    spec = pipeline.resolve(model, seqs.onehot[:1], pipeline.ScoreSpec(reduction=reduction))
    by_head = pipeline.score_heads(model, seqs.onehot, spec)
    t_score = time.perf_counter() - t0
    shapes = ", ".join(f"{h or 'ism'}: {s.ism.shape}" for h, s in by_head.items())
    print(f"\n{label}, --reduction {reduction}: {len(seqs)} sequences, {shapes}; scoring took {t_score:.1f}s")
    print("| setting | file size | per sequence | ratio | write time (best of %d) |" % repeat)
    print("|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as d:
        for name, kw in SETTINGS.items():
            outputs.COMPRESSIONS["bench"] = kw
            path = os.path.join(d, "r.h5")
            best = min(_write(path, seqs, spec, by_head, chunk) for _ in range(repeat))
            size = os.path.getsize(path)
            base = base or size
            print(f"| {name} | {size / 1e6:.2f} MB | {size / len(seqs) / 1e3:.1f} kB | {size / base:.2f} | "
                  f"{best:.3f} s |")
    outputs.COMPRESSIONS.pop("bench")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunk", type=int, default=4, help="sequences per write_chunk")
    p.add_argument("--bpnet-filters", type=int, default=32)
    p.add_argument("--bpnet-layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1000)
    p.add_argument("--n", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    net, seqs = _example()
    measure("example (examples/example_model.py, example.fa)", net, seqs, "auto", a.repeat, a.chunk)
    net, seqs = _bpnet(a.bpnet_filters, a.bpnet_layers, a.seq_len, a.n)
    label = f"bpnet-lite BPNet(n_filters={a.bpnet_filters}, n_layers={a.bpnet_layers}), L={a.seq_len}"
    for red in ("auto", "none"):
        measure(label, net, seqs, red, a.repeat, a.chunk)


if __name__ == "__main__":
    main()
