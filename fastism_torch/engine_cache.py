"""Engines built once per model and settings, and rebuilt when the model's weights change.

A function that takes a model on every call (``fastism_torch.saturation_mutagenesis(model, X)``, called in a
loop over batches of sequences) would otherwise capture, analyse and plan the model on every call.
:func:`cached_engine` keeps the engine for each model object (held weakly: a model that is deleted takes its
engines with it) and each set of settings (length, mutation windows, device, dtype, ...), and hands back the
same engine while the model's weights are those it was built from.

"The same weights" is checked on every call against the engine's private copy of the model: every parameter and
buffer, by name, shape, dtype and value (``torch.equal``).  A key of data pointers and ``_version`` counters
would not be enough: the counter is bumped by ``optimizer.step()``, ``load_state_dict`` and ``p.add_()`` under
``no_grad``, and a replaced parameter has a new pointer, but a write through ``p.data`` (an EMA update,
``p.data.copy_(...)``) changes neither; and a reload of the same values would change both for nothing.  The
comparison reads the weights once per call (milliseconds for a Basset-sized model), never the set-up.
A change to anything else the model's output depends on (a plain tensor attribute that is not a buffer, a
Python attribute, the code) is not seen: call :func:`clear_cache` after one.
"""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict

import torch
from torch import nn

#: engines kept per model object (the least recently used beyond this are dropped)
MAX_ENGINES_PER_MODEL = 8

_CACHE: "weakref.WeakKeyDictionary[nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_STATS = {"hits": 0, "builds": 0, "stale": 0}


def _tensors(model: nn.Module):
    return itertools.chain(model.named_parameters(), model.named_buffers())


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same values, NaN equal to NaN (a buffer holding NaN must not rebuild the engine on every call)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _same_values(model: nn.Module, copy: nn.Module) -> bool:
    """Every parameter and buffer of ``model`` equals the one of the same name in the engine's ``copy``."""
    theirs = dict(_tensors(copy))
    mine = list(_tensors(model))
    if len(mine) != len(theirs):
        return False
    for name, t in mine:
        c = theirs.get(name)
        if c is None or c.shape != t.shape or c.dtype != t.dtype or not _equal(t.detach().to(c.device), c):
            return False
    return True


def _freeze(v):
    """Settings as a hashable key (lists and dicts become tuples)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, str):
        return v
    try:
        hash(v)
    except TypeError:
        raise ValueError(f"cached_engine settings must be hashable; got {type(v).__name__}") from None
    return v


def cached_engine(model: nn.Module, seq_len: int, *, fast: bool = True, n_inputs: int = 1, **settings):
    """The engine for ``model`` with these settings: built on the first call, reused while its weights are unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        The user's model; it is not modified (the engine runs a private eval-mode copy).
    seq_len : int
        Sequence length L the engine is built for.
    fast : bool, default True
        :class:`~fastism_torch.FastISM` (built with ``test_correctness=False``) or, with ``False``,
        :class:`~fastism_torch.NaiveISM` (one full forward pass per edit).
    n_inputs : int, default 1
        How many model inputs the calls will give (the sequences and the others); part of the key only, so
        calls with and without extra inputs keep separate engines.
    **settings
        Keyword arguments of the engine (``layout``, ``num_chars``, ``seq_input_idx``, ``change_ranges``,
        ``device``, ``dtype``, ``batch_size``, ``early_stop_layers``, ``tf32``, ...); part of the key.

    Returns
    -------
    FastISM or NaiveISM
        The same object for repeated calls with the same model, weights and settings.
    """
    from .fast import FastISM
    from .naive import NaiveISM
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if settings.get("copy_model", True) is False:
        raise ValueError("cached_engine needs copy_model=True: the cache compares the model with the engine's copy")
    key = (int(seq_len), bool(fast), int(n_inputs), _freeze(settings))
    entries = _CACHE.get(model)
    if entries is None:
        entries = _CACHE[model] = OrderedDict()
    engine = entries.get(key)
    if engine is not None:
        if _same_values(model, engine.model):
            entries.move_to_end(key)
            _STATS["hits"] += 1
            return engine
        _STATS["stale"] += 1
        entries.clear()                    # the weights changed: every engine of this model is stale
    if fast:
        engine = FastISM(model, seq_len, test_correctness=False, **settings)
    else:
        engine = NaiveISM(model, seq_len, **settings)
    _STATS["builds"] += 1
    entries[key] = engine
    while len(entries) > MAX_ENGINES_PER_MODEL:
        entries.popitem(last=False)
    return engine


def clear_cache(model: nn.Module | None = None) -> None:
    """Drop the cached engines of ``model`` (default: of every model)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)


def cache_info() -> dict:
    """Counts since the process started: ``hits`` (engine reused), ``builds``, ``stale`` (weights changed)."""
    return {**_STATS, "models": len(_CACHE), "engines": sum(len(v) for v in _CACHE.values())}
