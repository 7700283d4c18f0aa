"""The float32 precision policy of the engines (TF32), and cuDNN autotuning.

On NVIDIA GPUs since Ampere, PyTorch runs float32 cuDNN convolutions in TF32 by default (10-bit mantissa:
about 1e-3 relative error per op).  ISM effects are differences between two predictions, and the fast and the
naive paths run convolutions of different shapes (so different TF32 roundings): exact ISM needs IEEE float32.
The engines therefore run their own work with TF32 *off* unless asked (``tf32=True``, GPUs only: oneDNN on the
CPU stays IEEE), and restore the caller's settings afterwards.  With ``tf32=True`` the self-check compares at
:data:`TF32_RTOL`.

PyTorch has two precision APIs, and a caller may have used either or both:

- the legacy switches: ``torch.set_float32_matmul_precision`` (also ``torch.backends.cuda.matmul.allow_tf32``)
  and ``torch.backends.cudnn.allow_tf32``;
- the per-backend ``fp32_precision`` settings (PyTorch >= 2.9): ``torch.backends.fp32_precision`` (generic),
  ``torch.backends.cuda.matmul.fp32_precision``, ``torch.backends.cudnn.fp32_precision`` / ``.conv`` and
  ``torch.backends.mkldnn.fp32_precision`` / ``.matmul`` / ``.conv`` / ``.rnn``.  A per-op value ``"none"``
  inherits its backend's, which inherits the generic one.

Where the two disagree (e.g. ``cuda.matmul.fp32_precision = "tf32"`` with the legacy precision at its
default ``"highest"``), PyTorch's legacy *getters* raise ("mix of the legacy and new APIs").  So
:func:`float32_precision` never reads a legacy getter in a state it has not made consistent: it records the
raw per-op settings (which values are set and which inherit), reads the legacy values in a consistent state,
sets both APIs consistently inside the block, and restores both exactly after it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

TF32_RTOL = 5e-3     # self-check tolerance (relative to output scale) with TF32 convolutions and matmuls
#: float32 self-check tolerance (relative to output scale) per device type.  On GPUs cuDNN picks other
#: algorithms for the fast path's narrow windows than for full-length passes (their summation orders differ):
#: measured 1.1e-5 on Factorized Basset's 30 layers on an H100, IEEE float32 throughout.
FLOAT32_RTOL = {"cpu": 1e-5}
GPU_FLOAT32_RTOL = 5e-5

#: the per-op ``fp32_precision`` settings, parents before children (``(backend, op)``; ``"all"`` is the parent
#: of a backend's ops, ``("generic", "all")`` of the backends)
PRECISION_KEYS = (("generic", "all"), ("cuda", "all"), ("mkldnn", "all"),
                  ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
                  ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))
NEW_API = hasattr(torch._C, "_get_fp32_precision_getter") and hasattr(torch._C, "_set_fp32_precision_setter")


def _known(key) -> bool:
    try:
        torch._C._get_fp32_precision_getter(*key)
        return True
    except (RuntimeError, ValueError):
        return False


if NEW_API:        # the settings this PyTorch has
    PRECISION_KEYS = tuple(k for k in PRECISION_KEYS if _known(k))


def float32_rtol(device) -> float:
    return FLOAT32_RTOL.get(torch.device(device).type, GPU_FLOAT32_RTOL)


@contextmanager
def cudnn_benchmark(on: bool | None):
    """``torch.backends.cudnn.benchmark`` inside the block (restored after); ``None`` leaves it as it is."""
    old = torch.backends.cudnn.benchmark
    if on is not None:
        torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# ---------------------------------------------------------------- the per-op API, read raw
def _get(key) -> str:
    return torch._C._get_fp32_precision_getter(*key)


def _set(key, value: str) -> None:
    torch._C._set_fp32_precision_setter(*key, value)


def _parent(key):
    backend, op = key
    return ("generic", "all") if op == "all" else (backend, "all")


def raw_fp32_precisions() -> dict:
    """The per-op settings as set: ``{(backend, op): value}``; ``"none"`` where a setting inherits its parent's,
    ``"default"`` for PyTorch's start-up value of cuDNN's conv and RNN settings (inherits, and is TF32 where
    nothing above it is set; it cannot be set from Python, so it is never written here).

    PyTorch's getter returns the *resolved* value, so whether a value was set or inherited is found by setting
    the parent (never the setting itself) to different values in turn, and back."""
    raw = {}
    for key in PRECISION_KEYS:
        if key == ("generic", "all"):
            raw[key] = _get(key)
            continue
        parent, value = _parent(key), _get(key)
        probes = ["ieee", "tf32"]
        inherits = True
        for probe in probes:
            _set(parent, probe)
            inherits = inherits and _get(key) == probe
        if inherits and key[1] != "all":          # "none" or PyTorch's internal default: look with nothing above
            _set(parent, "none")
            _set(("generic", "all"), "none")
            value = "default" if _get(key) != "none" else "none"
            _set(("generic", "all"), raw[("generic", "all")])
        _set(parent, raw[parent])
        raw[key] = "none" if inherits and value != "default" else value
    return raw


def _legacy_matmul(raw: dict) -> str:
    """``torch.get_float32_matmul_precision()`` as set, read where it cannot raise (both matmul settings IEEE;
    they are put back by the caller from ``raw``)."""
    if NEW_API:
        _set(("cuda", "matmul"), "ieee")
        _set(("mkldnn", "matmul"), "ieee")
    return torch.get_float32_matmul_precision()


def _legacy_cudnn(raw: dict) -> bool:
    """``torch.backends.cudnn.allow_tf32`` as set.  Every legacy set writes cuDNN's conv and RNN settings, so
    where they hold PyTorch's start-up default the flag is its start-up value (True).  Otherwise, with both
    IEEE, the getter returns the flag or, on the PyTorch versions that check the two APIs agree, raises exactly
    when it is True."""
    if NEW_API:
        if "default" in (raw.get(("cuda", "conv")), raw.get(("cuda", "rnn"))):
            return True
        _set(("cuda", "conv"), "ieee")
        _set(("cuda", "rnn"), "ieee")
    try:
        return bool(torch._C._get_cudnn_allow_tf32())
    except RuntimeError:
        return True


def precision_state() -> tuple:
    """Everything :func:`float32_precision` sets, as set: ``(raw per-op settings, legacy matmul precision, legacy
    cuDNN TF32 flag)``.  Reading it changes nothing (what it sets to read is put back)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the legacy getters' deprecation warnings
        raw = raw_fp32_precisions() if NEW_API else {}
        try:
            state = (raw, _legacy_matmul(raw), _legacy_cudnn(raw))
        finally:
            _restore_raw(raw)
    return state


def _restore_raw(raw: dict) -> None:
    for key, value in raw.items():
        if value != "default":
            _set(key, value)


def restore_precision(state: tuple, cuda: bool = True) -> None:
    """Put back a :func:`precision_state`: the legacy switches first (they overwrite per-op settings), then every
    per-op setting as it was (set or inheriting).  With ``cuda=False`` cuDNN's flag is left alone (a block for
    the CPU does not set it)."""
    raw, matmul, cudnn = state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_float32_matmul_precision(matmul)
        if cuda:
            torch._C._set_cudnn_allow_tf32(cudnn)
        _restore_raw(raw)


def _apply(tf32: bool, cuda: bool) -> None:
    """Both APIs agree inside the block: cuBLAS and cuDNN in TF32 or IEEE, oneDNN (CPU) in IEEE.  For a CPU
    block (``cuda=False``) cuDNN's settings are not written: they do not act there, and where they hold
    PyTorch's start-up default a write could not be undone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_float32_matmul_precision("high" if tf32 and cuda else "highest")
        if cuda:
            torch._C._set_cudnn_allow_tf32(tf32)
        if not NEW_API:
            return
        for backend, mode, ops in (("mkldnn", "ieee", ("matmul", "conv", "rnn")),
                                   ("cuda", "tf32" if tf32 else "ieee", ("matmul", "conv", "rnn") if cuda else ())):
            if not ops:
                continue
            _set((backend, "all"), mode)
            for op in ops:                       # only settings that do not inherit it
                if _get((backend, op)) != mode:
                    _set((backend, op), mode)


@contextmanager
def float32_precision(tf32: bool, device=None):
    """cuDNN convolutions and cuBLAS matrix products in TF32 (``tf32=True``) or IEEE float32 inside the block,
    oneDNN (CPU) products and convolutions in IEEE float32; whatever the caller set, through either API, is
    put back after it (see the module docstring).

    ``device``: the engine's device; for a CPU device the CUDA settings are left as they are (and the legacy
    matmul precision is "highest" inside the block).  Default: both.

    Exactness of the restore: everything is put back as it was, set or inheriting, except one case on CUDA
    devices: cuDNN's conv and RNN settings at PyTorch's start-up default (never set by the caller) cannot be
    written back by any PyTorch API; they are left set to the value they resolved to (TF32), which reads the
    same but no longer follows a later change of ``torch.backends.cudnn.fp32_precision`` or the generic one.
    """
    cuda = device is None or torch.device(device).type == "cuda"
    state = precision_state()
    try:
        _apply(tf32, cuda)
        yield
    finally:
        restore_precision(state, cuda)
