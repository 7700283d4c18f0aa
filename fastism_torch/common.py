"""The words both engines share (ground floor: imports nothing of the package).

:class:`Edits` (which edits a call computes and where their outputs go), :func:`as_output_list` (a model's
outputs as a flat list), :func:`to_device` (index arrays to the device in one copy), :func:`check_output_shape`
and :func:`bucket` (batch sizes that share compiled graphs).  The oracle (:mod:`.naive`), the front end
(:mod:`.base`), graph capture (:mod:`.capture`) and the fast path's executor (:mod:`.execute`) all read them
from here, so none of them imports another for its vocabulary.
"""
from __future__ import annotations

import contextlib
import gc
from typing import NamedTuple

import numpy as np
import torch


class Edits(NamedTuple):
    """Edits of one chunk of sequences: sequence ``seq[e]`` with mutation window ``window[e]`` replaced by
    ``values[e]``; the outputs go to row ``dest[e]`` of the result tensors."""
    seq: np.ndarray            # (E,) int64: row of the chunk
    window: np.ndarray         # (E,) int64: index into the change ranges
    values: torch.Tensor       # (E, w, C) on the engine's device, rows of (L, C)
    dest: np.ndarray           # (E,) int64: row of the flat results

    def subset(self, idx: np.ndarray) -> "Edits":
        return Edits(self.seq[idx], self.window[idx], self.values[torch.from_numpy(idx).to(self.values.device)],
                     self.dest[idx])


def bucket(n: int) -> int:
    """``n`` rounded up to one of 8 sizes per power of two (a multiple of 1/16 of the next one): a run's batch
    size, so that runs of different sizes share compiled graphs and pad at most 1/8 of their edits."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def to_device(arrays: dict, device: torch.device) -> dict:
    """int64 numpy arrays -> tensors on ``device``: zero-copy on the CPU; elsewhere one host buffer (pinned for
    CUDA) and one asynchronous copy for all of them."""
    if device.type == "cpu":
        return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for k, a in arrays.items()}
    sizes = [len(a) for a in arrays.values()]
    host = torch.empty(sum(sizes), dtype=torch.int64, pin_memory=device.type == "cuda")
    np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays.values()], out=host.numpy())
    return dict(zip(arrays, host.to(device, non_blocking=True).split(sizes)))


def check_output_shape(out: torch.Tensor, results: torch.Tensor) -> None:
    """Raise ValueError when a batch's output ``out`` (B, *S') does not fit the results ``results`` (E, *S)."""
    if out.shape[1:] != results.shape[1:]:
        raise ValueError(f"the model's output shape depends on the input ({tuple(results.shape[1:])} for one "
                         f"batch, {tuple(out.shape[1:])} for another): ISM needs outputs of a fixed shape")


def as_output_list(out) -> list[torch.Tensor]:
    """A model's output as a flat list of tensors (one per head)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in as_output_list(o)]
    if isinstance(out, dict):
        return [t for k in out for t in as_output_list(out[k])]
    raise TypeError(f"model output of type {type(out).__name__} is not supported; return tensors, "
                    "tuples/lists or dicts of tensors")


class Inputs(NamedTuple):
    """One call's model inputs, validated and on the engine's device."""
    seq: torch.Tensor             # (N, C, L) or (N, L, C), float32
    args: list                    # every positional model input (seq at seq_input_idx); None allowed
    was_numpy: bool               # return numpy arrays
    out_device: torch.device      # where torch results go


def host_available_bytes() -> int | None:
    """The host's ``MemAvailable`` in bytes (Linux ``/proc/meminfo``); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off inside the block (as the caller had it after): building an engine
    allocates thousands of fx objects, which set off a full collection over torch's whole heap, 0.2 s of a small
    model's first build in a process (gReLU's dilated-conv model: 0.21 s -> 0.013 s for its edit graph's
    split).  Collections resume after the block on their usual thresholds."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
