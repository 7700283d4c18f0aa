"""The benchmark scripts run end to end on tiny settings and write their markdown (no timing asserted)."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_cpu, bench_gpu, profile_gpu  # noqa: E402
from benchmarks.common import random_seqs as common_seqs  # noqa: E402

import fastism_torch as ft  # noqa: E402

HAS_TANGERMEME = importlib.util.find_spec("tangermeme") is not None


def test_bench_cpu_tiny(tmp_path):
    out = tmp_path / "RESULTS.md"
    methods = "fast,naive,tangermeme" if HAS_TANGERMEME else "fast,naive"
    res = bench_cpu.main(["--models", "tiny", "--n-seqs", "1", "--length", "40,48", "--threads", "1",
                          "--methods", methods, "--profile", "--out", str(out)])
    assert [(r["L"], r["threads"]) for r in res] == [(40, 1), (48, 1)]
    assert all(r["diff_fast"] < 1e-4 for r in res)
    text = out.read_text()
    assert "| tiny | 40 | 1 |" in text and "torch " in text and "command:" in text and "machine:" in text
    assert "torch.profiler" in text and "(measured)" not in text          # 3 x 48 edits: too few to tune


def test_bench_cpu_reports_the_median_round():
    from types import SimpleNamespace as NS
    rounds = [{"fast": NS(per_seq=1.0), "naive": NS(per_seq=x), "tag": x} for x in (5.0, 3.0, 4.0, 6.0)]
    res = bench_cpu.median_round(rounds)
    assert res["tag"] == 4.0 and res["rounds"] == [5.0, 3.0, 4.0, 6.0]      # lower middle of 3, 4, 5, 6
    assert bench_cpu.median_round(rounds[:1]) is rounds[0]


@pytest.mark.parametrize("methods", ["fast_eager,naive_eager"])
def test_bench_gpu_tiny_on_cpu(tmp_path, methods):
    out = tmp_path / "RESULTS.md"
    rows = bench_gpu.main(["--device", "cpu", "--models", "tiny", "--lengths", "40", "--batch-sizes", "auto,32",
                           "--n-seqs", "1", "--methods", methods, "--out", str(out)])
    assert {r["method"] for r in rows} == set(methods.split(","))
    assert all("timing" in r for r in rows), [r.get("error") for r in rows]
    assert all(r["diff"] is not None and r["diff"] < 1e-4 for r in rows)
    assert "| tiny | 40 | fast_eager | auto |" in out.read_text()


def test_profile_gpu_tiny_on_cpu():
    lines = profile_gpu.main(["--device", "cpu", "--models", "tiny", "--lengths", "40", "--batch-sizes", "auto,32",
                              "--n-seqs", "2", "--profile", "1", "--rows", "3"])
    heads = [s for s in lines if s.startswith("tiny L=40")]
    assert [h.split(":")[0] for h in heads] == ["tiny L=40 eager batch=auto cudnn.benchmark=off",
                                                 "tiny L=40 eager batch=32 cudnn.benchmark=off"], lines
    assert not any("ERROR" in s for s in lines) and "batch 32" in heads[1]
    assert sum("profiled:" in s for s in lines) == 2 and sum(s.strip() == "host:" for s in lines) == 2


@pytest.mark.skipif(not HAS_TANGERMEME, reason="needs tangermeme")
def test_bench_compat_tiny(tmp_path):
    from benchmarks import bench_compat
    out = tmp_path / "RESULTS.md"
    rows = bench_compat.main(["--models", "tiny", "--length", "40", "--n-seqs", "1,3", "--threads", "1",
                              "--out", str(out)])
    assert [r["n"] for r in rows] == [1, 3] and all(r["diff"] < 1e-4 for r in rows)
    assert all("fast=False path" in r["note"] for r in rows)          # under tangermeme's 30 s threshold
    text = out.read_text()
    assert "| tiny | 40 | 3 |" in text and "command:" in text and "noisy" in text


@pytest.mark.slow            # three child processes (each imports torch and enformer-pytorch): about a minute
def test_bench_long_tiny(tmp_path):
    pytest.importorskip("enformer_pytorch")
    from benchmarks import bench_long
    out = tmp_path / "RESULTS.md"
    res, diff = bench_long.main(["--length", "2048", "--dim", "48", "--depth", "1", "--heads", "2", "--tracks", "4",
                                 "--windows", "2", "--width", "8", "--threads", "1", "--out", str(out)])
    assert "error" not in res["fast"] and "error" not in res["naive"], res
    assert diff is not None and diff < 1e-4
    assert res["fast"]["stops"] and all("einsum" in s for s in res["fast"]["stops"])   # the conv tower is windowed
    text = out.read_text()
    assert "FastISM x naive:" in text and "| FastISM |" in text and "machine:" in text and "commit" in text


def test_bench_dilated_delta_tiny(tmp_path):
    """The tap-clipped and batch-last prototypes compute the same windows as FastISM's delta path (they skip
    only products whose outputs land outside the window), and execute fewer multiply-adds than recomputing."""
    from benchmarks import bench_dilated_delta
    rows = bench_dilated_delta.run(200, [4, 32], threads=1)
    assert [r[1] for r in rows] == [4, 32]
    assert all(float(r[-1]) < 1e-4 for r in rows)
    assert all(0 < r[8] < 1 and r[9] > 0 for r in rows)


@pytest.mark.parametrize("scenario,edits", [("snps", 40), ("scan", 24)])
def test_bench_multi_tiny(tmp_path, scenario, edits):
    from benchmarks import bench_multi
    out = tmp_path / "RESULTS.md"
    rows = bench_multi.main(["--models", "tiny", "--length", "60", "--edits", "40", "--max-distance", "20",
                             "--scenario", scenario, "--threads", "1", "--repeat", "1", "--naive-batch", "16",
                             "--out", str(out)])
    assert len(rows) == 1 and float(rows[0][-1]) < 1e-4          # every method agrees with the naive loop
    assert f"| tiny | 60 | {edits} | 16 |" in out.read_text()


@pytest.mark.skipif(not HAS_TANGERMEME, reason="needs tangermeme")
def test_bench_pairwise_tiny_and_its_exact_work_bound(tmp_path, monkeypatch):
    """The pairwise and dependency-map tables on a tiny model; the exact-work bound lies between the reference
    passes alone and those plus every double mutant as a full fast single edit, and the naive rate it is timed at
    is naive ISM's: one full pass per edit of the window call."""
    from benchmarks import bench_pairwise
    out = tmp_path / "RESULTS.md"
    rows, drows = bench_pairwise.main(["--models", "tiny", "--length", "40", "--widths", "4", "--dmap-width", "2",
                                       "--threads", "1", "--naive-batch", "16", "--out", str(out)])
    assert len(rows) == 1 and len(drows) == 1 and float(drows[0][-1]) < 1e-4
    assert "exact-work bound" in out.read_text()
    model = bench_pairwise.make_model("tiny", 40).eval()
    bound, full = bench_pairwise.exact_work_macs(model, 40, 19, 21)
    fast = ft.FastISM(model, 40, test_correctness=False).mac_summary()["fast_macs_per_mutation"]
    assert 7 * full < bound <= 7 * full + 9 * 2 * 39 * fast
    calls = []
    real = ft.NaiveISM._run_edits
    monkeypatch.setattr(ft.NaiveISM, "_run_edits", lambda self, inp, ranges, edits, *a:
                        calls.append(len(edits.seq)) or real(self, inp, ranges, edits, *a))
    monkeypatch.setattr(bench_pairwise.common, "timed", lambda fn, device: (fn(), 2.0))     # 2 s per call
    rate = bench_pairwise.naive_macs_per_s(model, common_seqs(1, 40), full, n_positions=8)
    assert calls[-1] == 8 and rate == 8 * full / 2.0      # the edits the timed call ran, one full pass each
