"""A resumable ISM run into files: chunks of sequences scored by :mod:`fastism_torch.pipeline`, each written
to ``PREFIX.h5`` (:class:`fastism_torch.outputs.ResultFile`) as soon as it is done.

An interrupted run resumes where it stopped when started again with the same settings; a finished one is
not redone.  Before a run the size of its outputs is printed, and the run stops (before removing or creating
anything) when they would exceed the limit or the free disk space.  Under ``torchrun`` each rank computes a
contiguous block into its own part file and rank 0 merges them (:mod:`fastism_torch.distributed`), checking
that every sequence arrived.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import distributed, formats, outputs, pipeline
from .errors import UserError
from .inputs import Sequences

PROG = "fastism-torch"


#: outputs above this many GB (uncompressed estimate) need --max-output-gb
DEFAULT_MAX_OUTPUT_GB = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the command line installs the handler): exit status 143."""


@dataclass
class RunOptions:
    """Where and how a run writes: ``prefix`` of every file, ``formats`` extra outputs (names in
    :data:`fastism_torch.formats.FORMATS`), ``record`` what ``PREFIX.args.json`` keeps (the command and its
    options), ``max_output_gb`` the size the outputs may take (None: :data:`DEFAULT_MAX_OUTPUT_GB`),
    ``compression`` of the result file (:data:`fastism_torch.outputs.COMPRESSIONS`)."""
    prefix: str
    overwrite: bool = False
    chunk_size: int | None = None
    verbose: bool = False
    formats: tuple = ()
    record: dict = field(default_factory=dict)
    max_output_gb: float | None = None
    compression: str = "gzip"


@dataclass
class Job:
    """One run: the model, its sequences, what to score (a resolved ``spec``), the ``settings`` a resumed
    file must match, where to write (``opts``) and this process's rank (``ctx``)."""
    model: object
    seqs: Sequences
    spec: pipeline.ResolvedSpec
    settings: dict
    opts: RunOptions
    ctx: distributed.Context = distributed.Context()

    @property
    def heads(self) -> list:
        return [h.name for h in self.spec.heads]


class Outcome(NamedTuple):
    """What a run left: the result ``path``, the ``files`` derived from it, and whether it was
    ``already_complete`` (nothing computed)."""
    path: str
    files: list
    already_complete: bool


def info(opts: RunOptions, msg: str, ctx=distributed.Context()) -> None:
    if opts.verbose and ctx.is_main:
        say(msg, ctx)


def say(msg: str, ctx=distributed.Context()) -> None:
    """One line on stderr (rank 0 only)."""
    if ctx.is_main:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def human(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000


def existing_ancestor(path: str) -> str:
    """``path`` or its nearest parent that exists."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _differences(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _round_up(x: float) -> float:
    """``x`` rounded up to two significant digits."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 1) if x > 0 else 1.0
    return round(math.ceil(x / unit - 1e-9) * unit, 12)


def output_bytes(job: Job) -> int:
    """Uncompressed size of everything the run writes: the result file and the derived files."""
    n, spec = len(job.seqs), job.spec
    lw = spec.window[1] - spec.window[0]
    return outputs.result_bytes(n, spec) + formats.derived_bytes(n, lw, len(spec.heads), job.opts.formats)


def check_size(job: Job, out_dir: str) -> None:
    """Say how much the outputs take; stop above the limit or the free disk space (one line naming the flag)."""
    need, opts = output_bytes(job), job.opts
    limit = (DEFAULT_MAX_OUTPUT_GB if opts.max_output_gb is None else opts.max_output_gb) * 1e9
    free = shutil.disk_usage(out_dir).free
    lw, n, k = job.spec.window[1] - job.spec.window[0], len(job.seqs), job.spec.n_bases
    shapes = ", ".join(f"{outputs.dataset_path(h.name, 'ism')} {(n, k, lw, len(h.target_names))}" for h in job.spec.heads)
    say(f"{len(job.seqs)} sequences: the outputs take up to {human(need)} before compression ({shapes})", job.ctx)
    ask = f"--max-output-gb {_round_up(need / 1e9):g}"
    if need > limit:
        raise UserError(f"the outputs would take up to {human(need)} ({shapes}), over the limit of {limit / 1e9:g} "
                        f"GB; pass {ask} to write them, or score fewer values (--reduction counts or profile, "
                        f"--target, --start/--end)")
    if need > free and opts.max_output_gb is None:
        raise UserError(f"the outputs would take up to {human(need)} but {out_dir} has {human(free)} free; "
                        f"free some space or choose another -o (or pass {ask}: compression may make them fit)")


def _existing(final: str, prefix: str, ctx) -> list[str]:
    found = [p for p in (final, final + ".partial") if os.path.exists(p)]
    if ctx.active:
        parts = [distributed.part_path(prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]
        found += [q for p in parts for q in (p, p + ".partial") if os.path.exists(q)]
    return found


def prepare_output(final: str, job: Job) -> str:
    """Check existing outputs against this run; returns 'complete', or 'go' after clearing what must go
    (and creating the output folder)."""
    opts, ctx, settings = job.opts, job.ctx, job.settings
    existing = _existing(final, opts.prefix, ctx)
    for p in existing:
        try:
            old = outputs.ResultFile.stored_settings(p)
        except Exception:
            old = None   # unreadable partial file: it is replaced below
            if p == final and not opts.overwrite:
                raise UserError(f"{final} exists but is not a readable result file; pass --overwrite to replace it")
        if old is not None and old != settings and not opts.overwrite:
            diff = ", ".join(_differences(old, settings))
            raise UserError(f"{p} exists with different settings ({diff}); pass --overwrite to replace it, "
                            f"or choose another -o")
    derived = formats.derived_files(opts.prefix, job.heads, opts.formats)
    if os.path.exists(final) and not opts.overwrite:
        if ctx.is_main and not all(os.path.exists(p) for p in derived):
            formats.write_derived(final, opts.prefix, opts.formats)
        return "complete"
    out_dir = os.path.dirname(os.path.abspath(final))
    check_size(job, existing_ancestor(out_dir))          # before anything is removed or created
    if opts.overwrite:
        distributed.barrier(ctx)
        if ctx.is_main:
            for p in existing + derived:
                if os.path.exists(p):
                    os.unlink(p)
        distributed.barrier(ctx)
    os.makedirs(out_dir, exist_ok=True)
    if ctx.is_main:
        from . import __version__
        outputs.save_json(opts.prefix + ".args.json", {**opts.record, "settings": settings, "version": __version__})
    return "go"


def chunk_size(opts: RunOptions, n_values_per_seq: int) -> int:
    """Sequences per chunk: ``opts.chunk_size``, else what keeps ~256 MB of raw outputs in memory."""
    if opts.chunk_size:
        return max(1, int(opts.chunk_size))
    budget = 256 << 20          # bytes of raw outputs held per chunk (float64 while reducing)
    return int(np.clip(budget // max(1, 8 * n_values_per_seq), 1, 64))


def _progress(opts: RunOptions, ctx, total: int, initial: int):
    from tqdm.auto import tqdm
    desc = "ISM" if not ctx.active else f"ISM rank {ctx.rank}"
    return tqdm(total=total, initial=initial, disable=not opts.verbose or not ctx.is_main, unit="seq",
                desc=desc, dynamic_ncols=True, file=sys.stderr, mininterval=0.2)


def _open(rf: outputs.ResultFile, job: Job, seqs: Sequences) -> bool:
    """Reopen ``rf``'s partial file if it is from this run (True), else create it afresh (False)."""
    if os.path.exists(rf.partial):
        if rf.open_partial() is not None and outputs.ResultFile.stored_settings(rf.partial) == job.settings \
                and rf.h5["done"].shape[0] == len(seqs):
            return True
        rf.close()
        print(f"{PROG}: warning: {rf.partial} is unreadable or from another run; starting over", file=sys.stderr)
    rf.create(seqs, job.spec, job.settings)
    return False


def _interrupted(rf: outputs.ResultFile, n: int, e: KeyboardInterrupt):
    n_done = int(rf.done_mask().sum()) if rf.h5 is not None else 0
    rf.close()
    how = " by SIGTERM" if isinstance(e, Terminated) else ""
    print(f"\n{PROG}: interrupted{how}; {n_done} of {n} sequences are saved in {rf.partial}; "
          f"rerun the same command to resume", file=sys.stderr, flush=True)
    return SystemExit(143 if isinstance(e, Terminated) else 130)


def run_part(job: Job, seqs: Sequences, path: str) -> None:
    """Score ``seqs`` (this process's share of ``job.seqs``) into ``path`` chunk by chunk, resuming
    ``path.partial``."""
    rf = outputs.ResultFile(path, job.opts.compression)
    if os.path.exists(path):      # a complete part file from an interrupted torchrun: reuse it
        return
    spec = job.spec
    try:
        if _open(rf, job, seqs):
            info(job.opts, f"resuming: {int(rf.done_mask().sum())} of {len(seqs)} sequences already in "
                           f"{rf.partial}", job.ctx)
        done = rf.done_mask()
        step = chunk_size(job.opts, spec.n_bases * (spec.window[1] - spec.window[0]) * spec.values_per_seq)
        bar = _progress(job.opts, job.ctx, len(seqs), int(done.sum()))
        try:
            for lo in range(0, len(seqs), step):
                hi = min(len(seqs), lo + step)
                if not done[lo:hi].all():
                    rf.write_chunk(lo, hi, pipeline.score_heads(job.model, seqs.onehot[lo:hi], spec))
                    bar.update(int((~done[lo:hi]).sum()))
        finally:
            bar.close()
        rf.finish()
    except KeyboardInterrupt as e:
        raise _interrupted(rf, len(seqs), e) from None
    except OSError as e:
        rf.close()
        raise UserError(f"cannot write {rf.partial}: {e.strerror or e}; rerun the same command to resume "
                        f"once fixed") from None
    except BaseException:
        rf.close()
        raise


def _merge(job: Job, final: str) -> None:
    opts, ctx, seqs = job.opts, job.ctx, job.seqs
    if ctx.is_main:
        parts = [distributed.part_path(opts.prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]
        parts = [p for p in parts if os.path.exists(p)]
        outputs.merge_parts(parts, final, len(seqs), seqs.index)
        for p in parts:
            os.unlink(p)
    distributed.barrier(ctx)


def run(job: Job) -> Outcome:
    """The whole run: ``PREFIX.h5`` and its derived files (written on rank 0)."""
    opts, ctx, seqs = job.opts, job.ctx, job.seqs
    final = opts.prefix + ".h5"
    files = formats.derived_files(opts.prefix, job.heads, opts.formats)
    if prepare_output(final, job) == "complete":
        return Outcome(final, files, True)
    lo, hi = distributed.shard(len(seqs), ctx) if ctx.active else (0, len(seqs))
    path = distributed.part_path(opts.prefix, ctx) if ctx.active else final
    ok = True
    try:
        if hi > lo:
            run_part(job, seqs.subset(lo, hi), path)
    except UserError as e:
        if not ctx.active:
            raise
        print(f"{PROG}: error: rank {ctx.rank}: {e}", file=sys.stderr, flush=True)
        ok = False
    if ctx.active:
        if not distributed.all_ok(ctx, ok):
            raise UserError("a rank failed; rerun the same command to resume")
        _merge(job, final)
    if ctx.is_main:
        formats.write_derived(final, opts.prefix, opts.formats)
    return Outcome(final, files, False)
