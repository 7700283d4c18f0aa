"""Where FastISM's time goes on a GPU: per configuration, the steady time of a full saturation run, the batch
size FastISM chose and peak memory, then (``--profile``) the kernels that took the most device time and the
host calls that took the most host time, from ``torch.profiler``.  ``scripts/gpu_check.sh part2`` runs it::

    python -m benchmarks.profile_gpu --models factorized_basset,bpnet               # on a GPU machine
    python -m benchmarks.profile_gpu --device cpu --models tiny --lengths 40 --n-seqs 2   # smoke run

Each configuration is FastISM eager (``--compile``: compiled instead) at ``--batch-sizes`` (``auto`` = its own
choice), with cuDNN's autotuning off (FastISM's default) and, with ``--cudnn-benchmark``, on as well.  A first
call on the same sequences warms up (autotuning, plan building, compilation); the second is timed.  Nothing is
appended to RESULTS.md: these are leads for the next change, not results; ``--out FILE`` also writes the lines
to FILE (``scripts/gpu_check.sh`` writes them under ``$OUT``, the only place that comes back from the device).
``--tf32`` / ``--dtype bfloat16`` profile a precision tier.  With ``--cudnn-benchmark`` the first call's time
includes cuDNN's autotuning of every convolution shape of the run: that is its one-time cost.
"""
from __future__ import annotations

import argparse
import sys
import traceback

import torch

from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="factorized_basset,bpnet")
    p.add_argument("--lengths", default="1000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="auto,4096")
    p.add_argument("--cudnn-benchmark", action="store_true", help="each configuration with autotuning on too")
    p.add_argument("--compile", action="store_true", help="FastISM(compile=True) instead of eager")
    p.add_argument("--n-seqs", type=int, default=16)
    p.add_argument("--profile", type=int, default=4, metavar="N", help="profile a call on N sequences (0: none)")
    p.add_argument("--rows", type=int, default=12, help="kernels and host calls listed per profile")
    p.add_argument("--tf32", action="store_true", help="FastISM(tf32=True)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16"], help="FastISM(dtype=...) (autocast)")
    p.add_argument("--out", default=None, help="also write the lines to this file (appended)")
    return p.parse_args(argv)


def _timed(fast, x, device) -> float:
    return common.timed(lambda: fast.saturation_mutagenesis(x), device)[1]


def profile_table(fast, x, device, rows: int) -> list[str]:
    """Wall time of one call under torch.profiler, device time in kernels (GPU: CUDA kernel events only, so
    an op and the kernel it launches are not counted twice), the top kernels and the top host calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as p:
        wall = _timed(fast, x, device)
    events = p.key_averages()
    lines = []
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        lines.append(f"  profiled: {wall:.3f} s for {len(x)} sequences, {busy:.3f} s in kernels "
                     f"({100 * busy / wall:.0f}% of the wall time)")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:rows]:
            lines.append(f"  {e.self_device_time_total / 1e3:9.1f} ms  {e.count:6d}x  {e.key[:100]}")
    else:
        lines.append(f"  profiled: {wall:.3f} s for {len(x)} sequences")
    lines.append("  host:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        lines.append(f"  {e.self_cpu_time_total / 1e3:9.1f} ms  {e.count:6d}x  {e.key[:100]}")
    return lines


def run_case(name: str, L: int, batch, bench: bool, args, device) -> list[str]:
    from fastism_torch import FastISM
    tier = "".join([" tf32" if args.tf32 else "", f" {args.dtype}" if args.dtype else ""])
    tag = (f"{name} L={L} {'compiled' if args.compile else 'eager'}{tier} batch={batch or 'auto'} "
           f"cudnn.benchmark={'on' if bench else 'off'}")
    old = FastISM.cudnn_benchmark
    FastISM.cudnn_benchmark = bench
    try:
        model = common.make_model(name, L)
        x = common.random_seqs(args.n_seqs, L).to(device)
        fast = FastISM(model, L, device=device, batch_size=batch, test_correctness=False, compile=args.compile,
                       tf32=args.tf32, dtype=getattr(torch, args.dtype) if args.dtype else None)
        first = _timed(fast, x, device)
        steady = _timed(fast, x, device)
        used = fast._auto_batch(fast._engine(fast.change_ranges))
        peak = f", peak {common.peak_gib(device):.1f} GiB" if device.type == "cuda" else ""
        lines = [f"{tag}: {1000 * steady / len(x):.2f} s / 1000 seqs (n={len(x)}; first call {first:.2f} s), "
                 f"batch {used}{peak}"]
        if args.profile:
            lines += profile_table(fast, x[:args.profile], device, args.rows)
        return lines
    except Exception:                     # noqa: BLE001 - a failed configuration is a finding too
        return [f"{tag}: ERROR {traceback.format_exc(limit=3)[-600:]}"]
    finally:
        FastISM.cudnn_benchmark = old
        common.reset_peak(device)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"{common.machine(device)}; torch {torch.__version__}", flush=True)
    out = []
    for name in args.models.split(","):
        for L in (int(v) for v in args.lengths.split(",")):
            for b in args.batch_sizes.split(","):
                for bench in (False, True) if args.cudnn_benchmark else (False,):
                    lines = run_case(name, L, None if b == "auto" else int(b), bench, args, device)
                    print("\n".join(lines), flush=True)
                    out += lines
    if args.out:
        import os
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(f"# {common.machine(device)}; torch {torch.__version__}\n# profile_gpu {' '.join(argv or sys.argv[1:])}\n")
            fh.write("\n".join(out) + "\n\n")
    return out


if __name__ == "__main__":
    sys.exit(1 if any("ERROR" in line for line in main()) else 0)
