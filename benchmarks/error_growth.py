"""Error of delta propagation along long chains of convolutions, against float64.

``python -m benchmarks.error_growth [--models bpnet2114,dilated20,basenji] [--positions 48] [--out RESULTS.md]``

For each model, single-base substitutions at ``--positions`` positions (evenly spaced, both ends included) of
2 random sequences, every alternative base: the outputs of FastISM in float32 with delta propagation wherever
an op can (``delta="always"``), with the plan's per-layer choice (``delta=True``) and recomputing
(``delta=False``), and of naive ISM in float32, each against the same edits run in float64 by a plain loop
(the model in double precision, the mutated sequences built explicitly).  Reported: the largest absolute error
over all outputs and edits, relative to the largest absolute float64 output.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from . import common

MODELS = {
    "bpnet2114": ("BPNet L=2114 (9 dilated layers)", lambda: common.make_model("bpnet", 2114), 2114),
    "dilated20": ("dilated residual, 20 layers x 64 filters, L=1000",
                  lambda: __import__("fastism_torch.models", fromlist=["m"]).dilated_residual(
                      seq_len=1000, n_layers=20, filters=64), 1000),
    "basenji": ("Basenji-style tower, 6 conv blocks, L=2048",
                lambda: __import__("fastism_torch.models", fromlist=["m"]).basenji_tower(seq_len=2048, n_blocks=5),
                2048),
}


def float64_edits(model, seqs, positions) -> list[np.ndarray]:
    """Outputs for every (sequence, position, base) edit in float64: ``[(N, P, 4, *out)]`` per output."""
    m = __import__("copy").deepcopy(model).double().eval()
    outs = None
    with torch.no_grad():
        for n in range(len(seqs)):
            batch = seqs[n].double().repeat(len(positions) * 4, 1, 1)
            for i, p in enumerate(positions):
                batch[4 * i:4 * i + 4, :, p] = torch.eye(4, dtype=torch.float64)
            y = [t.reshape(len(positions), 4, *t.shape[1:]).numpy() for t in common.as_list(m(batch))]
            outs = [[] for _ in y] if outs is None else outs
            for o, t in zip(outs, y):
                o.append(t)
    return [np.stack(o) for o in outs]


def engine_edits(ism, seqs, positions) -> list[np.ndarray]:
    """The same edits through an engine built for ``change_ranges`` at ``positions``."""
    per_base = [common.as_list(ism(seqs, replace_with=torch.eye(4)[b])) for b in range(4)]   # (N, P, *out)
    return [np.stack([pb[k].double().numpy() for pb in per_base], axis=2) for k in range(len(per_base[0]))]


def worst(a: list, ref: list) -> float:
    return max(float(np.abs(x - y).max() / (np.abs(y).max() or 1.0)) for x, y in zip(a, ref))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--positions", type=int, default=48)
    p.add_argument("--out", default=None, help="append a section to this RESULTS.md")
    args = p.parse_args(argv)
    import fastism_torch as ft
    rows = []
    for key in args.models.split(","):
        title, build, L = MODELS[key]
        model = build()
        seqs = common.random_seqs(2, L)
        positions = np.unique(np.linspace(0, L - 1, args.positions).round().astype(int)).tolist()
        ranges = [(q, q + 1) for q in positions]
        ref = float64_edits(model, seqs, positions)
        row = [title]
        for delta in ("always", True, False):
            ism = ft.FastISM(model, L, change_ranges=ranges, test_correctness=False, delta=delta)
            n_delta = sum(bool(r.delta_from) for r in ism.plan.nodes.values())
            row.append(f"{worst(engine_edits(ism, seqs, positions), ref):.2e} ({n_delta} delta)")
        row.append(f"{worst(engine_edits(ft.NaiveISM(model, L, change_ranges=ranges), seqs, positions), ref):.2e}")
        rows.append(row)
        print(row, flush=True)
    body = ("Largest |error| over all outputs and edits, relative to the largest |float64 output|; in brackets the "
            "convolutions computed by delta propagation.\n\n"
            + common.markdown_table(["model", "FastISM delta='always'", "FastISM delta=True (per layer)",
                                     "FastISM delta=False", "NaiveISM float32"], rows))
    print(body)
    if args.out:
        common.append_results(args.out, "Error growth of delta propagation against float64",
                              torch.device("cpu"), body)


if __name__ == "__main__":
    main()
