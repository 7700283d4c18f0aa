"""Windowed ISM on a long-context model at a long input (enformer-pytorch, or borzoi-pytorch with ``--model
borzoi``; random weights), FastISM vs NaiveISM.

A few ``--width``-bp windows at the centre of one sequence are replaced (zeros, one edit per window, as a
windowed scan of a long input does); FastISM is built with ``test_correctness=False``.  Each method runs in a
child process of its own, one after the other (same run, same machine), so each peak resident memory (RSS,
``VmHWM``) is its own; the parent compares the outputs and prints a markdown table (``--out`` appends it to
RESULTS.md).  Reported per method:

- FastISM: building the engine (``FastISM(...)``: capture on the meta device and analysis), the first call
  (plan, edit graph, the reference pass, one forward pass comparing the trace with the model, the edits), a
  second call (steady state: the reference pass and the edits), and peak RSS over the whole child;
- NaiveISM: one call (a forward pass per edit, ``--batch-size`` edits at a time), peak RSS;
- optionally (``--methods forward,...``) one forward pass timed on its own; otherwise a forward pass is taken
  as the naive call's time per edit.

    python -m benchmarks.bench_long --length 49152 --dim 768 --depth 4 --windows 4   # mid-size
    python -m benchmarks.bench_long --length 196608 --dim 1536 --depth 11 --tracks 5313 \
        --windows 8 --batch-size 1 --out benchmarks/RESULTS.md                        # Enformer's size

Memory: at Enformer's size one naive forward pass peaked near 9-19 GB on a 24 GB machine; ``--max-gib`` stops a
child whose RSS passes it (checked every second) and the table says so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from benchmarks import common

os.environ.setdefault("USE_TF", "0")          # transformers (imported by enformer-pytorch) would import TensorFlow


# ------------------------------------------------------------------ the model
def _enformer(args) -> torch.nn.Module:
    """enformer-pytorch's ``Enformer`` at ``args``' size (896 of 1536 bins kept at 196,608 bp)."""
    from enformer_pytorch import Enformer, EnformerConfig
    torch.manual_seed(0)
    bins = args.length // 128
    crop = min(bins // 4, 320)             # Enformer: 1536 bins, 896 kept (320 cropped on each side)
    cfg = EnformerConfig(dim=args.dim, depth=args.depth, heads=args.heads, num_downsamples=7,
                         dim_divisible_by=args.dim // 12, target_length=bins - 2 * crop,
                         output_heads=dict(human=args.tracks))
    return Enformer(cfg)


def _init(model: torch.nn.Module) -> torch.nn.Module:
    """Kaiming weights and non-trivial BatchNorm statistics (no calibration pass: at full length it would cost
    many forward passes); evaluation mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def borzoi(args) -> torch.nn.Module:
    """borzoi-pytorch's ``Borzoi`` (its conv tower is fixed at full size; ``args`` set the transformer), the
    centre 3/8 of its 32-bp bins returned (6144 of 16384 at 524,288 bp), weights as :func:`enformer`'s."""
    from borzoi_pytorch import Borzoi
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    torch.manual_seed(0)
    cfg = BorzoiConfig(dim=args.dim, depth=args.depth, heads=args.heads, bins_to_return=args.length // 32 * 3 // 8)
    return _init(Borzoi(cfg))


MODELS = {"enformer": (lambda args: _init(_enformer(args)), "NLC"), "borzoi": (borzoi, "NCL")}


def windows(args) -> list[tuple[int, int]]:
    """``args.windows`` adjacent ``args.width``-bp windows centred on the sequence's middle."""
    start = args.length // 2 - args.windows * args.width // 2
    return [(start + i * args.width, start + (i + 1) * args.width) for i in range(args.windows)]


def sequence(args) -> torch.Tensor:
    """One random one-hot sequence in the model's layout."""
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (1, args.length), generator=g), 4).float()
    return x if MODELS[args.model][1] == "NLC" else x.transpose(1, 2).contiguous()


# ------------------------------------------------------------------ memory
def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_gib() -> float:
    return _status("VmRSS") / 2 ** 30


def peak_rss_gib() -> float:
    return _status("VmHWM") / 2 ** 30


def reset_peak_rss() -> None:
    """Start a new peak (``VmHWM``) from the current RSS (Linux: ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _watch(limit_gib: float) -> None:
    """Exit the process (code 3) if its RSS passes ``limit_gib``."""
    def loop():
        while True:
            if rss_gib() > limit_gib:
                print(json.dumps({"killed": f"RSS over {limit_gib} GiB"}), flush=True)
                os._exit(3)
            time.sleep(0.5)
    threading.Thread(target=loop, daemon=True).start()


# ------------------------------------------------------------------ children
def child(args) -> dict:
    torch.set_num_threads(args.threads)
    _watch(args.max_gib)
    model, layout = MODELS[args.model][0](args), MODELS[args.model][1]
    x = sequence(args)
    res = {"method": args.child, "rss_model_gib": rss_gib()}
    reset_peak_rss()
    with torch.no_grad():
        if args.child == "forward":
            _, res["forward_s"] = common.timed(lambda: model(x), torch.device("cpu"))
        elif args.child == "naive":
            from fastism_torch import NaiveISM
            ism = NaiveISM(model, args.length, layout=layout, change_ranges=windows(args), batch_size=args.batch_size)
            out, res["call_s"] = common.timed(lambda: ism(x), torch.device("cpu"))
            torch.save(out, args.save)
        else:
            from fastism_torch import FastISM
            ism, res["build_s"] = common.timed(lambda: FastISM(
                model, args.length, layout=layout, change_ranges=windows(args), test_correctness=False,
                batch_size=args.batch_size), torch.device("cpu"))
            res["peak_build_gib"] = peak_rss_gib()
            passes = []                            # seconds of each reference pass (one per call)
            real_pass = ism._reference_pass

            def timed_pass(ex, inp):
                out, s = common.timed(lambda: real_pass(ex, inp), torch.device("cpu"))
                passes.append(s)
                return out
            ism._reference_pass = timed_pass
            out, res["first_s"] = common.timed(lambda: ism(x), torch.device("cpu"))
            res["peak_first_gib"] = peak_rss_gib()
            if not args.no_steady:
                out, res["steady_s"] = common.timed(lambda: ism(x), torch.device("cpu"))
            res["reference_pass_s"] = passes[-1]
            plan = ism.plan
            res["stops"] = [f"{n}: {r}" for n, r in plan.stops][:3]
            res["windowed_nodes"] = len(plan.nodes)
            torch.save(out, args.save)
    res["peak_gib"] = peak_rss_gib()
    return res


def run_child(method: str, argv: list, save: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_long", "--child", method, "--save", save, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(common.HERE),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(common.HERE))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if "Error" in ln] or proc.stderr.splitlines()
        return {"method": method, "error": (err or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


# ------------------------------------------------------------------ parent
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="enformer", choices=list(MODELS))
    p.add_argument("--length", type=int, default=49152)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--tracks", type=int, default=512, help="Enformer's output tracks (Borzoi: fixed 7611)")
    p.add_argument("--windows", type=int, default=4, help="windows (= edits) at the centre")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-gib", type=float, default=14.0, help="stop a child whose RSS passes this")
    p.add_argument("--methods", default="fast,naive", help="of forward,fast,naive (forward: one pass timed)")
    p.add_argument("--no-steady", action="store_true", help="skip FastISM's second (steady-state) call")
    p.add_argument("--out", default="", help="markdown file to append the section to (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    child_argv = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
    res, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            save = os.path.join(tmp, method + ".pt")
            res[method] = run_child(method, child_argv, save)
            print(json.dumps(res[method]), flush=True)
            if os.path.exists(save):
                outs[method] = torch.load(save)
    diff = common.max_rel_diff(outs["fast"], outs["naive"]) if {"fast", "naive"} <= set(outs) else None
    text = report(args, res, diff, argv)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text + "\n")
    return res, diff


def report(args, res: dict, diff, argv=None) -> str:
    """A markdown section: the run's settings, the speed-ups and set-up in forward passes, a table per method."""
    f, n = res.get("fast", {}), res.get("naive", {})
    fwd = res.get("forward", {}).get("forward_s") or (n["call_s"] / args.windows if n.get("call_s") else None)
    setup = f["build_s"] + f["first_s"] - f["steady_s"] if f.get("steady_s") else None
    per = lambda d, k: d.get(k) if k in d else d.get("error") or d.get("killed")   # noqa: E731
    rows = [["NaiveISM", per(n, "call_s"), "", "", n.get("peak_gib"), ""],
            ["FastISM", per(f, "first_s"), f.get("steady_s"), f.get("build_s"), f.get("peak_gib"),
             f"build peak {common.fmt(f.get('peak_build_gib'))} GiB; first stops: "
             f"{'; '.join(f.get('stops') or ['none'])}"]]
    if "forward" in res:
        rows.insert(0, ["forward pass (1 seq)", per(res["forward"], "forward_s"), "", "",
                        res["forward"].get("peak_gib"), ""])
    model = (f"enformer-pytorch L={args.length}, dim {args.dim}, depth {args.depth}, {args.tracks} tracks"
             if args.model == "enformer" else
             f"borzoi-pytorch L={args.length} (its full-size conv tower), transformer dim {args.dim}, depth "
             f"{args.depth}, 7611 tracks")
    lines = [f"## Long context (CPU): {model}, {args.windows} x {args.width}-bp windows at the centre (one edit each), "
             f"1 sequence, batch size {args.batch_size}", "",
             f"- machine: {common.machine(torch.device('cpu'))}",
             f"- date: {common.datetime.datetime.now():%Y-%m-%d %H:%M}, commit {_commit()}",
             f"- command: `python -m benchmarks.bench_long {' '.join(sys.argv[1:] if argv is None else argv)}`"]
    if n.get("call_s") and f.get("steady_s"):
        lines.append(f"- FastISM x naive: {n['call_s'] / f['steady_s']:.2f} steady (a call: reference pass + "
                     f"edits), {n['call_s'] / (f['build_s'] + f['first_s']):.2f} including set-up; set-up "
                     f"(build + first call - steady call) {setup:.1f} s = {setup / fwd:.2f} forward passes "
                     f"(forward pass {fwd:.1f} s{'' if 'forward' in res else ': naive call / edits'}); "
                     f"max relative difference fast vs naive {common.fmt(diff)}")
        if f.get("reference_pass_s"):
            edit = (f["steady_s"] - f["reference_pass_s"]) / args.windows
            lines.append(f"- per edit (steady call minus its reference pass of {common.fmt(f['reference_pass_s'])} s, "
                         f"over {args.windows} edits): {common.fmt(edit)} s against naive's "
                         f"{common.fmt(n['call_s'] / args.windows)} s ({n['call_s'] / args.windows / edit:.2f}x)")
    table = common.markdown_table(["", "call s", "steady call s", "build s", "peak RSS GiB", "note"], rows)
    return "\n".join(lines) + "\n\n" + table


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(common.HERE)).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
