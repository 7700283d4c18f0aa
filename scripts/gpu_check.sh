#!/usr/bin/env bash
# One command for a GPU machine (within 10 minutes on one H100):
#   1. the GPU tests (tests marked `gpu`: CUDA vs CPU naive ISM for eager / compiled / CUDA-graph runs, no host
#      synchronisation in the batch loop, TF32 policy, results on the GPU, the CLI on one GPU);
#   2. benchmarks/bench_gpu.py for Basset, Factorized Basset and BPNet at L=1000 (FastISM eager / compiled /
#      reduce-overhead, naive eager / compiled, tangermeme fast=True), appended to benchmarks/RESULTS.md.
#      Then one sequence per model (FastISM eager, naive eager, tangermeme): the set-up column is what a
#      one-sequence user waits for on top of the run.
#   3. benchmarks/profile_gpu.py: where FastISM eager spends its GPU time (top kernels; batch size and cuDNN
#      autotuning compared) for Factorized Basset and BPNet, and compiled BPNet, printed only (about 1 min).
# Exits non-zero if a test fails, or a benchmark row errs or differs from naive ISM.
# Sizing (2026-11-26, one H100, torch 2.11, from its parts): tests 95 s, bench_gpu ~5 min, the rest ~1.5 min.
# Environment: PYTHON = an interpreter that already has CUDA torch and the test and benchmark dependencies
#   (default: ./.venv, installed as scripts/test.sh does); N_SEQS (default 64); BENCH_ARGS = more bench_gpu options.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    bash scripts/test.sh --co -q >/dev/null
    PYTHON=.venv/bin/python
fi
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
"$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/
"$PYTHON" -m benchmarks.bench_gpu --device cuda --models basset,factorized_basset,bpnet --lengths 1000 \
    --batch-sizes auto --naive-batch-sizes 1024 --n-seqs "${N_SEQS:-64}" ${BENCH_ARGS:-}
"$PYTHON" -m benchmarks.bench_gpu --device cuda --models basset,factorized_basset,bpnet --lengths 1000 \
    --batch-sizes auto --naive-batch-sizes 1024 --n-seqs 1 --methods naive_eager,fast_eager,tangermeme ${BENCH_ARGS:-}
"$PYTHON" -m benchmarks.profile_gpu --models factorized_basset,bpnet --cudnn-benchmark
"$PYTHON" -m benchmarks.profile_gpu --models bpnet --batch-sizes auto --compile       # furthest from its bound
