"""Differential fuzzer: FastISM (``test_correctness=False``) against NaiveISM on seeded random architectures.

The architectures come from :mod:`fuzz.generator` (blocks in :mod:`fuzz.blocks`: convolutions of every padding /
stride / dilation / group setting, functional and depthwise-separable ones, pooling, BatchNorm, activations (also
in place), residuals with crops by shape arithmetic, constant crops, channel and batch concatenation, channel-wise
Linear/LayerNorm, reverse-complement flips and weight sharing, squeeze-excite gates, attention pooling, strided
transposed-conv upsampling, recurrent and attention layers, flatten / pooling / profile / dict / tuple heads);
:mod:`fuzz.harness` runs a seed and names its outcome.  Each seed compares every position zeroed (and full saturation for every 4th seed,
edits of several windows, ``multi_edits``, for every 8th) on random one-hot input.  The default run is :data:`fuzz.harness.SEEDS_PER_RUN` seeds (0-1999) in chunks of
:data:`CHUNK`, one test case each; a failing seed prints its architecture and a one-line replay command.

Environment:
  FASTISM_FUZZ_SEED    replay these seeds only (``1234`` or ``1234,1300-1310``) and print each architecture
  FASTISM_FUZZ_START   first seed of the run (default 0);  FASTISM_FUZZ_SEEDS: seeds per run (default 2000)
  FASTISM_FUZZ_REPORT  path: write every seed's outcome as JSON lines
Replay one seed:  FASTISM_FUZZ_SEED=1234 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py
"""
from __future__ import annotations

import json
import os
import time
import warnings

import pytest

import fastism_torch as ft
from fuzz.harness import FAIL_OUTCOMES, REPRO, parse_seeds, planned_seeds, reproducer, run_seed, run_seeds, summary

CHUNK = 250                     # seeds per test case
SEEDS, REPLAY = planned_seeds()
CHUNKS = [SEEDS] if REPLAY else [SEEDS[i:i + CHUNK] for i in range(0, len(SEEDS), CHUNK)]
_RAN: list = []                 # (results, seconds) of the chunks run so far, for the run's summary
if os.environ.get("FUZZ_SECONDS"):
    warnings.warn("FUZZ_SECONDS is no longer read: a fuzz run is a fixed number of seeds (FASTISM_FUZZ_SEEDS)")


def _write_report(results: list, first: bool) -> None:
    path = os.environ.get("FASTISM_FUZZ_REPORT") or os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "w" if first else "a") as fh:
            for r in results:
                fh.write(json.dumps({k: v for k, v in r.items() if k not in ("model", "tb")}, default=str) + "\n")


@pytest.mark.parametrize("seeds", CHUNKS, ids=["replay"] if REPLAY else [f"seeds{c[0]}-{c[-1]}" for c in CHUNKS])
def test_fuzz_fastism_vs_naive(seeds, capsys):
    t0, c0 = time.perf_counter(), time.process_time()
    results = run_seeds(seeds)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    _RAN.append((results, elapsed))
    _write_report(results, seeds is CHUNKS[0])
    fails = [r for r in results if r["outcome"] in FAIL_OUTCOMES]
    done = [r for rs, _ in _RAN for r in rs]
    text = f"fuzz seeds {seeds[0]}..{seeds[-1]}: {len(fails)} failed of {len(results)} in {elapsed:.1f} s " \
           f"({1000 * elapsed / len(results):.0f} ms per seed; CPU time {1000 * cpu / len(results):.0f} ms per seed)"
    if REPLAY or fails:
        text += "\n" + summary(results, elapsed)
    elif seeds is CHUNKS[-1]:
        text += "\n\nthe run so far:\n" + summary(done, sum(t for _, t in _RAN))
    shown = results if REPLAY else fails
    if shown:
        text += "\n\n" + "\n\n".join(reproducer(r, traceback_too=REPLAY) for r in shown[:12])
        if len(shown) > 12:
            text += f"\n\n... {len(shown) - 12} more; all failing seeds: {[r['seed'] for r in fails]}"
    with capsys.disabled():
        print("\n" + text)
    assert not fails, (f"{len(fails)} of {len(results)} seeds failed (wrong answers or internal errors); "
                       f"replay them with " + REPRO.format(seeds=",".join(str(r["seed"]) for r in fails[:20])))


def test_fuzz_flags_a_wrong_answer(monkeypatch):
    """The harness can fail: FastISM made wrong by 1e-4 of the output's scale on its last edit is WRONG, and the
    report names that edit and the replay command."""
    call = ft.FastISM.__call__

    def off_by_a_little(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        first[0, -1] += 1e-4 * float(first.abs().max())
        return out

    monkeypatch.setattr(ft.FastISM, "__call__", off_by_a_little)
    res = next(r for r in map(run_seed, range(1, 40)) if r["outcome"] not in ("unsupported", "flat"))
    assert res["outcome"] == "WRONG", res["detail"]
    assert res["detail"].startswith("[ism, zeroed positions]"), res["detail"]
    assert res["detail"].endswith(f"edit rows (dim 1) differing: [{res['L'] - 1}]"), res["detail"]
    assert f"FASTISM_FUZZ_SEED={res['seed']} " in reproducer(res)


def test_fuzz_seeds_from_the_environment():
    assert parse_seeds("7, 12,100-103") == [7, 12, 100, 101, 102, 103]
    assert planned_seeds({"FASTISM_FUZZ_SEED": "5-6"}) == ([5, 6], True)
    assert planned_seeds({"FASTISM_FUZZ_START": "10", "FASTISM_FUZZ_SEEDS": "3"}) == ([10, 11, 12], False)
    assert len(planned_seeds({})[0]) >= 2000
    with pytest.raises(ValueError, match="'x1'"):
        parse_seeds("x1")


@pytest.mark.parametrize("delta", [False, True])
def test_fused_mean_is_not_read_before_defined(delta):
    """Found by the fuzzer (seeds 365, 988, 1311, 1905 of the default run): a residual whose skip is cropped
    (``x[:, :, 1:-1] + conv(x)``) followed by a squeeze-excite gate (``x * sigmoid(W2 relu(W1 x.mean(-1)))``):
    building the edit graph fails, "Argument 'getitem_2' of Node 'linear' was used before it has been defined".
    Fixed: the sum and the mean are fused into the gather only when every reader of the mean comes after it."""
    from torch import nn

    from fuzz.blocks import SqueezeExcite
    from helpers import assert_close_to_naive, random_onehot, scale_weights

    class CroppedResidualThenGate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2, self.se = nn.Conv1d(4, 2, 3), nn.Conv1d(2, 2, 3), SqueezeExcite(2, 3)

        def forward(self, x):
            x = self.conv(x)
            return self.se(x[:, :, 1:-1] + self.conv2(x))

    model, x = scale_weights(CroppedResidualThenGate()), random_onehot(2, 20)
    fast = ft.FastISM(model, 20, test_correctness=False, delta=delta)
    assert_close_to_naive(fast(x), ft.NaiveISM(model, 20)(x))
