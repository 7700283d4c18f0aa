"""Subprocess worker for :mod:`fastism_torch.importers.keras`: everything that needs TensorFlow.

Run as ``python -m fastism_torch.importers._keras_worker <mode> ...``; never imported by the caller's process
(TensorFlow beside torch's Triton crashes).  Modes:

``export``
    Load a Keras model (Keras 3, or tf-keras when ``TF_USE_LEGACY_KERAS=1``), convert it to ONNX with
    tf2onnx and write ``model.onnx`` plus ``meta.json`` (inputs, outputs, layers with their TF name scopes).
``naive``
    Keras's own naive ISM: run ``model.predict`` on every edit (sequence, window start, replacement) of a
    ``.npz`` file, batched, and write the outputs (plus the reference predictions) to an ``.npz``.
``build``
    Test/benchmark helper: build one of ``fastism.models`` (or a test model from a Python file) with random
    weights and save it.

Failures are reported as one JSON line ``FASTISM_WORKER_ERROR {"kind": ..., "message": ...}`` on stderr and
exit code 2 (the model could not be loaded: the caller may retry with tf-keras) or 3 (anything else).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

EXIT_LOAD = 2
EXIT_OTHER = 3


class WorkerError(Exception):
    def __init__(self, kind: str, message: str, code: int = EXIT_OTHER):
        super().__init__(message)
        self.kind, self.message, self.code = kind, message, code


def _legacy() -> bool:
    return os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True")


def _keras():
    if _legacy():
        import tf_keras as keras
    else:
        import keras
    return keras


def _custom_objects(spec: str | None) -> dict:
    if not spec:
        return {}
    out = {}
    for name, ref in json.loads(spec).items():
        mod, _, attr = ref.partition(":")
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        out[name] = obj
    return out


def load_model(path: str, custom_objects: dict, allow_unsafe: bool):
    keras = _keras()
    try:
        if _legacy():
            # tf-keras applies safe_mode to .keras files only; for .h5 and SavedModel folders its Lambda layers
            # check the same flag in a scope (and the caller has pre-scanned the file for Lambda layers)
            from tf_keras.src.saving.serialization_lib import SafeModeScope
            kw = {"safe_mode": not allow_unsafe} if path.endswith(".keras") else {}
            with SafeModeScope(safe_mode=not allow_unsafe):
                return keras.models.load_model(path, custom_objects=custom_objects, compile=False, **kw)
        if os.path.isdir(path):
            raise WorkerError("load", "Keras 3 cannot load a SavedModel folder as a model", EXIT_LOAD)
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False,
                                       safe_mode=not allow_unsafe)
    except WorkerError:
        raise
    except Exception as e:  # noqa: BLE001 - any loading failure is reported to the caller
        raise WorkerError("load", f"{'tf-keras' if _legacy() else 'Keras 3'} could not load {path}: "
                          f"{type(e).__name__}: {e}", EXIT_LOAD) from e


def _all_layers(model):
    """Every layer, nested models' layers included, in model order (outer layer first)."""
    seen, out = set(), []

    def walk(layer, prefix):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        out.append((layer, prefix))
        for sub in getattr(layer, "layers", []) or []:
            walk(sub, prefix + [layer.name])
    for layer in model.layers:
        walk(layer, [])
    return out


def _unroll_recurrent(model) -> None:
    """Trace recurrent layers (LSTM, GRU, SimpleRNN, inside Bidirectional too) unrolled over the fixed length.

    Traced as a TF while-loop, tf2onnx writes them as ONNX ``Loop`` or ``LSTM``, which onnx2torch cannot convert;
    unrolled they are plain MatMul/Sigmoid/Tanh steps (the fast engine makes them a stop point).  Only the
    export is unrolled: Keras's naive ISM, the check, runs the layers as saved."""
    for layer, _ in _all_layers(model):
        for cand in (layer, getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None),
                     getattr(layer, "layer", None)):
            if cand is not None and hasattr(cand, "unroll"):
                cand.unroll = True
                if hasattr(cand, "_could_use_gpu_kernel"):      # tf-keras decides this in __init__
                    cand._could_use_gpu_kernel = False


@contextlib.contextmanager
def _plain_grouped_conv():
    """Keras 3 runs grouped convolutions (``Conv1D(groups > 1)``) on CPU inside a jit-compiled ``tf.function``,
    which tf2onnx cannot look into (an unconvertible ``StatefulPartitionedCall``).  While tracing, call the
    ``tf.nn.convolution`` it wraps directly: the same operation, which tf2onnx writes as a grouped ``Conv``."""
    if _legacy():
        yield
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as tf_nn
    orig = tf_nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        fmt = tf_nn._convert_data_format(data_format, len(inputs.shape))
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), data_format=fmt, dilations=dilation_rate)
    tf_nn.conv = conv
    try:
        yield
    finally:
        tf_nn.conv = orig


def _shape(s):
    return [None if d is None else int(d) for d in s]


def _input_specs(model, seq_len, tf) -> tuple[list[dict], list]:
    """The model's inputs (``{"name", "shape"}``, a free length set to ``seq_len``) and their ``TensorSpec``s."""
    inputs = [{"name": getattr(t, "name", f"input_{i}"), "shape": _shape(t.shape)} for i, t in
              enumerate(model.inputs)]
    specs = []
    for i, inp in enumerate(inputs):
        shape = list(inp["shape"])
        if len(shape) == 3 and shape[1] is None:
            if seq_len is None:
                raise WorkerError("shape", f"input {inp['name']!r} has no fixed length {shape}; pass seq_len")
            shape[1] = seq_len
        if any(d is None for d in shape[1:]):
            raise WorkerError("shape", f"input {inp['name']!r} has an unknown non-batch dimension {shape}")
        inp["shape"] = [None] + shape[1:]
        specs.append(tf.TensorSpec([None] + shape[1:], tf.float32, name=f"input_{i}"))
    return inputs, specs


@contextlib.contextmanager
def _recording_scopes(layers, tf):
    """Record each layer's TF name scope while tracing (``{id(layer): [scope, ...]}``), so ONNX nodes can be
    mapped back to Keras layers; the layers' ``call`` is restored afterwards."""
    scopes: dict = {}
    for layer, _ in layers:
        orig = layer.call

        def wrapped(*a, __orig=orig, __layer=layer, **kw):
            try:
                scopes.setdefault(id(__layer), []).append(tf.get_current_name_scope())
            except Exception:  # noqa: BLE001
                pass
            return __orig(*a, **kw)
        try:
            object.__setattr__(layer, "call", wrapped)
        except Exception:  # noqa: BLE001 - scopes are best effort
            pass
    try:
        yield scopes
    finally:
        for layer, _ in layers:
            try:
                object.__delattr__(layer, "call")
            except Exception:  # noqa: BLE001
                pass


def export(args) -> None:
    import tensorflow as tf
    import tf2onnx

    model = load_model(args.model, _custom_objects(args.custom_objects), args.allow_unsafe)
    _unroll_recurrent(model)
    inputs, specs = _input_specs(model, args.seq_len, tf)
    layers = _all_layers(model)
    multi_in = len(model.inputs) > 1

    @tf.function(input_signature=specs)
    def fn(*xs):
        out = model(list(xs) if multi_in else xs[0], training=False)
        if isinstance(out, dict):
            out = [out[k] for k in out]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    with _recording_scopes(layers, tf) as scopes, _plain_grouped_conv():
        concrete = fn.get_concrete_function()
    names = list(getattr(model, "output_names", None) or [])
    outputs = [{"name": str(names[i]) if i < len(names) else f"output_{i}", "shape": _shape(t.shape)}
               for i, t in enumerate(concrete.outputs)]
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=args.opset,
                                      output_path=os.path.join(args.out_dir, "model.onnx"))
    except Exception as e:  # noqa: BLE001
        raise WorkerError("convert", f"tf2onnx could not convert the model: {type(e).__name__}: {e}") from e
    meta = {
        "keras": "tf-keras" if _legacy() else "keras3",
        "model_name": model.name,
        "inputs": inputs,
        "outputs": outputs,
        "layers": [{"name": layer.name, "class": type(layer).__name__, "parents": parents,
                    "is_model": bool(getattr(layer, "layers", None)),
                    "scopes": scopes.get(id(layer), [])} for layer, parents in layers],
    }
    with open(os.path.join(args.out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def naive(args) -> None:
    import numpy as np

    model = load_model(args.model, _custom_objects(args.custom_objects), args.allow_unsafe)
    data = np.load(args.inputs)
    n_in = int(data["n_inputs"])
    xs = [data[f"input_{i}"].astype(np.float32) for i in range(n_in)]
    s_idx, starts, values = data["s_idx"], data["starts"], data["values"].astype(np.float32)
    k = args.seq_input_idx
    width = values.shape[1]
    bs = args.batch_size

    def run(inputs):
        out = model.predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
        if isinstance(out, dict):
            out = [out[k_] for k_ in out]
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    ref = [run([x[i:i + bs] for x in xs]) for i in range(0, len(xs[0]), bs)]
    ref = [np.concatenate(p) for p in zip(*ref)]
    parts = []
    for lo in range(0, len(s_idx), bs):
        idx = s_idx[lo:lo + bs]
        batch = [x[idx].copy() for x in xs]
        for j, (st, v) in enumerate(zip(starts[lo:lo + bs], values[lo:lo + bs])):
            batch[k][j, st:st + width] = v
        parts.append(run(batch))
    outs = [np.concatenate(p) for p in zip(*parts)] if parts else [r[:0] for r in ref]
    np.savez(args.out, n_outputs=len(outs), **{f"out_{i}": o for i, o in enumerate(outs)},
             **{f"ref_{i}": r for i, r in enumerate(ref)})


def build(args) -> None:
    """Build a model with random weights (and random BatchNorm statistics) and save it to ``args.out``."""
    import numpy as np

    _keras()          # picks Keras 3 or tf-keras before the model code imports it
    kw = json.loads(args.kwargs or "{}")
    if args.source.startswith("fastism:"):
        # fastism.models.<mod>.<fn>, loaded from its file (fastism/__init__ imports pydot).
        import importlib.util
        spec = importlib.util.find_spec("fastism")
        if spec is None:
            raise WorkerError("build", "the `fastism` package is not installed")
        mod_name, fn_name = args.source.split(":", 1)[1].split(".")
        path = os.path.join(os.path.dirname(spec.origin), "models", mod_name + ".py")
        fn = getattr(_load_file(path), fn_name)
    else:
        path, _, fn_name = args.source.partition(":")
        fn = getattr(_load_file(path), fn_name)
    model = fn(**kw)
    rng = np.random.default_rng(args.seed)
    for layer in _flat(model):
        cls = type(layer).__name__
        ws = layer.get_weights()
        if not ws:
            continue
        if cls == "BatchNormalization":
            new = []
            names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
            for name, w in zip(names, ws):
                if "gamma" in name:
                    new.append(rng.uniform(0.5, 1.5, w.shape))
                elif "beta" in name:
                    new.append(rng.normal(0, 0.1, w.shape))
                elif "mean" in name:
                    new.append(rng.normal(0, 0.2, w.shape))
                else:
                    new.append(rng.uniform(0.5, 1.5, w.shape))
            layer.set_weights([n.astype(np.float32) for n in new])
        else:
            new = []
            for w in ws:
                if w.ndim >= 2:
                    fan_in = int(np.prod(w.shape[:-1]))
                    if "Transpose" in cls:
                        fan_in = int(np.prod(w.shape[:-2])) * w.shape[-1]
                    new.append(rng.normal(0, (2.0 / fan_in) ** 0.5, w.shape))
                else:
                    new.append(rng.normal(0, 0.1, w.shape))
            layer.set_weights([n.astype(np.float32) for n in new])
    model.save(args.out)
    print(json.dumps({"saved": args.out, "keras": "tf-keras" if _legacy() else "keras3"}))


def _flat(model):
    for layer in model.layers:
        if getattr(layer, "layers", None):
            yield from _flat(layer)
        else:
            yield layer


def _load_file(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_fastism_build_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batch(args) -> None:
    """Run several jobs (each a list of command-line arguments) in this one process: TensorFlow is imported
    once.  Writes ``[{"ok": bool, "code": int, "kind": str, "message": str}, ...]`` to ``args.results``."""
    with open(args.jobs) as f:
        jobs = json.load(f)
    results = []
    for job in jobs:
        try:
            sub = _parser().parse_args(job)
            _MODES[sub.mode](sub)
            results.append({"ok": True})
        except WorkerError as e:
            results.append({"ok": False, "code": e.code, "kind": e.kind, "message": e.message})
        except Exception as e:  # noqa: BLE001
            results.append({"ok": False, "code": EXIT_OTHER, "kind": "error",
                            "message": f"{type(e).__name__}: {e}"})
    with open(args.results, "w") as f:
        json.dump(results, f)


_MODES = {"export": export, "naive": naive, "build": build, "batch": batch}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastism_torch.importers._keras_worker")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("export", "naive"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--custom-objects", default=None, help="JSON {name: 'module:qualname'}")
        s.add_argument("--allow-unsafe", action="store_true")
    e = sub.choices["export"]
    e.add_argument("--out-dir", required=True)
    e.add_argument("--seq-len", type=int, default=None)
    e.add_argument("--opset", type=int, default=17)
    n = sub.choices["naive"]
    n.add_argument("--inputs", required=True, help=".npz with n_inputs, input_<i>, s_idx, starts, values")
    n.add_argument("--seq-input-idx", type=int, default=0)
    n.add_argument("--batch-size", type=int, default=256)
    n.add_argument("--out", required=True)
    b = sub.add_parser("build")
    b.add_argument("--source", required=True, help="fastism:<module>.<function> or <file.py>:<function>")
    b.add_argument("--kwargs", default=None, help="JSON keyword arguments")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    j = sub.add_parser("batch")
    j.add_argument("--jobs", required=True, help="JSON list of argument lists")
    j.add_argument("--results", required=True)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        _MODES[args.mode](args)
    except WorkerError as e:
        print("FASTISM_WORKER_ERROR " + json.dumps({"kind": e.kind, "message": e.message}), file=sys.stderr)
        return e.code
    except Exception as e:  # noqa: BLE001 - reported to the caller as one line
        traceback.print_exc()
        print("FASTISM_WORKER_ERROR " + json.dumps({"kind": "error", "message": f"{type(e).__name__}: {e}"}),
              file=sys.stderr)
        return EXIT_OTHER
    return 0


if __name__ == "__main__":
    sys.exit(main())
