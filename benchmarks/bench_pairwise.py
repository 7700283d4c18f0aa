"""CPU speed of pairwise (double-mutant) ISM: FastISM vs the fastest naive double-mutant loop vs tangermeme.

For each model and window width, one process times on the same random one-hot sequence:

- ``fastism_torch.pairwise`` (FastISM engine, self-check off as in the other benchmarks' steady state; the
  engine's construction and the window's plan are timed apart as set-up): the ``(W, 4, W, 4, *out)`` map;
- the fastest naive double-mutant loop we have (:func:`naive_pairwise`): every double mutant ``j > i`` with
  both bases changed (what the map needs beyond single ISM), built in a reused input buffer, one batched
  forward pass per ``batch`` mutants, at the batch size measured fastest here (``--naive-batch auto``), plus
  the single mutants of the window; optionally on a fraction of the pairs (``--naive-fraction``), scaled up to
  all of them (said in the table);
- tangermeme 1.6 ``dependency_map(model, X, start=, end=, func=saturation_mutagenesis)`` (one sequence,
  ``--dmap-width`` positions: its cost is ``(3 W + 1)`` full saturation mutageneses), against
  ``fastism_torch.dependency_map`` on the same window, set-up included for both.

Every method's values are checked against the naive ones (max relative difference in the table)::

    python -m benchmarks.bench_pairwise --models basset,bpnet --widths 50 --dmap-width 4 --threads 2

The process re-executes itself with glibc's allocator told to keep freed memory (see benchmarks/common.py).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="basset,bpnet", help="basset, bpnet, factorized_basset, tiny, "
                                                             "bpnetlite_chrombpnet")
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--widths", default="50", help="comma-separated window widths (centred)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--naive-batch", default="auto", help="batch size of the naive loop, or 'auto' (measured)")
    p.add_argument("--naive-fraction", type=float, default=1.0,
                   help="time the naive loop on this share of the pairs and scale up (1 = all of them)")
    p.add_argument("--dmap-width", type=int, default=4, help="window of the dependency-map comparison (0: skip)")
    p.add_argument("--dmap-length", type=int, default=None,
                   help="sequence length of the dependency-map comparison (default --length; tangermeme's cost is "
                        "(3 W + 1) full saturation mutageneses of the sequence)")
    p.add_argument("--tm-slow", action="store_true",
                   help="also time tangermeme's dependency map with its saturation_mutagenesis(fast=False)")
    p.add_argument("--out", default=None, help="append a section to this markdown file (e.g. benchmarks/RESULTS.md)")
    return p.parse_args(argv)


def make_model(name: str, length: int):
    if name == "bpnetlite_chrombpnet":
        from benchmarks import bench_zoo
        return bench_zoo.MODELS[name](length)
    return common.make_model(name, length)


# ------------------------------------------------------------------------------------------- naive
def _pairs(x: torch.Tensor, start: int, end: int):
    """Every double mutant ``i < j`` of the window with both bases changed: (pi, a, pj, b) arrays."""
    own = x[0].argmax(0).numpy()
    rows = [(i, a, j, b) for i in range(start, end) for a in range(4) if a != own[i]
            for j in range(i + 1, end) for b in range(4) if b != own[j]]
    return np.array(rows, dtype=np.int64).T


def naive_pairwise(model, x: torch.Tensor, pairs: np.ndarray, batch: int):
    """Outputs of ``model`` on the double mutants ``pairs`` of ``x`` (1, 4, L)
    (:func:`benchmarks.common.naive_edit_loop`): list per output ``(E, *out)``."""
    pi, a, pj, b = (torch.from_numpy(p) for p in pairs)
    eye = torch.eye(4)

    def write(xb, lo):
        n, r = len(xb), torch.arange(len(xb))
        xb[r, :, pi[lo:lo + n]] = eye[a[lo:lo + n]]
        xb[r, :, pj[lo:lo + n]] = eye[b[lo:lo + n]]
    return common.naive_edit_loop(model, x, pi.shape[0], batch, write)


def best_naive_batch(model, x, pairs, choice: str) -> tuple[int, dict]:
    """The naive loop's batch size (:func:`benchmarks.common.fastest_batch`)."""
    return common.fastest_batch(lambda n, size: naive_pairwise(model, x, pairs[:, :n], size), pairs.shape[1], choice)


# ------------------------------------------------------------------------------------------- one row
def bench_window(name: str, model, x: torch.Tensor, width: int, args) -> list:
    import fastism_torch as ft
    L = x.shape[-1]
    start = (L - width) // 2
    end = start + width
    (ism, t_build) = common.timed(lambda: ft.FastISM(model, L, test_correctness=False,
                                                     change_ranges=[(p, p + 1) for p in range(start, end)]),
                                  torch.device("cpu"))
    _, t_first = common.timed(lambda: ism.pairwise(x, start, end), torch.device("cpu"))
    pw, t_fast = common.timed(lambda: ism.pairwise(x, start, end), torch.device("cpu"))
    pairs = _pairs(x, start, end)
    batch, per = best_naive_batch(model, x, pairs, args.naive_batch)
    keep = max(1, int(round(pairs.shape[1] * args.naive_fraction)))
    sub = pairs[:, np.linspace(0, pairs.shape[1] - 1, keep).astype(int)]
    naive_ism = ft.NaiveISM(model, L, batch_size=batch, change_ranges=[(p, p + 1) for p in range(start, end)])
    singles, t_single = common.timed(lambda: naive_ism.saturation_mutagenesis(x), torch.device("cpu"))
    outs, t_pairs = common.timed(lambda: naive_pairwise(model, x, sub, batch), torch.device("cpu"))
    t_naive = t_pairs * pairs.shape[1] / sub.shape[1] + t_single
    pw = common.as_list(pw)
    worst = 0.0
    for o, p in zip(outs, pw):
        got = p[0, sub[0] - start, sub[1], sub[2] - start, sub[3]]
        worst = max(worst, float((got - o).abs().max()) / (float(o.abs().max()) or 1.0))
    frac = "" if keep == pairs.shape[1] else f" ({keep} of {pairs.shape[1]} pairs timed, scaled)"
    setup = t_build + max(0.0, t_first - t_fast)
    return [name, L, width, pairs.shape[1], f"{batch}" + (" (measured)" if per else ""), t_naive, t_fast, setup,
            t_naive / t_fast, t_naive / (t_fast + setup), f"{worst:.1e}{frac}"]


class LastHead(torch.nn.Module):
    """A multi-output model's last output (BPNet: the counts head): tangermeme's ISM attribution refuses
    models with several output tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[-1]


def exact_work_macs(model, L: int, start: int, end: int) -> tuple[float, float]:
    """``(MACs, full pass MACs)``: a lower bound on the multiply-adds any exact dependency map of ``[start, end)``
    executes on one sequence: its ``3 W + 1`` reference passes, and for each double mutant ``(i, a), (j, b)`` only
    the windowed linear ops' positions that both single changes reach (elsewhere the double mutant's values are
    one single mutant's, reusable for free), each op at the cheaper of recomputing its output positions or
    propagating its input positions (the first layer free: a look-up), plus the ops after the windowed part in
    full for the pairs that meet.  Element-wise ops and pooling are free.  From FastISM's plan of single-base
    windows over the whole sequence."""
    import fastism_torch as ft
    ism = ft.FastISM(model, L, test_correctness=False)
    plan, summary = ism.plan, ism.mac_summary()
    windowed = sum(r.recompute_macs for r in plan.nodes.values() if r.macs)
    tail = max(0.0, summary["fast_macs_per_mutation"] - windowed)     # (pooling's counted MACs too: an overcount
    first = next(iter(plan.nodes))                                    # of the tail only where a tower pools)

    def overlap(r, i):
        return np.maximum(0, np.minimum(r.hi, r.hi[i]) - np.maximum(r.lo, r.lo[i]))
    total = 0.0
    for i in range(start, end):
        met = np.zeros(L)
        for r in plan.nodes.values():
            if not r.macs:
                continue
            inter = overlap(r, i).astype(float)
            if r.delta_input == first:
                inter = 0.0 * inter
            elif r.delta_input is not None:
                inter = np.minimum(inter, overlap(plan.nodes[r.delta_input], i))
            met += r.macs * inter
        met[i] = 0.0
        total += 9 * (met.sum() + tail * np.count_nonzero(met))
    return total + (3 * (end - start) + 1) * summary["full_macs"], summary["full_macs"]


def naive_macs_per_s(model, x: torch.Tensor, full_macs: float, n_positions: int = 128) -> float:
    """Naive ISM's multiply-adds per second on ``x``: NaiveISM (measured batch size) setting each of
    ``n_positions`` positions to zeros (one edit each: the engines' window call)."""
    import fastism_torch as ft
    L = x.shape[-1]
    n_positions = min(n_positions, L)
    lo = (L - n_positions) // 2
    naive = ft.NaiveISM(model, L, change_ranges=[(p, p + 1) for p in range(lo, lo + n_positions)])
    naive(x)                                                          # (measures its batch size)
    _, t = common.timed(lambda: naive(x), torch.device("cpu"))
    return n_positions * full_macs / t


def bench_dmap(name: str, model, x: torch.Tensor, width: int, slow: bool = False) -> list:
    import fastism_torch as ft
    with torch.no_grad():
        if not isinstance(model(x), torch.Tensor):
            model, name = LastHead(model), name + " (last head)"
    from tangermeme.dependency_map import dependency_map
    from tangermeme.saturation_mutagenesis import saturation_mutagenesis
    L = x.shape[-1]
    start = (L - width) // 2
    cpu = torch.device("cpu")
    want, t_tm = common.timed(lambda: dependency_map(model, x, start=start, end=start + width,
                                                     func=saturation_mutagenesis, device="cpu"), cpu)
    got, t_ft = common.timed(lambda: ft.dependency_map(model, x, start=start, end=start + width), cpu)
    diff = float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)
    bound, full = exact_work_macs(model, L, start, start + width)
    t_bound = bound / naive_macs_per_s(model, x, full)
    row = [name, L, width, t_tm, t_ft, t_tm / t_ft, t_bound, t_tm / t_bound, f"{diff:.1e}"]
    if slow:
        _, t_slow = common.timed(lambda: dependency_map(model, x, start=start, end=start + width,
                                                        func=saturation_mutagenesis, device="cpu",
                                                        additional_func_kwargs={"fast": False}), cpu)
        row[5:5] = [t_slow, t_slow / t_ft]
    return row


def main(argv=None) -> tuple[list, list]:
    """Run the benchmark; returns the pairwise rows and the dependency-map rows (the thread count is restored)."""
    if argv is None:                                    # (from the command line, not from a test)
        common.reexec_with_malloc_env("benchmarks.bench_pairwise")
    args = parse_args(argv)
    with common.torch_threads(args.threads):
        return _main(args)


def _main(args) -> tuple[list, list]:
    rows, drows = [], []
    for name in args.models.split(","):
        model = make_model(name, args.length).eval()
        x = common.random_seqs(1, args.length)
        for w in (int(v) for v in args.widths.split(",")):
            rows.append(bench_window(name, model, x, w, args))
            print(rows[-1], flush=True)
        if args.dmap_width:
            dl = args.dmap_length or args.length
            dmodel = model if dl == args.length else make_model(name, dl).eval()
            drows.append(bench_dmap(name, dmodel, common.random_seqs(1, dl), args.dmap_width, args.tm_slow))
            print(drows[-1], flush=True)
    body = ("Pairwise map `(W, 4, W, 4, *out)` of one random sequence, window centred; seconds for the whole map. "
            "Naive = the fastest double-mutant loop of benchmarks/bench_pairwise.py (batched forward passes, "
            "reused input buffer, batch size measured) over the `9 W (W-1) / 2` double mutants with both bases "
            "changed + NaiveISM single mutants of the window. FastISM: `ism.pairwise` (steady call; set-up = "
            "construction + first call's plan building).\n\n")
    body += common.markdown_table(
        ["model", "L", "W", "double mutants", "naive batch", "naive s", "FastISM s", "FastISM set-up s",
         "FastISM × naive", "× naive incl. set-up", "max rel diff (naive sample)"], rows)
    if drows:
        body += ("\n\nDependency map (tangermeme 1.6 convention, `func=saturation_mutagenesis`), one sequence, "
                 "seconds including set-up for both (tangermeme: its own `saturation_mutagenesis`, default "
                 "batch size, `fast=True` default with its 30 s rule).\n\n")
        body += ("Exact-work bound: the multiply-adds no exact method can avoid (benchmarks/bench_pairwise.py "
                 "`exact_work_macs`: the reference passes, and per double mutant only the positions both changes "
                 "reach, each linear op at its cheaper form) at naive ISM's multiply-add rate measured in the same "
                 "run; × tangermeme at the bound is the most any exact method could reach here at that rate.\n\n")
        heads = ["model", "L", "W", "tangermeme s", "fastism_torch s", "× tangermeme", "exact-work bound s",
                 "× tangermeme at the bound", "max rel diff"]
        if args.tm_slow:
            heads[5:5] = ["tangermeme fast=False s", "× tangermeme fast=False"]
        body += common.markdown_table(heads, drows)
    body += ("\n\nCaveat: a 2-core machine shared with other agents' jobs (load average above); ratios are taken "
             "within one process, but contention varies during the run.\n")
    if args.out:
        print(common.append_results(args.out, f"Pairwise ISM, CPU, L={args.length}", torch.device("cpu"), body))
    else:
        print(body)
    return rows, drows


if __name__ == "__main__":
    main()
