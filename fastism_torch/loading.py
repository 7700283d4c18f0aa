"""Models from files or memory, ready to hand out ISM engines for a mutation window.

A MODEL is a PyTorch ``path/to/file.py:factory`` (the factory returns an ``nn.Module``; the file may set
``SEQ_LEN``, ``LAYOUT`` and ``TARGET_NAMES``), an ``.onnx`` file, or a Keras ``.h5``/``.keras``/SavedModel
folder.  :func:`load_model` returns a :class:`Model`; ``model.engine(window)`` gives an :class:`Engine`
(:class:`~fastism_torch.FastISM`, or :class:`~fastism_torch.NaiveISM` with ``engine="naive"`` or when
FastISM cannot run the model) that mutates only that window, built once per window.

Python users with a module in hand use :meth:`Model.from_module`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .errors import UserError, first_line

LAYOUTS = ("NCL", "NLC")


class Engine(Protocol):
    """What the scoring pipeline needs from an ISM engine (:class:`~fastism_torch.FastISM` has it): built
    for a window, ``__call__`` edits exactly that window's positions (``(N, Lw, *out)``)."""
    seq_len: int
    layout: str

    def predict(self, x): ...
    def __call__(self, x, replace_with=None): ...
    def saturation_mutagenesis(self, x): ...


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built: ``engine`` "fast" or "naive", ``check`` FastISM's self-check against naive
    ISM, ``dtype`` "float32", "float16" or "bfloat16" (autocast), ``allow_unsafe`` Keras code in files,
    ``compile`` FastISM's ``torch.compile`` (False, True or a mode such as "reduce-overhead")."""
    device: str = "cpu"
    batch_size: int | None = None
    dtype: str = "float32"
    engine: str = "fast"
    check: bool = True
    allow_unsafe: bool = False
    compile: bool | str = False

    def torch_kwargs(self) -> dict:
        import torch
        dtype = None if self.dtype in (None, "float32") else getattr(torch, self.dtype)
        return dict(device=self.device, batch_size=self.batch_size, dtype=dtype)


def window_ranges(window: tuple[int, int], seq_len: int) -> list | None:
    """Change ranges mutating each position of ``window`` (None: every position)."""
    return None if tuple(window) == (0, seq_len) else [(i, i + 1) for i in range(*window)]


@dataclass
class Model:
    """A model that gives ISM engines, one per mutation window.

    ``build(change_ranges) -> Engine``.  A PyTorch factory whose length is not known yet has ``build=None``
    until :meth:`bind` is called with the sequences' length.
    """
    kind: str                      # "torch", "keras" or "onnx"
    seq_len: int | None
    layout: str
    target_names: list | None
    digest: str | None
    build: Callable | None = None
    bind_length: Callable | None = None
    engines: dict = field(default_factory=dict)

    @classmethod
    def from_module(cls, module, seq_len: int, options: EngineOptions = EngineOptions(), layout: str = "NCL",
                    target_names=None) -> "Model":
        """A :class:`Model` for an ``nn.Module`` taking one-hot sequences of ``seq_len``.

        Its ``digest`` is None: hashing every weight would cost each :func:`~fastism_torch.pipeline.score`
        call on a bare module; :func:`module_digest` gives it when a run must be identified."""
        return cls("torch", int(seq_len), layout, target_names, None,
                   build=lambda ranges: torch_engine(module, int(seq_len), layout, ranges, options))

    def bind(self, seq_len: int) -> None:
        """Fix the input length (a PyTorch factory builds its module now); other models check it."""
        if self.bind_length is not None:
            self.bind_length(seq_len)
        elif self.seq_len != seq_len:
            raise UserError(f"the model takes length {self.seq_len} but the sequences have length {seq_len}")

    def engine(self, window: tuple[int, int]) -> Engine:
        """The engine that mutates exactly ``window`` (built on first use, with one change range per position
        of the window), so that callers never need to ask the engine what it mutates."""
        key = tuple(window)
        if key not in self.engines:
            if self.build is None:
                raise RuntimeError("Model.bind(seq_len) must be called before engines are built")
            self.engines[key] = self.build(window_ranges(window, self.seq_len))
        return self.engines[key]


def torch_engine(module, seq_len: int, layout: str, change_ranges, options: EngineOptions) -> Engine:
    """FastISM for a PyTorch module, or NaiveISM with ``engine="naive"`` or when FastISM cannot run it."""
    from .fast import FastISM
    from .naive import NaiveISM
    kw = dict(seq_len=seq_len, num_chars=4, layout=layout, change_ranges=change_ranges, **options.torch_kwargs())
    if options.engine == "fast":
        try:
            return FastISM(module, test_correctness=options.check, compile=options.compile, **kw)
        except Exception as e:  # an unsupported model: the exact but slower engine still works
            warnings.warn(f"FastISM cannot run this model ({first_line(e)}); using NaiveISM", stacklevel=2)
    return NaiveISM(module, **kw)


# --------------------------------------------------------------------------------------------- digests
def path_digest(path: str) -> str:
    """sha1 of a file, or of every file (names and bytes) under a folder such as a SavedModel."""
    h = hashlib.sha1()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    for p in files:
        h.update(os.path.relpath(p, path).encode() if p != path else b"")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def module_digest(module) -> str:
    """sha1 of a module's parameters and buffers (names, shapes, values): its weights, wherever they came from."""
    import torch
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        a = t.detach().cpu().contiguous().view(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- loading
def _split_factory(spec: str):
    """``path/to/file.py:factory`` -> (path, factory) or None."""
    path, _, name = spec.rpartition(":")
    return (path, name) if path.endswith(".py") and name.isidentifier() else None


def load_model(spec: str, options: EngineOptions = EngineOptions()) -> Model:
    """Load MODEL: ``file.py:factory`` (PyTorch), ``.onnx``, or a Keras ``.h5``/``.keras``/SavedModel folder."""
    fac = _split_factory(spec)
    if fac is not None:
        return _load_torch(*fac, options)
    if spec.endswith(".py"):
        raise UserError(f"model {spec!r}: name the factory function too, as {spec}:make_model")
    if not os.path.exists(spec):
        raise UserError(f"model {spec!r}: no such file or folder")
    low = spec.lower().rstrip("/")
    if low.endswith(".onnx"):
        kind = "onnx"
    elif low.endswith((".h5", ".hdf5", ".keras")) or os.path.isdir(spec):
        kind = "keras"
    else:
        raise UserError(f"model {spec!r}: unknown model format; use a .h5/.keras file, a SavedModel folder, "
                        f"a .onnx file or file.py:factory")

    def build(change_ranges):
        import fastism_torch as ft
        kw = dict(change_ranges=change_ranges, test_correctness=options.check, compile=options.compile,
                  **options.torch_kwargs())
        try:
            if kind == "onnx":
                return ft.from_onnx(spec, **kw)
            return ft.from_keras(spec, allow_unsafe=options.allow_unsafe, **kw)
        except UserError:
            raise
        except ImportError as e:
            raise UserError(f"model {spec!r}: loading {kind} models needs extra packages "
                            f"(pip install 'fastism-torch[{kind}]'): {e}") from None
        except Exception as e:
            raise UserError(f"model {spec!r} does not load: {first_line(e)}") from None

    eng = build(None)   # load once to learn the length and layout
    model = Model(kind, int(eng.seq_len), eng.layout, None, path_digest(spec), build=build)
    model.engines[(0, model.seq_len)] = eng
    return model


def _import_file(path: str):
    if not os.path.isfile(path):
        raise UserError(f"model file {path!r}: no such file")
    mod_name = "_fastism_user_model_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"model file {path!r} does not load: {first_line(e)}") from None
    finally:
        sys.path.pop(0)
    return module


def _load_torch(path: str, name: str, options: EngineOptions) -> Model:
    from torch import nn
    module = _import_file(path)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"model file {path!r} has no function {name!r}")
    try:
        takes_len = "seq_len" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_len = False
    model = Model("torch", getattr(module, "SEQ_LEN", None), getattr(module, "LAYOUT", "NCL"),
                  getattr(module, "TARGET_NAMES", None), None)
    if model.layout not in LAYOUTS:
        raise UserError(f"model file {path!r}: LAYOUT must be 'NCL' or 'NLC'; got {model.layout!r}")

    def bind_length(seq_len):
        if model.build is not None:
            if seq_len != model.seq_len:
                raise UserError(f"the model was built for length {model.seq_len}, not {seq_len}")
            return
        try:
            net = factory(seq_len=seq_len) if takes_len else factory()
        except Exception as e:
            raise UserError(f"model factory {path}:{name} failed: {first_line(e)}") from None
        if not isinstance(net, nn.Module):
            raise UserError(f"model factory {path}:{name} returned {type(net).__name__}, not a torch.nn.Module")
        if getattr(net, "seq_len", None) not in (None, seq_len):
            raise UserError(f"model factory {path}:{name} made a model for length {net.seq_len}, "
                            f"but the sequences have length {seq_len}")
        layout = getattr(net, "layout", model.layout)
        model.layout, model.seq_len = layout, seq_len
        model.target_names = getattr(net, "target_names", None) or model.target_names
        model.digest = path_digest(path) + ":" + module_digest(net)
        model.build = lambda ranges: torch_engine(net, seq_len, layout, ranges, options)
    model.bind_length = bind_length
    return model


def as_list(out) -> list:
    """A model's output(s) as a list of arrays."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """One-hot ``(N, 4, L)`` in the engine's layout."""
    return x if layout == "NCL" else np.ascontiguousarray(x.transpose(0, 2, 1))
