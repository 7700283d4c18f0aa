#!/usr/bin/env bash
# The GPU check, in parts that each fit one device command (issue 22):
#
#   bash scripts/gpu_check.sh part1            # GPU tests + the headline table (Basset, BPNet L=1000)
#   bash scripts/gpu_check.sh part2            # precision tiers (error vs float64 naive ISM), cuDNN
#                                              # autotuning, profiles (top kernels)
#   bash scripts/gpu_check.sh part3            # the rest of the table: Factorized Basset, BPNet L=2114,
#                                              # bpnet-lite ChromBPNet L=2114 (when bpnetlite imports)
#   bash scripts/gpu_check.sh --dry-run part1 part2 part3   # the same steps on the CPU, tiny sizes (CI runs it:
#                                              # tests/test_gpu_check.py); also GPU_CHECK_DRY=1
#
# Everything comes back under $OUT (the device machine's only return path; default here: a new temporary
# folder): gpu_check.log (the full log), SUMMARY.txt (each step, its exit status and seconds), RESULTS_gpu.md
# (bench_gpu's sections: machine, commit, command, tables), profile_*.txt, pytest_*.xml.  A failing step does not
# stop the others; the exit status is non-zero if any failed.
#
# Sizing, one H100, from the recorded timings in benchmarks/RESULTS.md (2026-11-26, torch 2.11; the parts'
# steps were timed separately there, never together):
#   part1 ~5 min (the tightest part): GPU tests 82-95 s recorded + ~55 s for the three added in issue 22 (one compiles); Basset
#     n=64: naive eager 2 x 6.8 s per batch size, naive compiled 9 s compile + 2 x 3.5 s, tangermeme ~5 s,
#     FastISM eager ~2 s, compiled 16 s set-up, reduce-overhead 7.5 s; BPNet n=64: naive eager 2 x 4.3 s,
#     compiled 5 + 2 x 2 s, tangermeme ~4 s, FastISM eager ~6 s, compiled 18 s, reduce-overhead 14.5 s; naive
#     at 2 batch sizes (the second compiled shape ~5 s); then 1 sequence on the same engines (no new set-up;
#     tangermeme ~4 s per call): ~25 s.  If it runs over, N_SEQS=32 halves the benchmark's per-call times.
#   part2 ~5 min at most: tiers ~85 s (Basset n=64: naive compiled ~16 s, FastISM compiled x 3 tiers ~17 s
#     each, eager TF32 ~2 s, float64 reference on 1 sequence: not measured yet, estimated < 20 s); BPNet's
#     autotuning rows capped at AUTOTUNE_TIMEOUT (default 100 s: a first call with autotuning was measured at
#     410 s for Factorized Basset at batch 4096); profiles ~90 s (eager Factorized Basset and BPNet with and
#     without autotuning, compiled BPNet, Basset TF32).
#   part3 ~5 min (estimate; BPNet L=2114 and ChromBPNet have never run on a GPU): Factorized Basset n=64 ~110 s
#     (naive eager 2 x 14 s, compiled 11 + 2 x 8 s, FastISM compiled 28-49 s set-up, reduce-overhead 14-16 s).
#
# Environment: PYTHON = an interpreter with CUDA torch and the benchmark dependencies (default: the first of
#   ./.venv/bin/python, python3 that imports torch (and, for a real run, sees a GPU)); no pip install is run.
#   WHEELS = a folder of carried pure-Python wheels (default shared/wheels): unpacked into a temporary folder put
#   on PYTHONPATH, skipping packages the interpreter already has.  N_SEQS (default 64), BENCH_ARGS (more
#   bench_gpu options), AUTOTUNE_TIMEOUT (s).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=${GPU_CHECK_DRY:-0}
PARTS=()
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        part1|part2|part3) PARTS+=("$a") ;;
        all) PARTS+=(part1 part2 part3) ;;
        *) echo "usage: bash scripts/gpu_check.sh [--dry-run] part1|part2|part3|all ... (got '$a')" >&2; exit 2 ;;
    esac
done
if [ ${#PARTS[@]} -eq 0 ]; then
    echo "usage: bash scripts/gpu_check.sh [--dry-run] part1|part2|part3|all ..." >&2
    exit 2
fi

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

# ---------------------------------------------------------------- the interpreter
python_ok() {    # $1 imports torch (and, for a real run, sees a CUDA device)
    [ -n "$1" ] && command -v "$1" >/dev/null 2>&1 || return 1
    if [ "$DRY" = 1 ]; then
        "$1" -c "import torch" >/dev/null 2>&1
    else
        "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
    fi
}
if [ -n "${PYTHON:-}" ]; then
    python_ok "$PYTHON" || { echo "PYTHON=$PYTHON cannot import torch$([ "$DRY" = 1 ] || echo ' or sees no CUDA device')" >&2; exit 2; }
else
    for cand in "$ROOT/.venv/bin/python" python3 python; do
        if python_ok "$cand"; then PYTHON=$cand; break; fi
    done
    [ -n "${PYTHON:-}" ] || { echo "no Python with torch$([ "$DRY" = 1 ] || echo ' and a CUDA device') found: set PYTHON" >&2; exit 2; }
fi

# ---------------------------------------------------------------- carried wheels (no network, no pip)
SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
WHEELS=${WHEELS:-shared/wheels}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    for w in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$w" "$SITE"; done
    "$PYTHON" - "$SITE" <<'EOF'
import importlib.util, os, shutil, sys
site = sys.argv[1]
for name in sorted(os.listdir(site)):
    if name.endswith((".dist-info", ".data")):
        continue
    mod = name[:-3] if name.endswith(".py") else name
    if importlib.util.find_spec(mod) is not None:        # the interpreter's own copy wins
        path = os.path.join(site, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        print(f"carried wheels: {mod} already installed, not used")
EOF
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# what the interpreter has, in one start-up (each costs seconds): the versions, and the optional packages
HAS=$("$PYTHON" - <<'EOF'
import importlib.util, platform, sys, torch
print("torch", torch.__version__, "Python", platform.python_version(), "CUDA",
      torch.cuda.is_available() and torch.cuda.get_device_name(), file=sys.stderr)
print(" ".join(m for m in ("tangermeme", "bpnetlite") if importlib.util.find_spec(m)))
EOF
)
has() { [[ " $HAS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- sizes
if [ "$DRY" = 1 ]; then
    DEV=cpu; L1=40; L2=48; N=2; MODELS_A=tiny; MODELS_B=tiny; BPNET=tiny; ZOO=""
    FAST_BATCH="auto"; NAIVE_BATCH="64,128"; PROF=(--device cpu --lengths 40 --n-seqs 2 --profile 1 --rows 3 --batch-sizes auto)
    COMMON=(--device cpu --threads 1 --f64-seqs 1)
else
    DEV=cuda; L1=1000; L2=2114; N=${N_SEQS:-64}; MODELS_A=basset,bpnet; MODELS_B=factorized_basset; BPNET=bpnet
    ZOO=bpnetlite_chrombpnet
    FAST_BATCH="auto"; NAIVE_BATCH="1024,4096"; PROF=(--device cuda --lengths 1000)
    COMMON=(--device cuda)
fi
TANGERMEME=tangermeme
has tangermeme || { echo "NOTE: tangermeme does not import: its rows are left out (carry its wheels in $WHEELS)"; TANGERMEME=""; }
# the dry run leaves out compilation (tens of seconds per graph on a CPU): the steps, paths and tables are checked
# and runs tangermeme (a few seconds per call on a CPU) in the first step only ("methods LIST light")
methods() {
    local m=$1
    if [ -z "$TANGERMEME" ] || { [ "$DRY" = 1 ] && [ "${2:-}" = light ]; }; then
        m=$(echo "$m" | tr ',' '\n' | grep -v '^tangermeme' | paste -sd, -)
    fi
    [ "$DRY" = 1 ] && m=$(echo "$m" | tr ',' '\n' | grep -v 'compiled\|reduce_overhead' | paste -sd, -)
    echo "$m"
}

FAILED=()
step() {    # step NAME command...: run, log its exit status and duration, go on
    local name=$1; shift
    echo; echo "=== $name: $*"
    local t0=$SECONDS
    "$@"
    local rc=$?
    printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$*" >> "$OUT/SUMMARY.txt"
    [ "$rc" = 0 ] || FAILED+=("$name (rc=$rc)")
}
bench() { "$PYTHON" -m benchmarks.bench_gpu "${COMMON[@]}" --out "$OUT/RESULTS_gpu.md" "$@" ${BENCH_ARGS:-}; }

echo "gpu_check ${PARTS[*]}$([ "$DRY" = 1 ] && echo ' (dry run, CPU)'): PYTHON=$PYTHON, OUT=$OUT, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), optional packages: ${HAS:-none}"

part1() {
    if [ "$DRY" = 1 ]; then
        step part1-gpu-tests "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --co --junitxml="$OUT/pytest_part1.xml"
    else
        step part1-gpu-tests "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/ --junitxml="$OUT/pytest_part1.xml"
    fi
    step part1-headline bench --models "$MODELS_A" --lengths "$L1" --n-seqs "1,$N" --batch-sizes "$FAST_BATCH" \
        --naive-batch-sizes "$NAIVE_BATCH" --f64-seqs 0 \
        --methods "$(methods naive_eager,naive_compiled,tangermeme,fast_eager,fast_compiled,fast_reduce_overhead)"
}

part2() {
    local tiers=naive_compiled,fast_compiled,fast_compiled+tf32,fast_compiled+bf16,fast_eager+tf32
    [ "$DRY" = 1 ] && tiers=naive_eager,fast_eager,fast_eager+tf32,fast_eager+bf16
    step part2-tiers bench --models "${MODELS_A%%,*}" --lengths "$L1" --n-seqs "$N" --batch-sizes "$FAST_BATCH" \
        --naive-batch-sizes "${NAIVE_BATCH%%,*}" --methods "$tiers"
    # BPNet: cuDNN picked its legacy implicit-GEMM kernel for the profile head (profile at d63c328)
    step part2-autotune timeout "${AUTOTUNE_TIMEOUT:-100}" "$PYTHON" -m benchmarks.bench_gpu "${COMMON[@]}" \
        --out "$OUT/RESULTS_gpu.md" --models "$BPNET" --lengths "$L1" --n-seqs "$N" --batch-sizes "$FAST_BATCH" \
        --f64-seqs 0 --methods "$(methods fast_eager,fast_eager+autotune,fast_compiled+autotune)"
    step part2-profile "$PYTHON" -m benchmarks.profile_gpu "${PROF[@]}" --models "$([ "$DRY" = 1 ] && echo tiny || echo factorized_basset,bpnet)" \
        --cudnn-benchmark --out "$OUT/profile_eager.txt"
    if [ "$DRY" != 1 ]; then
        step part2-profile-compiled "$PYTHON" -m benchmarks.profile_gpu "${PROF[@]}" --models "$BPNET" --batch-sizes auto \
            --compile --out "$OUT/profile_compiled.txt"
    fi
    step part2-profile-tf32 "$PYTHON" -m benchmarks.profile_gpu "${PROF[@]}" --models "${MODELS_A%%,*}" --batch-sizes auto \
        --tf32 --out "$OUT/profile_tf32.txt"
}

part3() {
    step part3-headline bench --models "$MODELS_B" --lengths "$L1" --n-seqs "1,$N" --batch-sizes "$FAST_BATCH" \
        --naive-batch-sizes "$NAIVE_BATCH" --f64-seqs 0 \
        --methods "$(methods naive_eager,naive_compiled,tangermeme,fast_eager,fast_compiled,fast_reduce_overhead light)"
    local long=$BPNET
    if [ -n "$ZOO" ] && has bpnetlite; then long="$long,$ZOO"; elif [ -n "$ZOO" ]; then echo "NOTE: bpnetlite does not import: ChromBPNet left out"; fi
    step part3-long bench --models "$long" --lengths "$L2" --n-seqs "$N" --batch-sizes "$FAST_BATCH" \
        --naive-batch-sizes "${NAIVE_BATCH%%,*}" --f64-seqs 0 --methods "$(methods naive_compiled,tangermeme,fast_eager,fast_compiled light)"
}

for p in "${PARTS[@]}"; do
    echo; echo "################ $p"
    "$p"
done
rm -rf "$SITE"
echo
cat "$OUT/SUMMARY.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check ${PARTS[*]}: every step passed; results under $OUT"
