"""How much the command-line tool adds over the library call (target: at most 10%), on Basset.

Library: ``FastISM(basset(L), L)`` built and ``saturation_mutagenesis`` run on the one-hot array.
CLI, in process: ``fastism_torch.cli.main(["ism", ...])`` on a FASTA of the same sequences (reading,
encoding, scores, HDF5/npz/BED writing included).  CLI, subprocess: ``python -m fastism_torch ism ...``
(adds interpreter start-up and imports).  Each is timed ``--repeat`` times; the best time is reported.

    python benchmarks/bench_cli.py --n 4 --seq-len 1000 [--device cuda] [--engine fast|naive]

Uses ``fastism_torch.models.basset`` when it exists, else the Basset defined below.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _local_basset(seq_len: int) -> nn.Module:
    """Basset (Kelley et al. 2016): 3 conv/BN/ReLU/max-pool blocks, 2 dense layers of 1000, 164 outputs."""
    def block(cin, cout, k, pool):
        return [nn.Conv1d(cin, cout, k), nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(pool)]
    L = seq_len
    for k, p in ((19, 3), (11, 4), (7, 4)):
        L = (L - k + 1) // p
    return nn.Sequential(*block(4, 300, 19, 3), *block(300, 200, 11, 4), *block(200, 200, 7, 4), nn.Flatten(),
                         nn.Linear(200 * L, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(),
                         nn.Linear(1000, 164), nn.Sigmoid())


def make_basset(seq_len: int = 1000) -> nn.Module:
    """The benchmark's model factory (also used by the CLI as ``benchmarks/bench_cli.py:make_basset``)."""
    torch.manual_seed(0)
    try:
        from fastism_torch.models import basset
        model = basset(seq_len, num_outputs=164)
    except ImportError:
        model = _local_basset(seq_len)
    return model.eval()


def _write_fasta(path, x):
    with open(path, "w") as fh:
        for i, s in enumerate(x.argmax(1)):
            fh.write(f">seq{i}\n{''.join('ACGT'[j] for j in s)}\n")


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="sequences")
    ap.add_argument("--seq-len", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--engine", choices=("fast", "naive"), default="fast")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-subprocess", action="store_true", help="skip the subprocess timing")
    ap.add_argument("--compression", default="gzip", help="the CLI's --compression (gzip, lzf, none)")
    a = ap.parse_args()

    import fastism_torch
    from fastism_torch.cli import main as cli_main

    rng = np.random.default_rng(0)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (a.n, a.seq_len))].transpose(0, 2, 1).copy()
    tmp = tempfile.mkdtemp(prefix="bench_cli_")
    fa = os.path.join(tmp, "seqs.fa")
    _write_fasta(fa, x)
    cls = fastism_torch.FastISM if a.engine == "fast" and fastism_torch.FastISM is not None \
        else fastism_torch.NaiveISM

    def library():
        ism = cls(make_basset(a.seq_len), a.seq_len, device=a.device, batch_size=a.batch_size)
        out = ism.saturation_mutagenesis(x)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    argv = ["ism", "-m", f"{os.path.join(HERE, 'bench_cli.py')}:make_basset", "-s", fa, "--device", a.device,
            "--engine", a.engine, "--overwrite", "--compression", a.compression] + (["--batch-size", str(a.batch_size)] if a.batch_size else [])

    def cli_inproc():
        assert cli_main(argv + ["-o", os.path.join(tmp, "inproc")]) == 0

    def cli_sub():
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-m", "fastism_torch", *argv, "-o", os.path.join(tmp, "sub")],
                       check=True, env=env, capture_output=True)

    library()    # warm-up: first-call costs (lazy imports, allocator) are not the CLI's
    t_lib = _best(library, a.repeat)
    t_cli = _best(cli_inproc, a.repeat)
    print(f"Basset L={a.seq_len}, N={a.n}, device={a.device}, engine={cls.__name__}, "
          f"torch threads={torch.get_num_threads()}, --compression {a.compression}")
    print(f"library (build + saturation_mutagenesis): {t_lib:8.3f} s")
    print(f"CLI in process (FASTA -> files)         : {t_cli:8.3f} s   overhead {100 * (t_cli / t_lib - 1):+.1f}%")
    if not a.no_subprocess:
        t_sub = _best(cli_sub, a.repeat)
        print(f"CLI subprocess (+ interpreter start-up) : {t_sub:8.3f} s   overhead {100 * (t_sub / t_lib - 1):+.1f}%")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
