"""The TensorFlow side of ``bench_keras``: the original fastISM and Keras naive ISM, full saturation mutagenesis.

Run in its own process (``TF_USE_LEGACY_KERAS=1``: the original fastISM needs tf-keras); TensorFlow never enters
the benchmark's torch process.  Prints one JSON line of timings and writes the outputs to ``--out`` (npz,
``(N, L, 4, *out)`` per output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def _outs(y):
    import numpy as np
    return [np.asarray(o) for o in (y if isinstance(y, (list, tuple)) else [y])]


def original_fastism(model, seqs):
    import numpy as np
    from fastism import FastISM
    t0 = time.perf_counter()
    ism = FastISM(model, test_correctness=False)
    setup = time.perf_counter() - t0
    C = seqs.shape[2]
    t0 = time.perf_counter()
    # (a list: the original compares replace_with with 0, which fails for numpy arrays)
    per_base = [_outs(ism(seqs, replace_with=np.eye(C)[b].tolist())) for b in range(C)]      # (N, L, *out)
    run = time.perf_counter() - t0
    sat = [np.stack([pb[j] for pb in per_base], 2) for j in range(len(per_base[0]))]
    return sat, setup, run


def keras_naive(model, seqs, batch_size):
    import numpy as np
    N, L, C = seqs.shape
    t0 = time.perf_counter()
    ref = _outs(model.predict_on_batch(seqs))
    sat = [np.broadcast_to(r[:, None, None], (N, L, C) + r.shape[1:]).copy() for r in ref]
    edits = [(n, i, b) for n in range(N) for i in range(L) for b in range(C) if seqs[n, i, b] != 1]
    for lo in range(0, len(edits), batch_size):
        chunk = edits[lo:lo + batch_size]
        x = seqs[[n for n, _, _ in chunk]].copy()
        for j, (n, i, b) in enumerate(chunk):
            x[j, i] = 0
            x[j, i, b] = 1
        for s, o in zip(sat, _outs(model.predict_on_batch(x))):
            for j, (n, i, b) in enumerate(chunk):
                s[n, i, b] = o[j]
    return sat, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--seqs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default="original,naive")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    import numpy as np
    import tensorflow as tf
    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    model = tf.keras.models.load_model(a.model, compile=False)
    seqs = np.load(a.seqs).astype(np.float32)
    res, arrays = {"tf": tf.__version__}, {}
    if "original" in a.methods:
        sat, setup, run = original_fastism(model, seqs)
        res.update(original_setup=setup, original_run=run)
        arrays.update({f"original_{j}": s for j, s in enumerate(sat)})
    if "naive" in a.methods:
        sat, run = keras_naive(model, seqs, a.batch_size)
        res.update(naive_run=run)
        arrays.update({f"naive_{j}": s for j, s in enumerate(sat)})
    np.savez(a.out, **arrays)
    print("KERAS_SIDE " + json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
