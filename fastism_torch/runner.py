"""A resumable ISM run into files: chunks of sequences scored by :mod:`fastism_torch.pipeline`, each written
to ``PREFIX.h5`` (:class:`fastism_torch.outputs.ResultFile`) as soon as it is done.

An interrupted run resumes where it stopped when started again with the same settings; a finished one is
not redone.  Under ``torchrun`` each rank computes a contiguous block into its own part file and rank 0
merges them (:mod:`fastism_torch.distributed`), checking that every sequence arrived.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import distributed, outputs, pipeline
from .errors import UserError
from .inputs import Sequences

PROG = "fastism-torch"


@dataclass
class RunOptions:
    """Where and how a run writes: ``prefix`` of every file, ``formats`` extra outputs ("chrombpnet"),
    ``record`` what ``PREFIX.args.json`` keeps (the command and its options)."""
    prefix: str
    overwrite: bool = False
    chunk_size: int | None = None
    verbose: bool = False
    formats: tuple = ()
    record: dict = field(default_factory=dict)


@dataclass
class Job:
    """One run: the model, its sequences, what to score (``spec``, the reduced ``target_names``), the
    ``settings`` a resumed file must match, where to write (``opts``) and this process's rank (``ctx``)."""
    model: object
    seqs: Sequences
    spec: object
    target_names: list
    settings: dict
    opts: RunOptions
    ctx: distributed.Context = distributed.Context()


def info(opts: RunOptions, msg: str, ctx=distributed.Context()) -> None:
    if opts.verbose and ctx.is_main:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _differences(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def sidecar_paths(prefix: str, formats=()) -> list[str]:
    paths = [prefix + s for s in (".ohe.npz", ".attr.npz", ".proj.npz", ".regions.bed")]
    return paths + ([prefix + ".ism_scores.h5"] if "chrombpnet" in formats else [])


def write_derived(final: str, opts: RunOptions) -> None:
    outputs.write_sidecars(final, opts.prefix)
    if "chrombpnet" in opts.formats:
        outputs.write_chrombpnet(final, opts.prefix + ".ism_scores.h5")


def _existing(final: str, prefix: str, ctx) -> list[str]:
    found = [p for p in (final, final + ".partial") if os.path.exists(p)]
    if ctx.active:
        parts = [distributed.part_path(prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]
        found += [q for p in parts for q in (p, p + ".partial") if os.path.exists(q)]
    return found


def prepare_output(final: str, settings: dict, opts: RunOptions, ctx) -> str:
    """Check existing outputs against this run; returns 'complete', or 'go' after clearing what must go."""
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
    derived = sidecar_paths(opts.prefix, opts.formats)
    if opts.overwrite:
        distributed.barrier(ctx)
        if ctx.is_main:
            for p in existing + derived:
                if os.path.exists(p):
                    os.unlink(p)
        distributed.barrier(ctx)
    elif os.path.exists(final):
        if ctx.is_main:
            if not all(os.path.exists(p) for p in derived):
                write_derived(final, opts)
            print(f"{PROG}: {final} is already complete with these settings; nothing to do", file=sys.stderr)
        return "complete"
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
                and rf.h5["ism"].shape[0] == len(seqs):
            return True
        rf.close()
        print(f"{PROG}: warning: {rf.partial} is unreadable or from another run; starting over", file=sys.stderr)
    spec = job.spec
    rf.create(seqs, spec.window_for(seqs.onehot.shape[2]), spec.n_bases, job.target_names, job.settings, spec.raw)
    return False


def _chunks(job: Job, seqs: Sequences) -> range:
    window = job.spec.window_for(seqs.onehot.shape[2])
    refs = pipeline.predict(job.model, seqs.onehot[:1].astype(np.float32), window)
    per_seq = job.spec.n_bases * (window[1] - window[0]) * sum(int(np.prod(r.shape[1:])) for r in refs)
    return range(0, len(seqs), chunk_size(job.opts, per_seq))


def run_part(job: Job, seqs: Sequences, path: str) -> None:
    """Score ``seqs`` (this process's share of ``job.seqs``) into ``path`` chunk by chunk, resuming
    ``path.partial``."""
    rf = outputs.ResultFile(path)
    if os.path.exists(path):      # a complete part file from an interrupted torchrun: reuse it
        return
    try:
        if _open(rf, job, seqs):
            info(job.opts, f"resuming: {int(rf.done_mask().sum())} of {len(seqs)} sequences already in "
                           f"{rf.partial}", job.ctx)
        done = rf.done_mask()
        chunks = _chunks(job, seqs)
        bar = _progress(job.opts, job.ctx, len(seqs), int(done.sum()))
        try:
            for lo in chunks:
                hi = min(len(seqs), lo + chunks.step)
                if not done[lo:hi].all():
                    rf.write_chunk(lo, hi, pipeline.score(job.model, seqs.onehot[lo:hi], job.spec))
                    bar.update(int((~done[lo:hi]).sum()))
        finally:
            bar.close()
        rf.finish()
    except KeyboardInterrupt:
        n_done = int(rf.done_mask().sum()) if rf.h5 is not None else 0
        rf.close()
        print(f"\n{PROG}: interrupted; {n_done} of {len(seqs)} sequences are saved in {rf.partial}; "
              f"rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130)
    except OSError as e:
        rf.close()
        raise UserError(f"cannot write {rf.partial}: {e.strerror or e}; rerun the same command to resume "
                        f"once fixed") from None
    except BaseException:
        rf.close()
        raise


def run(job: Job) -> str:
    """The whole run: returns ``PREFIX.h5`` once it and its derived files are written (on rank 0)."""
    opts, ctx, seqs = job.opts, job.ctx, job.seqs
    final = opts.prefix + ".h5"
    if prepare_output(final, job.settings, opts, ctx) == "complete":
        return final
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
        if ctx.is_main:
            parts = [distributed.part_path(opts.prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]
            parts = [p for p in parts if os.path.exists(p)]
            outputs.merge_parts(parts, final, len(seqs), seqs.index)
            for p in parts:
                os.unlink(p)
        distributed.barrier(ctx)
    if ctx.is_main:
        write_derived(final, opts)
    return final
