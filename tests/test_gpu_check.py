"""scripts/gpu_check.sh runs every part in its dry mode (CPU, tiny sizes), so the GPU session's script cannot rot:
its steps, interpreter detection, the files it must leave under $OUT (the device's only return path), and
bench_gpu's tables (headline, precision tiers with their float64 error)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_gpu  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def _run(args, tmp_path, **env):
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    full.pop("GPU_CHECK_DRY", None)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=900, env=full, cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = os.path.getsize(results)
    r = _run(["--dry-run", "part1", "part2", "part3"], tmp)
    return r, tmp / "out", os.path.getsize(results) - before


def test_every_step_of_every_part_passes(dry_run):
    r, out, _ = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (out / "SUMMARY.txt").read_text()
    steps = re.findall(r"^(\S+)\s+rc=(\d+)", summary, re.M)
    assert [s for s, _ in steps] == ["part1-gpu-tests", "part1-headline", "part2-tiers", "part2-autotune", "part2-profile", "part2-profile-tf32", "part3-headline",
                                     "part3-long"]
    assert all(rc == "0" for _, rc in steps)


def test_everything_is_written_under_out_and_nothing_to_results_md(dry_run):
    r, out, grown = dry_run
    assert grown == 0                                     # not appended to the (device copy's) RESULTS.md
    log = (out / "gpu_check.log").read_text()
    assert "every step passed" in log and "dry run, CPU" in log
    for name in ("RESULTS_gpu.md", "profile_eager.txt", "profile_tf32.txt", "pytest_part1.xml"):
        assert (out / name).stat().st_size > 0, name
    prof = (out / "profile_eager.txt").read_text()
    assert "cudnn.benchmark=off" in prof and "cudnn.benchmark=on" in prof and "profiled:" in prof
    assert "eager tf32 batch=auto" in (out / "profile_tf32.txt").read_text()


def test_results_hold_the_headline_and_the_tiers_with_their_error(dry_run):
    _, out, _ = dry_run
    text = (out / "RESULTS_gpu.md").read_text()
    sections = text.split("\n## ")[1:]
    assert len(sections) == 5 and all("- command: `" in s and "- machine:" in s for s in sections)
    assert all("Best batch size per method" in s and "Every configuration:" in s for s in sections)
    headline = sections[0].split("Every configuration:")[0]
    assert re.search(r"\| tiny \| 40 \| 2 \| naive_eager \| (64|128) \|", headline)       # the best of 64, 128
    assert "| tiny | 40 | 1 | fast_eager | auto |" in headline and "engine of the n=2 run" in headline
    tiers = next(s for s in sections if "fast_eager+bf16" in s).split("Every configuration:")[0]
    for method in ("fast_eager", "fast_eager+tf32", "fast_eager+bf16"):
        row = next(line for line in tiers.splitlines() if f"| {method} |" in line).split("|")
        err64 = float(row[-3])                           # "err vs f64" column, measured
        assert 0 < err64 < (0.05 if method.endswith("bf16") else 1e-5), (method, err64)
    assert "ERROR" not in text


def test_usage_and_interpreter_errors(tmp_path):
    r = _run(["part4"], tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = _run(["--dry-run", "part1"], tmp_path, PYTHON=os.path.join(str(tmp_path), "no-python"))
    assert r.returncode == 2 and "cannot import torch" in r.stdout + r.stderr


def test_bench_gpu_writes_under_out_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench_gpu.parse_args([]).out == str(tmp_path / "RESULTS_gpu.md")
    monkeypatch.delenv("OUT")
    assert bench_gpu.parse_args([]).out.endswith(os.path.join("benchmarks", "RESULTS.md"))
    assert bench_gpu.parse_args(["--out", ""]).out == ""


def test_bench_gpu_method_modifiers():
    assert bench_gpu.parse_method("fast_compiled+tf32") == ("fast_compiled", frozenset({"tf32"}))
    assert bench_gpu.parse_method("fast_eager+bf16+autotune") == ("fast_eager", frozenset({"bf16", "autotune"}))
    for bad in ("fast_eager+fp8", "slow_eager", "fast_eager+tf32+bf16"):
        with pytest.raises(ValueError, match="method"):
            bench_gpu.parse_method(bad)


def test_best_rows_counts_tangermemes_set_up():
    from types import SimpleNamespace as NS

    def row(method, batch, per_seq, setup):
        return {"model": "m", "L": 10, "n": 2, "method": method, "base": method, "batch": batch,
                "timing": NS(per_seq=per_seq, per_seq_with_setup=per_seq + setup / 2)}
    rows = [row("tangermeme", 64, 1.0, 10.0), row("tangermeme", 256, 2.0, 1.0),
            row("naive_eager", 64, 3.0, 0.0), row("naive_eager", 256, 2.5, 9.0)]
    best = {r["method"]: r["batch"] for r in bench_gpu.best_rows(rows)}
    assert best == {"tangermeme": 256, "naive_eager": 256}
