"""Keras models through ``fastism_torch.from_keras`` vs the original fastISM vs Keras naive ISM (CPU).

For each of Basset, Factorized Basset and BPNet (``fastism.models``, random weights and BatchNorm statistics)
saved as a Keras 2 ``.h5`` (tf-keras), the same random one-hot sequences get a full saturation mutagenesis
``(N, L, 4, *out)`` from

- ``fastism_torch.from_keras(path)`` (this process; TensorFlow only in its worker subprocess): import time
  cold (tf2onnx export + Keras naive-ISM check) and from the cache, then the first and a steady call;
- the original ``fastism.FastISM`` (TF 2.21 + tf-keras, in a subprocess: :mod:`benchmarks._keras_side`);
- Keras naive ISM (``model.predict_on_batch`` on every mutated sequence, same subprocess).

All outputs are compared (largest difference relative to output scale) and one markdown table is appended to
``--out``::

    python -m benchmarks.bench_keras --n-seqs 1 --length 1000 --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks import common

MODELS = {
    "basset": ("fastism:basset.basset_model", "seqlen"),
    "factorized_basset": ("fastism:factorized_basset.factorized_basset_model", "seqlen"),
    "bpnet": ("fastism:bpnet.bpnet_model", "seqlen"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--n-seqs", type=int, default=1)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--methods", default="fast,original,naive", help="any of fast,original,naive")
    p.add_argument("--threads", type=int, default=None, help="torch and TF intra-op threads (default: theirs)")
    p.add_argument("--work-dir", default=None, help="where models are built (default: a temporary folder)")
    p.add_argument("--out", default=common.DEFAULT_RESULTS, help="markdown file to append to ('' = don't)")
    return p.parse_args(argv)


def build_models(names, length, work):
    from fastism_torch.importers.keras import run_jobs
    paths, jobs = {}, []
    for name in names:
        src, arg = MODELS[name]
        p = os.path.join(work, f"{name}_{length}.h5")
        paths[name] = p
        if not os.path.exists(p):
            jobs.append(["build", "--source", src, "--kwargs", json.dumps({arg: length}), "--out", p])
    for r, j in zip(run_jobs(jobs, legacy=True), jobs):
        if not r["ok"]:
            raise RuntimeError(f"building {j} failed: {r['message']}")
    return paths


def keras_side(path, seqs_path, out, methods, threads):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1",
               PYTHONPATH=os.path.dirname(common.HERE))
    cmd = [sys.executable, "-m", "benchmarks._keras_side", "--model", path, "--seqs", seqs_path, "--out", out,
           "--methods", methods] + (["--threads", str(threads)] if threads else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("KERAS_SIDE ")]
    if r.returncode != 0 or not line:
        raise RuntimeError(f"the Keras side failed:\n{r.stderr[-3000:]}")
    return json.loads(line[0].split(" ", 1)[1]), dict(np.load(out))


def rel_diff(a: list, b: list) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.abs(x - y).max() / (np.abs(y).max() or 1.0)))
    return worst


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import fastism_torch
    names = [m for m in args.models.split(",") if m]
    methods = set(args.methods.split(","))
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_keras_")
    os.makedirs(work, exist_ok=True)
    paths = build_models(names, args.length, work)
    rng = np.random.default_rng(123)
    seqs = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (args.n_seqs, args.length))]
    seqs_path = os.path.join(work, "seqs.npy")
    np.save(seqs_path, seqs)
    n = args.n_seqs
    rows = []
    for name in names:
        r = {"model": name}
        print(f"[{name}]", flush=True)
        if "fast" in methods:
            cache = tempfile.mkdtemp(prefix="cache_", dir=work)
            t0 = time.perf_counter()
            fastism_torch.from_keras(paths[name], cache_dir=cache)                  # export + Keras check
            r["import_cold"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            ism = fastism_torch.from_keras(paths[name], cache_dir=cache)            # from the cache
            r["import_cached"] = time.perf_counter() - t0
            shutil.rmtree(cache, ignore_errors=True)
            _, r["fast_first"] = common.timed(lambda: ism.saturation_mutagenesis(seqs), torch.device("cpu"))
            fast, r["fast_run"] = common.timed(lambda: ism.saturation_mutagenesis(seqs), torch.device("cpu"))
            fast = list(fast) if isinstance(fast, tuple) else [fast]
            print(f"  from_keras: import {r['import_cold']:.1f} s cold, {r['import_cached']:.1f} s cached; "
                  f"saturation {r['fast_run'] / n:.2f} s/seq", flush=True)
        side = ",".join(m for m in ("original", "naive") if m in methods)
        if side:
            res, arrays = keras_side(paths[name], seqs_path, os.path.join(work, f"{name}_keras.npz"), side,
                                     args.threads)
            r.update(res)
            for m in ("original", "naive"):
                r[m] = [arrays[k] for k in sorted(arrays) if k.startswith(m + "_")] or None
            print("  keras side: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.items() if k != "tf"), flush=True)
        ref = r.get("naive") or r.get("original")
        r["diff_fast"] = rel_diff(fast, ref) if "fast" in methods and ref else None
        r["diff_original"] = rel_diff(r["original"], r["naive"]) if r.get("original") and r.get("naive") else None
        rows.append(r)

    def per(r, k):
        return r[k] / n if r.get(k) is not None else None

    def ratio(r, k):
        return r[k] / r["fast_run"] if r.get(k) and r.get("fast_run") else None
    table = common.markdown_table(
        ["model", "L", "seqs", "from_keras import s (cold / cached)", "fastism_torch s/seq", "first call s/seq",
         "original fastISM s/seq", "original set-up s", "Keras naive s/seq", "× original", "× Keras naive",
         "fastism_torch vs Keras naive", "original vs Keras naive"],
        [[r["model"], args.length, n,
          f"{common.fmt(r.get('import_cold'))} / {common.fmt(r.get('import_cached'))}",
          per(r, "fast_run"), per(r, "fast_first"), per(r, "original_run"), r.get("original_setup"),
          per(r, "naive_run"), ratio(r, "original_run"), ratio(r, "naive_run"), r["diff_fast"],
          r["diff_original"]] for r in rows])
    tf_version = next((r["tf"] for r in rows if r.get("tf")), "n/a")
    body = (f"Full saturation mutagenesis (N, L, 4, *out) of `fastism.models` saved as Keras 2 `.h5` (tf-keras, "
            f"random weights and BatchNorm statistics), random one-hot sequences; TensorFlow {tf_version} "
            "(tf-keras) for the original fastISM and Keras naive ISM (`predict_on_batch`, batch 256), each in a "
            "subprocess on the same CPU. fastism_torch s/seq is a steady call (plans built); import cold = "
            "tf2onnx export in the worker + conversion + the Keras naive-ISM check; cached = the second load. "
            "Differences are the largest |a - b| relative to the output scale.\n\n" + table + "\n")
    print(body)
    if args.out:
        common.append_results(args.out, "bench_keras (from_keras vs original fastISM vs Keras naive)",
                              torch.device("cpu"), body)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
