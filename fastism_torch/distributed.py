"""Scale-out under ``torchrun``: shard sequences across ranks, merge the ranks' files on rank 0.

Each rank computes a contiguous block of the sequences (``shard``) and writes it to its own resumable part
file ``PREFIX.part{rank}of{world}.h5``; after a barrier, rank 0 concatenates the parts in rank order (which
is input order) into ``PREFIX.h5``, byte-for-byte the same datasets as a single-process run, and removes
the parts.  The process group uses NCCL when the run is on CUDA and Gloo otherwise.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """The rank layout torchrun put in the environment (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(ctx: Context, device: str) -> None:
    """Start the process group: NCCL for CUDA devices, Gloo otherwise.  Long timeout: ranks finish unevenly."""
    import torch.distributed as dist
    if not ctx.active or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(days=7))


def barrier(ctx: Context) -> None:
    import torch.distributed as dist
    if ctx.active and dist.is_initialized():
        if dist.get_backend() == "nccl":
            import torch
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_ok(ctx: Context, ok: bool) -> bool:
    """True when every rank reports ``ok`` (so that one rank's failure stops the others at the merge)."""
    import torch
    import torch.distributed as dist
    if not (ctx.active and dist.is_initialized()):
        return ok
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([0 if ok else 1], device=dev)
    dist.all_reduce(t)
    return int(t.item()) == 0


def shutdown(ctx: Context) -> None:
    import torch.distributed as dist
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, ctx: Context) -> tuple[int, int]:
    """This rank's contiguous block ``[lo, hi)`` of ``n`` sequences; the blocks cover ``range(n)`` once."""
    bounds = np.linspace(0, n, ctx.world + 1).round().astype(int)
    return int(bounds[ctx.rank]), int(bounds[ctx.rank + 1])


def part_path(prefix: str, ctx: Context) -> str:
    return f"{prefix}.part{ctx.rank}of{ctx.world}.h5"


def resolve_device(name, ctx) -> str:
    """``--device`` as a device string with an index for CUDA (``cuda`` -> this rank's or the current GPU)."""
    import torch
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device torch knows") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        index = dev.index if dev.index is not None else ctx.local_rank if ctx.active else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    return str(dev)
