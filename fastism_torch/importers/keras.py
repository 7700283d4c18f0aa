"""Keras models (``.h5`` from Keras 2/3, ``.keras``, SavedModel folders, ``keras.Model`` objects) -> FastISM.

TensorFlow never enters this process: the Keras -> ONNX export (tf2onnx) and Keras's own naive ISM run in a
subprocess (:mod:`._keras_worker`).  Keras 3 is tried first; a file Keras 3 cannot load (a Keras 2 ``.h5``, a
SavedModel folder) is retried with tf-keras (``TF_USE_LEGACY_KERAS=1``).  The ONNX file, its sidecar
``meta.json`` and Keras's naive-ISM check results are cached on disk, keyed by the model file's content hash
and the options, under ``cache_dir``, ``$FASTISM_TORCH_CACHE`` or ``~/.cache/fastism_torch``.

``early_stop_layers`` may name Keras layers: each is mapped to the fx nodes converted from that layer's
TensorFlow name scope (recorded by the worker while tracing).  Layers the fast engine has no rule for
(custom layers, RNNs, attention, ...) become stop points with a warning naming the Keras layer.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .onnx import UnsupportedOnnxOps, onnx_to_torch, sequence_input

__all__ = ["from_keras", "keras_naive_ism", "export_keras", "KerasExport"]

_WORKER = "fastism_torch.importers._keras_worker"
_FORMAT_VERSION = "2"           # bump when the worker's output changes (invalidates caches)
_UNSAFE_LAYERS = {"Lambda"}

# Keras layer classes the fast engine handles after conversion (anything else becomes a stop point).
SUPPORTED_LAYERS = {
    "InputLayer", "Functional", "Sequential", "Model",
    "Conv1D", "Conv2D", "Convolution1D", "Conv1DTranspose", "Conv2DTranspose", "SeparableConv1D",
    "DepthwiseConv1D", "Dense", "EinsumDense",
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization",
    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D",
    "Flatten", "Reshape", "Permute", "Cropping1D", "ZeroPadding1D", "RepeatVector",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "TFOpLambda", "SlicingOpLambda", "Lambda",
}


class KerasExport:
    """A converted Keras model: the ONNX file, its metadata and how it was loaded."""

    def __init__(self, model_path: str, onnx_path: str, meta: dict, key: str, cache_dir: str, env: dict,
                 custom_objects: dict, allow_unsafe: bool):
        self.model_path, self.onnx_path, self.meta, self.key = model_path, onnx_path, meta, key
        self.cache_dir, self.env, self.custom_objects, self.allow_unsafe = cache_dir, env, custom_objects, allow_unsafe

    @property
    def input_specs(self) -> list[tuple[str, list]]:
        return [(i["name"], i["shape"]) for i in self.meta["inputs"]]


# --------------------------------------------------------------------------- input checks (no TensorFlow)
def _keras_config(path: Path) -> dict | None:
    """The model's JSON config without TensorFlow (``None`` for SavedModel folders)."""
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ValueError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
        return None
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        import h5py
        try:
            with h5py.File(path, "r") as h5:
                cfg = h5.attrs.get("model_config")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not a readable HDF5 file ({type(e).__name__}: {e})") from e
        if cfg is None:
            raise ValueError(f"{path} is an HDF5 file without a Keras model config (a weights-only file?); "
                             "save the whole model with model.save(...)")
        return json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not a readable .keras archive ({type(e).__name__}: {e})") from e
    raise ValueError(f"{path} is not a Keras model file (.h5, .keras or a SavedModel folder)")


def _layer_configs(cfg):
    """Every (class_name, layer name) in a Keras config, nested models included."""
    if isinstance(cfg, dict):
        if "class_name" in cfg and isinstance(cfg.get("config"), dict):
            yield cfg["class_name"], cfg["config"].get("name", "?")
        for v in cfg.values():
            yield from _layer_configs(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _layer_configs(v)


def _check_unsafe(cfg, allow_unsafe: bool) -> None:
    if cfg is None or allow_unsafe:
        return
    bad = sorted({name for cls, name in _layer_configs(cfg) if cls in _UNSAFE_LAYERS})
    if bad:
        raise ValueError(f"the model has Lambda layer(s) {bad}: loading them runs code stored in the file. "
                         "Pass allow_unsafe=True if you trust this file.")


def _content_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _cache_root(cache_dir) -> Path:
    root = cache_dir or os.environ.get("FASTISM_TORCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastism_torch")
    return Path(root)


def _custom_object_refs(custom_objects) -> dict:
    refs = {}
    for name, obj in (custom_objects or {}).items():
        if isinstance(obj, str):
            refs[name] = obj
            continue
        mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not mod or not qual or mod == "__main__" or "<locals>" in qual:
            raise ValueError(f"custom object {name!r} ({obj!r}) must be defined at the top level of an importable "
                             "module (the model is loaded in a subprocess); or pass 'module:qualname'")
        refs[name] = f"{mod}:{qual}"
    return refs


# --------------------------------------------------------------------------- subprocess
def _worker_env(legacy: bool) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    # make this package importable by the worker even when it is not installed
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerFailed(RuntimeError):
    def __init__(self, code: int, kind: str, message: str):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


def _run_worker(args: list[str], env: dict, timeout: float | None = None) -> str:
    try:
        proc = subprocess.run([sys.executable, "-m", _WORKER, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise WorkerFailed(-1, "timeout", f"the Keras worker timed out after {timeout} s") from e
    if proc.returncode != 0:
        kind, msg = "error", None
        for line in proc.stderr.splitlines()[::-1]:
            if line.startswith("FASTISM_WORKER_ERROR "):
                d = json.loads(line.split(" ", 1)[1])
                kind, msg = d["kind"], d["message"]
                break
        if msg is None:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            if "No module named" in proc.stderr and ("tensorflow" in proc.stderr or "keras" in proc.stderr
                                                      or "tf2onnx" in proc.stderr):
                msg = ("TensorFlow/Keras/tf2onnx are not installed for this Python; install the `keras` extra: "
                       "pip install 'fastism-torch[keras]'\n" + tail)
            else:
                msg = f"the Keras worker exited with status {proc.returncode}:\n{tail}"
        raise WorkerFailed(proc.returncode, kind, msg)
    return proc.stdout


def run_jobs(jobs: list[list[str]], legacy: bool, timeout: float | None = None) -> list[dict]:
    """Run worker jobs (argument lists) in one subprocess; one result dict per job."""
    if not jobs:
        return []
    with tempfile.TemporaryDirectory(prefix="fastism_torch_jobs_") as d:
        jf, rf = os.path.join(d, "jobs.json"), os.path.join(d, "results.json")
        with open(jf, "w") as f:
            json.dump(jobs, f)
        _run_worker(["batch", "--jobs", jf, "--results", rf], _worker_env(legacy), timeout)
        with open(rf) as f:
            return json.load(f)


def export_keras(model_or_path, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
                 seq_len: int | None = None, opset: int = 17) -> KerasExport:
    """Convert a Keras model to ONNX in a subprocess (cached). Returns a :class:`KerasExport`."""
    res = export_keras_many([model_or_path], custom_objects=custom_objects, allow_unsafe=allow_unsafe,
                            cache_dir=cache_dir, seq_len=seq_len, opset=opset)[0]
    if isinstance(res, Exception):
        raise res
    return res


def export_keras_many(models, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
                      seq_len: int | None = None, opset: int = 17) -> list:
    """:func:`export_keras` for several models with one TensorFlow start-up (two if some need tf-keras).

    Returns one :class:`KerasExport` or exception (``ValueError``, ``FileNotFoundError``) per model.
    """
    refs = _custom_object_refs(custom_objects)
    root = _cache_root(cache_dir)
    results: list = [None] * len(models)
    todo = []                                        # (i, path, key, entry, base args)
    tmps = []
    try:
        for i, m in enumerate(models):
            try:
                path, tmp = _as_path(m)
                if tmp:
                    tmps.append(tmp)
                cfg = _keras_config(path)
                _check_unsafe(cfg, allow_unsafe)
            except (ValueError, FileNotFoundError, OSError) as e:
                results[i] = e
                continue
            opts = json.dumps([_FORMAT_VERSION, seq_len, opset, bool(allow_unsafe), sorted(refs.items())])
            key = hashlib.sha256((_content_hash(path) + opts).encode()).hexdigest()[:24]
            entry = root / key
            base = ["--model", str(path)] + (["--custom-objects", json.dumps(refs)] if refs else []) + (
                ["--allow-unsafe"] if allow_unsafe else [])
            if not (entry / "meta.json").exists():
                todo.append((i, path, key, entry, base))
            results[i] = (path, key, entry, base)
        errors: dict = {}
        pending = todo
        for legacy in (False, True):
            if not pending:
                break
            root.mkdir(parents=True, exist_ok=True)
            works = [Path(tempfile.mkdtemp(prefix=key + ".", dir=root)) for _, _, key, _, _ in pending]
            jobs = [["export", *base, "--out-dir", str(w), "--opset", str(opset)] +
                    (["--seq-len", str(seq_len)] if seq_len else []) for (_, _, _, _, base), w in zip(pending, works)]
            try:
                outs = run_jobs(jobs, legacy)
            except WorkerFailed as e:
                outs = [{"ok": False, "code": 3, "kind": e.kind, "message": e.message}] * len(jobs)
            retry = []
            for job, w, out in zip(pending, works, outs):
                i, path, key, entry, base = job
                if out["ok"]:
                    meta = json.loads((w / "meta.json").read_text())
                    meta["legacy"] = legacy
                    (w / "meta.json").write_text(json.dumps(meta, indent=1))
                    try:
                        os.replace(w, entry)
                    except OSError:          # another process won the race
                        shutil.rmtree(w, ignore_errors=True)
                    continue
                shutil.rmtree(w, ignore_errors=True)
                errors.setdefault(i, []).append(out["message"])
                if out["code"] == 2:         # Keras 3 could not load it: try tf-keras
                    retry.append(job)
            pending = retry
        for i, r in enumerate(results):
            if isinstance(r, tuple):
                path, key, entry, base = r
                if not (entry / "meta.json").exists():
                    msgs = "\n".join(f"- {m}" for m in errors.get(i, ["unknown error"]))
                    results[i] = ValueError(f"could not convert the Keras model {path}:\n{msgs}")
                    continue
                meta = json.loads((entry / "meta.json").read_text())
                if any(str(path).startswith(t) for t in tmps):      # in-memory model: keep its file
                    kept = entry / path.name
                    if not kept.exists():
                        shutil.copy(path, kept)
                    path = kept
                results[i] = KerasExport(str(path), str(entry / "model.onnx"), meta, key, str(entry),
                                         _worker_env(meta.get("legacy", False)), refs, allow_unsafe)
        return results
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)


def _as_path(model_or_path):
    """A path for a file/folder argument, or a temporary file holding an in-memory keras.Model."""
    if isinstance(model_or_path, (str, os.PathLike)):
        p = Path(model_or_path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"no such Keras model file: {p}")
        return p, None
    if hasattr(model_or_path, "save") and hasattr(model_or_path, "layers"):
        legacy = type(model_or_path).__module__.startswith("tf_keras") or (
            "keras.src" not in type(model_or_path).__module__ and
            os.environ.get("TF_USE_LEGACY_KERAS") == "1")
        tmp = tempfile.mkdtemp(prefix="fastism_torch_keras_")
        p = Path(tmp) / ("model.h5" if legacy else "model.keras")
        model_or_path.save(str(p))
        return p, tmp
    raise ValueError(f"expected a path to a Keras model or a keras.Model; got {type(model_or_path).__name__}")


# --------------------------------------------------------------------------- Keras naive ISM
def keras_naive_ism(export: KerasExport, inputs: list[np.ndarray], seq_input_idx: int, s_idx, starts, values,
                    batch_size: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keras's own naive ISM, in the worker: outputs ``(E, *out)`` for edit ``e`` (sequence ``s_idx[e]`` with
    ``values[e]`` (``(width, C)``) written from position ``starts[e]``), and the reference outputs ``(N, *out)``.
    Results are cached next to the converted model."""
    res = keras_naive_ism_many([(export, inputs, seq_input_idx, s_idx, starts, values)], batch_size)[0]
    if isinstance(res, Exception):
        raise res
    return res


def keras_naive_ism_many(requests, batch_size: int = 256) -> list:
    """:func:`keras_naive_ism` for several ``(export, inputs, seq_input_idx, s_idx, starts, values)`` requests,
    one subprocess per Keras flavour. Returns ``(outputs, references)`` or a ``ValueError`` per request."""
    results: list = [None] * len(requests)
    groups: dict = {}
    with tempfile.TemporaryDirectory(prefix="fastism_torch_naive_") as d:
        for i, (export, inputs, seq_input_idx, s_idx, starts, values) in enumerate(requests):
            arrays = {"n_inputs": np.array(len(inputs)),
                      **{f"input_{k}": np.asarray(x, np.float32) for k, x in enumerate(inputs)},
                      "s_idx": np.asarray(s_idx, np.int64), "starts": np.asarray(starts, np.int64),
                      "values": np.asarray(values, np.float32)}
            h = hashlib.sha256(export.key.encode() + str(seq_input_idx).encode())
            for k in sorted(arrays):
                h.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
            cached = Path(export.cache_dir) / f"naive_{h.hexdigest()[:20]}.npz"
            if cached.exists():
                results[i] = _read_naive(cached)
                continue
            inp = os.path.join(d, f"in_{i}.npz")
            np.savez(inp, **arrays)
            args = ["naive", "--model", export.model_path, "--inputs", inp, "--out", str(cached) + ".tmp.npz",
                    "--seq-input-idx", str(seq_input_idx), "--batch-size", str(batch_size)]
            if export.custom_objects:
                args += ["--custom-objects", json.dumps(export.custom_objects)]
            if export.allow_unsafe:
                args.append("--allow-unsafe")
            groups.setdefault(bool(export.meta.get("legacy")), []).append((i, args, cached))
        for legacy, items in groups.items():
            try:
                outs = run_jobs([a for _, a, _ in items], legacy)
            except WorkerFailed as e:
                outs = [{"ok": False, "message": e.message}] * len(items)
            for (i, args, cached), out in zip(items, outs):
                if not out["ok"]:
                    results[i] = ValueError(f"Keras naive ISM failed: {out['message']}")
                    continue
                if os.path.exists(str(cached) + ".tmp.npz"):        # (absent: a duplicate request)
                    os.replace(str(cached) + ".tmp.npz", cached)
                results[i] = _read_naive(cached)
    return results


def _read_naive(path):
    with np.load(path) as z:
        n = int(z["n_outputs"])
        return [z[f"out_{i}"] for i in range(n)], [z[f"ref_{i}"] for i in range(n)]


# --------------------------------------------------------------------------- public API
def _layer_nodes(gm, meta) -> dict[str, list[str]]:
    """Keras layer name -> fx node names converted from that layer's TF name scope(s)."""
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    out = {}
    for layer in meta["layers"]:
        scopes = [s for s in layer.get("scopes", []) if s]
        hits = [n.name for n in nodes if any(str(n.meta.get("onnx_name") or "").startswith(s + "/")
                                             for s in scopes)]
        out.setdefault(layer["name"], []).extend(hits)
    return out


def _layers_of(meta, onnx_names, tensors=None) -> list[str]:
    """Keras layers (``name (Class)``) whose name scopes contain these ONNX nodes (innermost layer wins); a
    node tf2onnx renamed is placed by its tensors' names (``tensors``: node name -> tensor names)."""
    out = []
    for name in onnx_names:
        best = None
        for cand in [name, *(tensors or {}).get(name, [])]:
            for layer in meta["layers"]:
                for sc in layer.get("scopes", []):
                    if sc and cand.startswith(sc + "/") and (best is None or len(sc) > best[0]):
                        best = (len(sc), f"{layer['name']} ({layer['class']})")
            if best:
                break
        label = best[1] if best else name
        if label not in out:
            out.append(label)
    return out


def _stop_names(gm, meta, early_stop_layers) -> list[str]:
    by_layer = _layer_nodes(gm, meta)
    names = []
    for name in early_stop_layers or []:
        if name in by_layer:
            if not by_layer[name]:
                raise ValueError(f"early_stop_layers: Keras layer {name!r} has no operations in the converted graph "
                                 "(it was folded away, e.g. a no-op or a constant); pick the next layer")
            names.extend(by_layer[name])
        else:
            names.append(name)                    # an fx node / module name of the converted graph
    return names


def _unsupported(meta) -> list[dict]:
    return [layer for layer in meta["layers"] if layer["class"] not in SUPPORTED_LAYERS and not layer["is_model"]]


def from_keras(model_or_path, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
               early_stop_layers=None, seq_len: int | None = None, num_chars: int | None = None,
               seq_input_idx: int | None = None, test_correctness: bool = True, **fastism_kwargs):
    """A :class:`~fastism_torch.FastISM` for a Keras model, without TensorFlow in this process.

    Parameters
    ----------
    model_or_path : str, os.PathLike or keras.Model
        ``.h5`` (Keras 2 or 3), ``.keras``, a SavedModel folder, or an in-memory model (saved to a temporary
        file first).
    custom_objects : dict, optional
        ``{name: class or "module:qualname"}`` for custom layers; classes must be importable (the model is
        loaded in a subprocess).
    allow_unsafe : bool, default False
        Allow loading code stored in the file (``Lambda`` layers, unsafe deserialisation).
    cache_dir : str, optional
        Where converted models are cached; default ``$FASTISM_TORCH_CACHE`` or ``~/.cache/fastism_torch``.
    early_stop_layers : list of str, optional
        Keras layer names (or fx node names of the converted graph) from which the model runs in full.
    seq_len : int, optional
        Needed only when the model's sequence input has no fixed length.
    num_chars : int, optional
        Default: the sequence input's last dimension (4 if unknown).
    seq_input_idx : int, optional
        Which Keras input is the sequence; default the rank-3 ``(None, L, C)`` input (the longest with
        ``C == 4`` if several).
    test_correctness : bool, default True
        Compare with naive ISM run by Keras itself (in the subprocess) on a few random sequences; raise
        ``ValueError`` with the largest difference if they disagree.
    **fastism_kwargs
        Passed to :class:`~fastism_torch.FastISM` (``change_ranges``, ``device``, ``batch_size``, ...).
        The layout is ``"NLC"``: sequences ``(N, L, C)`` as Keras takes them.

    Returns
    -------
    FastISM; ``ism(seqs)`` gives ``(N, n_ranges, *out)`` per output and ``ism.saturation_mutagenesis(seqs)``
    ``(N, L, C, *out)``, like the original fastISM.  ``ism.keras_export`` holds the conversion details.
    """
    from ..ism import FastISM
    if fastism_kwargs.get("layout", "NLC") != "NLC":
        raise ValueError("from_keras models take sequences as (N, L, C): layout must be 'NLC'")
    fastism_kwargs.pop("layout", None)
    ex = export_keras(model_or_path, custom_objects=custom_objects, allow_unsafe=allow_unsafe,
                      cache_dir=cache_dir, seq_len=seq_len)
    specs = ex.input_specs
    idx = sequence_input(specs, num_chars or 4) if seq_input_idx is None else int(seq_input_idx)
    if not 0 <= idx < len(specs) or len(specs[idx][1]) != 3:
        raise ValueError(f"input {idx} is not sequence-shaped (batch, length, channels); inputs: {specs}")
    L, C = specs[idx][1][1], specs[idx][1][2]
    if seq_len is not None and L is not None and seq_len != L:
        raise ValueError(f"seq_len={seq_len} but the model's sequence input has length {L}")
    if num_chars is not None and C is not None and num_chars != C:
        raise ValueError(f"num_chars={num_chars} but the model's sequence input has {C} channels")
    try:
        gm = onnx_to_torch(ex.onnx_path, seq_len=L, num_chars=C)
    except UnsupportedOnnxOps as e:
        layers = _layers_of(ex.meta, [n for _, n in e.nodes], e.tensors)
        raise ValueError(f"Keras layer(s) {layers} cannot be converted to PyTorch ({e})") from e
    stops = _stop_names(gm, ex.meta, early_stop_layers)
    for layer in _unsupported(ex.meta):
        hits = _layer_nodes(gm, ex.meta).get(layer["name"], [])
        warnings.warn(f"Keras layer {layer['name']!r} ({layer['class']}) is not supported by the fast engine: it "
                      "and everything after it run in full", stacklevel=2)
        stops.extend(hits)
    ism = FastISM(gm, L, num_chars=C, layout="NLC", seq_input_idx=idx, early_stop_layers=stops or None,
                  test_correctness=False, **fastism_kwargs)
    ism.keras_export = ex
    ism.output_names = [o["name"] for o in ex.meta["outputs"]]
    if test_correctness:
        check_against_keras(ism, ex)
    return ism


def check_request(ism, ex: KerasExport, n_seqs: int = 2, n_ranges: int = 12, seed: int = 0) -> tuple:
    """A :func:`keras_naive_ism` request checking ``ism``: random one-hot sequences (other inputs normal),
    the first and last 3 windows of ``change_ranges`` plus ``n_ranges`` random ones, random one-hot values."""
    rng = np.random.default_rng(seed)
    L, C, idx = ism.seq_len, ism.num_chars, ism.seq_input_idx
    inputs = []
    for i, (name, shape) in enumerate(ex.input_specs):
        if i == idx:
            inputs.append(np.eye(C, dtype=np.float32)[rng.integers(0, C, (n_seqs, L))])
        else:
            inputs.append(rng.normal(size=(n_seqs, *[d or 1 for d in shape[1:]])).astype(np.float32))
    ranges = ism.change_ranges
    R = len(ranges)
    pick = sorted(set(range(min(3, R))) | set(range(max(0, R - 3), R)) |
                  set(rng.integers(0, R, n_ranges).tolist()))
    s_idx = np.repeat(np.arange(n_seqs), len(pick))
    r_idx = np.tile(np.array(pick), n_seqs)
    width = ranges[0][1] - ranges[0][0]
    values = np.eye(C, dtype=np.float32)[rng.integers(0, C, (len(s_idx), width))]
    starts = np.array([ranges[r][0] for r in r_idx])
    return ex, inputs, idx, s_idx, starts, values


def compare_with_keras(ism, request: tuple, keras_result, rtol: float = 1e-4) -> float:
    """Compare ``ism`` on ``request``'s edits with Keras's results; raise ``ValueError`` on a mismatch.

    Returns the largest absolute difference over outputs (reference predictions and mutated ones).
    """
    if isinstance(keras_result, Exception):
        raise keras_result
    ex, inputs, idx, s_idx, starts, values = request
    k_out, k_ref = keras_result
    starts_of = {s: r for r, (s, _) in enumerate(ism.change_ranges)}
    r_idx = np.array([starts_of[int(s)] for s in starts])
    with torch.no_grad():
        t_ref = ism.predict(inputs if len(inputs) > 1 else inputs[0])
        inp = ism._inputs([torch.as_tensor(x) for x in inputs] if len(inputs) > 1 else torch.as_tensor(inputs[0]))
        t_out = ism.edit_outputs(inp, s_idx, r_idx, torch.as_tensor(values))
    t_ref = t_ref if isinstance(t_ref, tuple) else (t_ref,)
    if len(k_ref) != len(t_ref):
        raise ValueError(f"the converted model has {len(t_ref)} outputs, Keras {len(k_ref)}")
    worst = 0.0
    for j, (kr, tr, ko, to) in enumerate(zip(k_ref, t_ref, k_out, t_out)):
        for what, k, t in (("predictions", kr, np.asarray(tr)),
                           ("outputs on mutated sequences", ko, to.detach().cpu().numpy())):
            if k.shape != t.shape:
                raise ValueError(f"output {j}: the converted model gives shape {t.shape[1:]}, Keras {k.shape[1:]}")
            scale = float(np.abs(k).max()) if k.size else 0.0
            diff = float(np.abs(k - t).max()) if k.size else 0.0
            worst = max(worst, diff)
            if not diff <= rtol * max(scale, 1e-3) + 1e-6:
                raise ValueError(f"the converted model disagrees with Keras on output {j} ({what}): max |difference| "
                                 f"= {diff:.3g} at output scale {scale:.3g} (tolerance {rtol:g} relative). Please "
                                 "report this model; early_stop_layers may work around an engine problem.")
    return worst


def check_against_keras(ism, ex: KerasExport, rtol: float = 1e-4, **request_kw) -> float:
    """Compare ``ism`` with Keras's naive ISM on random sequences (see :func:`check_request`)."""
    req = check_request(ism, ex, **request_kw)
    return compare_with_keras(ism, req, keras_naive_ism_many([req])[0], rtol)
