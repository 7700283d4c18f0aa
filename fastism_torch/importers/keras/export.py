"""Keras -> ONNX in the worker, cached on disk by the model's content hash and the options."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .jobs import WorkerFailed, run_jobs, worker_env
from .scan import check_unsafe

_FORMAT_VERSION = "3"           # bump when the worker's output changes (invalidates caches)


@dataclass
class KerasExport:
    """A converted Keras model: the ONNX file, its metadata and how it was loaded."""
    model_path: str                 # the Keras file the worker loads (a kept copy for an in-memory model)
    onnx_path: str
    meta: dict                      # the worker's meta.json: inputs, outputs, layers with name scopes, "legacy"
    key: str                        # cache key (content hash + options)
    cache_dir: str                  # this model's cache entry
    env: dict                       # the worker's environment (Keras 3 or tf-keras)
    custom_objects: dict            # {name: "module:qualname"}
    allow_unsafe: bool

    @property
    def input_specs(self) -> list[tuple[str, list]]:
        return [(i["name"], i["shape"]) for i in self.meta["inputs"]]


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


def export_keras(model_or_path, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
                 seq_len: int | None = None, opset: int = 17) -> KerasExport:
    """Convert a Keras model to ONNX in a subprocess (cached). Returns a :class:`KerasExport`."""
    res = export_keras_many([model_or_path], custom_objects=custom_objects, allow_unsafe=allow_unsafe,
                            cache_dir=cache_dir, seq_len=seq_len, opset=opset)[0]
    if isinstance(res, Exception):
        raise res
    return res


class _Options(NamedTuple):
    """The options shared by every model of one :func:`export_keras_many` call."""
    root: Path                      # cache root
    refs: dict                      # custom objects as {name: "module:qualname"}
    allow_unsafe: bool
    seq_len: int | None
    opset: int


class _Job(NamedTuple):
    """One model to export: its index in the request, file, cache key and entry, and the worker arguments."""
    i: int
    path: Path
    key: str
    entry: Path
    args: list


def export_keras_many(models, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
                      seq_len: int | None = None, opset: int = 17) -> list:
    """:func:`export_keras` for several models with one TensorFlow start-up (two if some need tf-keras).

    Returns one :class:`KerasExport` or exception (``ValueError``, ``FileNotFoundError``) per model.
    """
    opts = _Options(_cache_root(cache_dir), _custom_object_refs(custom_objects), bool(allow_unsafe), seq_len, opset)
    results: list = [None] * len(models)
    tmps: list = []
    try:
        jobs = []
        for i, m in enumerate(models):
            try:
                jobs.append(_job(i, m, tmps, opts))
            except (ValueError, FileNotFoundError, OSError) as e:
                results[i] = e
        errors = _run_exports([j for j in jobs if not (j.entry / "meta.json").exists()], opts)
        for j in jobs:
            results[j.i] = _collect(j, errors.get(j.i), tmps, opts)
        return results
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)


def _job(i, model, tmps: list, opts: _Options) -> _Job:
    """Check ``model`` (file format, no unsafe code unless allowed) and describe its export."""
    path, tmp = _as_path(model)
    if tmp:
        tmps.append(tmp)
    check_unsafe(path, opts.allow_unsafe)
    settings = json.dumps([_FORMAT_VERSION, opts.seq_len, opts.opset, opts.allow_unsafe, sorted(opts.refs.items())])
    key = hashlib.sha256((_content_hash(path) + settings).encode()).hexdigest()[:24]
    args = ["--model", str(path)] + (["--custom-objects", json.dumps(opts.refs)] if opts.refs else []) + (
        ["--allow-unsafe"] if opts.allow_unsafe else [])
    return _Job(i, path, key, opts.root / key, args)


def _run_exports(pending: list, opts: _Options) -> dict:
    """Export ``pending`` jobs into their cache entries: Keras 3 first, then tf-keras for the files Keras 3 could
    not load.  Returns the error messages per job index."""
    errors: dict = {}
    for legacy in (False, True):
        if not pending:
            break
        opts.root.mkdir(parents=True, exist_ok=True)
        works = [Path(tempfile.mkdtemp(prefix=j.key + ".", dir=opts.root)) for j in pending]
        argv = [["export", *j.args, "--out-dir", str(w), "--opset", str(opts.opset)] +
                (["--seq-len", str(opts.seq_len)] if opts.seq_len else []) for j, w in zip(pending, works)]
        try:
            outs = run_jobs(argv, legacy)
        except WorkerFailed as e:
            outs = [{"ok": False, "code": 3, "kind": e.kind, "message": e.message}] * len(argv)
        retry = []
        for j, w, out in zip(pending, works, outs):
            if out["ok"]:
                _publish(w, j.entry, legacy)
                continue
            shutil.rmtree(w, ignore_errors=True)
            errors.setdefault(j.i, []).append(out["message"])
            if out["code"] == 2:         # Keras 3 could not load it: try tf-keras
                retry.append(j)
        pending = retry
    return errors


def _publish(work: Path, entry: Path, legacy: bool) -> None:
    meta = json.loads((work / "meta.json").read_text())
    meta["legacy"] = legacy
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(work, entry)
    except OSError:          # another process won the race
        shutil.rmtree(work, ignore_errors=True)


def _collect(j: _Job, errors, tmps: list, opts: _Options):
    """The :class:`KerasExport` of a finished job, or a ``ValueError`` with the worker's messages."""
    if not (j.entry / "meta.json").exists():
        msgs = "\n".join(f"- {m}" for m in errors or ["unknown error"])
        return ValueError(f"could not convert the Keras model {j.path}:\n{msgs}")
    meta = json.loads((j.entry / "meta.json").read_text())
    path = j.path
    if any(str(path).startswith(t) for t in tmps):      # in-memory model: keep its file
        kept = j.entry / path.name
        if not kept.exists():
            shutil.copy(path, kept)
        path = kept
    return KerasExport(str(path), str(j.entry / "model.onnx"), meta, j.key, str(j.entry),
                       worker_env(meta.get("legacy", False)), opts.refs, opts.allow_unsafe)


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
