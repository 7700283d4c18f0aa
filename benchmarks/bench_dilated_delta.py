"""One dilated layer of BPNet, three ways: where a delta form could pay on the CPU.

``python -m benchmarks.bench_dilated_delta [--threads 1,2] [--length 1000] [--out benchmarks/RESULTS.md]``

For a 64 -> 64, k=3 convolution of dilation ``d`` (BPNet's residual tower), 147 edits (49 neighbouring positions
x 3 bases, at three places of the sequence: near the start, the middle, near the end) whose input changed on
the range a single-base edit reaches there, the time to produce the layer's new output window:

- *recompute*: ``F.conv1d`` over the gathered input window (what FastISM runs at 2+ threads); the gather itself
  is not timed, so this is the recomputation's lower bound;
- *delta, shifted products*: FastISM's delta form (:func:`fastism_torch.rules.conv.conv1d_delta`, a matrix
  product per cache-sized chunk and ``k`` shifted adds) plus the write into the reference window
  (:func:`fastism_torch.kernels.gather.gather_window_delta`);
- *delta, tap-clipped*: one product per tap over only the changed columns whose outputs land in the window (a
  tap of a wide dilation reads outside the sequence for many of them: BPNet's last layer at L=1000 needs 2/3
  of the products), added straight into the window copied from the reference (no zero-filled change tensor,
  no second pass).  A prototype kept here, not in the library.

- *delta, batch-last*: the layout a batch-last tower would keep, ``(C, positions, edits)`` per run of edits
  with one placement: a layer's change is ``k`` large products ``W_t @ change`` (``(C, C) @ (C, w * edits)``),
  each accumulated (``addmm_``) straight into a column range of the window (``(C, width * edits)``, gathered
  from the reference in that layout), over chunks of columns that stay in cache.  The change is given in that
  layout (a batch-last tower would hold it so), the window's gather is timed.

Reported per form: milliseconds summed over the three places, and picoseconds per multiply-add executed.  A
delta form pays where its time is below recompute's; its multiply-adds are ~0.5-0.6 of recompute's.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fastism_torch.kernels.gather import _placements, gather_window_delta, window_rows
from fastism_torch.rules.conv import conv1d_delta

from . import common

CHANNELS, KERNEL, POSITIONS = 64, 3, 49
CHUNK_BYTES = 2 << 20


def tap_clipped(cache, change, weight, dilation, seq_idx, start, shift, width, macs: list):
    """The layer's new window: ``cache``'s reference window with the convolution of ``change`` added tap by tap,
    each tap's product over only the change columns whose outputs land in the window (rows in chunks whose
    products stay in cache).  Equals ``gather_window_delta(cache, conv1d_delta(change, weight, dilation), ...)``."""
    n, c_in, w = change.shape
    c_out, _, k = weight.shape
    runs = _placements(shift, w + dilation * (k - 1), width)
    out = window_rows(cache, seq_idx, start, width)
    rows = max(1, CHUNK_BYTES // (c_out * w * change.element_size()))
    for c0 in range(0, n, rows):
        c1 = min(n, c0 + rows)
        parts = [(max(r0, c0), min(r1, c1), s) for r0, r1, s, _, _ in runs if r0 < c1 and r1 > c0]
        for t in range(k):
            off = (k - 1 - t) * dilation                  # output column of change column 0, in conv1d_delta's frame
            spans = [(a, b, max(0, -(s + off)), min(w, width - (s + off)), s + off) for a, b, s in parts]
            spans = [x for x in spans if x[2] < x[3]]
            if not spans:
                continue
            ja, jb = min(x[2] for x in spans), max(x[3] for x in spans)
            macs[0] += (c1 - c0) * (jb - ja) * c_in * c_out
            z = torch.matmul(weight[:, :, t], change[c0:c1, :, ja:jb])
            for a, b, lo, hi, o in spans:
                out[a:b, :, o + lo:o + hi] += z[a - c0:b - c0, :, lo - ja:hi - ja]
    return out


#: output columns (positions x edits) of one chunk of the batch-last form: 64 x 8192 floats = 2 MiB
BL_COLUMNS = 8192


def batch_last(cache, runs_bl, weight, dilation, start, width, macs: list):
    """The layer's new windows in the batch-last layout, one ``(C, width, edits)`` tensor per run of edits with
    one placement (``runs_bl``: ``(r0, r1, shift, change (C, w, r1 - r0))``): the reference window gathered from
    ``cache`` (sequence 0), then per chunk of output columns and tap ``t`` one ``addmm_`` of ``W_t @ change``
    over the change columns landing in the chunk."""
    c_out, c_in, k = weight.shape
    taps = [weight[:, :, t].contiguous() for t in range(k)]
    pos = torch.arange(width)
    outs = []
    for r0, r1, shift, change in runs_bl:
        e = r1 - r0
        w = change.shape[1]
        out = cache[0][:, (start[r0:r1][None, :] + pos[:, None])]              # (C, width, e)
        o2, c2 = out.view(c_out, width * e), change.view(c_in, w * e)
        for a in range(0, width * e, BL_COLUMNS):
            b = min(width * e, a + BL_COLUMNS)
            for t in range(k):
                off = (shift + (k - 1 - t) * dilation) * e                     # out column of change column 0
                lo, hi = max(a, off), min(b, off + w * e)
                if lo < hi:
                    macs[0] += (hi - lo) * c_in * c_out
                    o2[:, lo:hi].addmm_(taps[t], c2[:, lo - off:hi - off])
        outs.append(out)
    return outs


def _best_ms(fn, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def layer_case(L: int, d: int, p0: int, gen: torch.Generator):
    """Inputs of one place: 49 positions from ``p0``, 3 bases each; the change range a single-base edit reaches
    at this layer's input (BPNet: radius ``8 + d``), the output window, and where the change lands in it."""
    k = KERNEL
    pos = torch.arange(p0, p0 + POSITIONS).repeat_interleave(3)
    cs = (pos - (8 + d)).clamp(min=0)
    ce = (pos + 9 + d).clamp(max=L)
    w = int((ce - cs).max())
    cs = torch.minimum(cs, torch.tensor(L - w))
    lo, hi = (cs - d).clamp(min=0), (cs + w + d).clamp(max=L)
    width = int((hi - lo).max())
    ws = torch.minimum(lo, torch.tensor(L - width))
    shift = cs - (k - 1) * d + d - ws                          # 'same' padding: pad_left = d
    B = len(pos)
    return dict(cache=torch.randn(1, CHANNELS, L, generator=gen), change=torch.randn(B, CHANNELS, w, generator=gen),
                seq_idx=torch.zeros(B, dtype=torch.long), start=ws, shift=shift, width=width,
                window_in=torch.randn(B, CHANNELS, width + 2 * d, generator=gen))


def run(L: int, dilations, threads: int) -> list:
    """The table's rows at ``threads`` torch threads (the caller's setting is restored)."""
    with common.torch_threads(threads):
        return _rows(L, dilations)


def _rows(L: int, dilations) -> list:
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(CHANNELS, CHANNELS, KERNEL, generator=gen) / 8
    rows = []
    for d in dilations:
        t = {"recompute": 0.0, "shifted": 0.0, "clipped": 0.0, "batch_last": 0.0}
        m = {"recompute": 0, "shifted": 0, "clipped": [0], "batch_last": [0]}
        worst = 0.0
        for p0 in (100, L // 2 - POSITIONS // 2, L - 150):
            c = layer_case(L, d, p0, gen)
            B, w = c["change"].shape[0], c["change"].shape[2]
            args = (c["seq_idx"], c["start"], c["shift"], c["width"])
            shifted = lambda: gather_window_delta(c["cache"], conv1d_delta(c["change"], weight, d),  # noqa: E731
                                                  *args, 2, (CHANNELS,), 2)
            clipped = lambda: tap_clipped(c["cache"], c["change"], weight, d, *args, [0])  # noqa: E731
            shifts, counts = torch.unique_consecutive(c["shift"], return_counts=True)
            ends = counts.cumsum(0).tolist()
            runs_bl = [(r1 - n, r1, t, c["change"][r1 - n:r1].permute(1, 2, 0).contiguous())
                       for t, n, r1 in zip(shifts.tolist(), counts.tolist(), ends)]
            last = lambda: batch_last(c["cache"], runs_bl, weight, d, c["start"], c["width"], [0])  # noqa: E731
            want = shifted()
            worst = max(worst, float((want - clipped()).abs().max()),
                        max(float((want[r0:r1] - o.permute(2, 0, 1)).abs().max())
                            for (r0, r1, _, _), o in zip(runs_bl, last())))
            tap_clipped(c["cache"], c["change"], weight, d, *args, m["clipped"])
            batch_last(c["cache"], runs_bl, weight, d, c["start"], c["width"], m["batch_last"])
            t["shifted"] += _best_ms(shifted)
            t["clipped"] += _best_ms(clipped)
            t["batch_last"] += _best_ms(last)
            t["recompute"] += _best_ms(lambda: F.conv1d(c["window_in"], weight, dilation=d))
            m["shifted"] += B * w * KERNEL * CHANNELS ** 2
            m["recompute"] += B * c["width"] * KERNEL * CHANNELS ** 2
        ps = {f: t[f] * 1e9 / (m[f][0] if isinstance(m[f], list) else m[f]) for f in t}
        rows.append([threads, d, t["recompute"], ps["recompute"], t["shifted"], ps["shifted"], t["clipped"],
                     ps["clipped"], m["clipped"][0] / m["recompute"], t["batch_last"], ps["batch_last"],
                     f"{worst:.1e}"])
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--dilations", default="16,32,64,128,256,512")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="markdown file to append to ('' = don't)")
    args = p.parse_args(argv)
    rows = []
    for th in (int(v) for v in args.threads.split(",")):
        rows += run(args.length, [int(v) for v in args.dilations.split(",")], th)
    body = (f"One BPNet dilated layer (64 -> 64, k=3), 3 x 147 edits (49 positions x 3 bases near the start, the "
            f"middle and the end of L={args.length}), ms summed over the three places and ps per multiply-add "
            f"executed (benchmarks/bench_dilated_delta.py; recompute: the convolution alone, its gather not timed).\n\n")
    body += common.markdown_table(
        ["threads", "dilation", "recompute ms", "ps/MAC", "delta, shifted products ms", "ps/MAC",
         "delta, tap-clipped ms", "ps/MAC", "clipped MACs / recompute MACs", "delta, batch-last ms", "ps/MAC",
         "max |diff| shifted vs the others"], rows)
    if args.out:
        print(common.append_results(args.out, "Dilated delta forms, one layer, CPU", torch.device("cpu"), body))
    else:
        print(body)


if __name__ == "__main__":
    main()
