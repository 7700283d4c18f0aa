"""``fastism-torch pairwise``: double-mutant maps, epistasis and dependency maps of a window, into files.

Sequences are read as by ``fastism-torch ism`` (FASTA, one-hot, BED + genome); each model output is reduced
per target (``--reduction``, ``--target``) with the ``ism`` command's functions; the map of every sequence
is computed by :func:`fastism_torch.pairwise` and written to ``PREFIX.h5`` as soon as it is done, so an
interrupted run resumes (same command) where it stopped.  ``PREFIX.png`` shows the first sequence
(:func:`fastism_torch.plot_pairwise.plot_pairwise`).

``PREFIX.h5`` (W = end - start, T targets; every value float32):

* ``pairwise`` (N, W, B, W, B, T): reduced output of every double mutant (:func:`fastism_torch.pairwise`);
  B = 4 bases, or B = 1 with ``--replace-with`` (both positions set to that vector, e.g. N);
* ``epistasis`` (N, W, B, W, B, T): ``y(ij) - y(i) - y(j) + y(ref)`` (NaN where i == j);
* ``dependency_map`` (N, W, W): tangermeme's dependency map (ISM attribution, averaged over the targets)
  restricted to rows in the window, ``[n, j, i]`` (not with ``--replace-with``: it needs substitutions);
* ``single`` (N, W, B, T): single mutants; ``ism`` (N, B, W, T): single-mutant ISM scores in the ``ism``
  command's convention (mutant - reference, mean-centred over the bases without ``--replace-with``);
  ``y_ref`` (N, T);
* ``seqs`` (N, 4, L) int8, ``names``, ``target_names``, ``done`` (N,); settings as attributes
  (``settings_json``), ``window_start``/``window_end``.

Under ``torchrun`` each rank computes a contiguous block of the sequences into its own resumable part file
``PREFIX.part{rank}of{world}.h5`` (:mod:`fastism_torch.distributed`), and rank 0 merges them, in input order,
into ``PREFIX.h5`` (the same file a single process writes) and draws the picture.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from . import distributed, inputs, pipeline, scores
from .errors import UserError
from .loading import EngineOptions, load_model, to_layout

PROG = "fastism-torch"
RESULT_OPTIONS = ("seq_len", "n_policy", "center_crop", "pad", "rna", "start", "end", "target", "reduction",
                  "profile_axis", "replace_with", "dtype", "engine", "no_check")
DATASETS = ("pairwise", "epistasis", "dependency_map", "single", "ism", "y_ref")


# --------------------------------------------------------------------------------------------- compute
def compute(eng, x: np.ndarray, window: tuple, reduction: str, profile_axis: int, targets, verbose=False,
            replace_with: np.ndarray | None = None) -> dict:
    """The datasets of :data:`DATASETS` for one-hot ``x`` ``(n, 4, L)`` (NCL), per the module docstring
    (``replace_with``: a (4,) vector both positions are set to; no dependency map)."""
    from .dependency import window_dependency
    from .pairwise import epistasis, pairwise

    def reduce(outs, refs):
        try:
            return scores.reduce_outputs(outs, refs, reduction, 1, profile_axis)
        except ValueError as e:
            raise UserError(str(e)) from None
    s, e = window
    xin = to_layout(x.astype(np.float32), eng.layout)
    pw, single, ref = pairwise(eng, xin, s, e, reduce=reduce, target=list(targets), return_single=True,
                               verbose=verbose, replace_with=replace_with)
    ism = scores.ism_scores(single.transpose(0, 2, 1, 3), ref, centre=replace_with is None)  # (n, B, W, T)
    out = dict(pairwise=pw, epistasis=epistasis(pw, single, ref), single=single, ism=ism, y_ref=ref)
    if replace_with is None:
        hot = x[:, :, s:e].transpose(0, 2, 1).astype(np.float64)              # (n, W, 4)
        out["dependency_map"] = window_dependency(pw.mean(-1), single.mean(-1), hot)
    return out


# --------------------------------------------------------------------------------------------- file
class PairwiseFile:
    """``PATH.partial`` written sequence by sequence (``done`` flags), renamed to ``PATH`` when complete."""

    def __init__(self, path: str):
        self.path, self.partial, self.h5 = path, path + ".partial", None

    @staticmethod
    def settings_of(path: str) -> dict | None:
        import h5py
        try:
            with h5py.File(path, "r") as f:
                return json.loads(f.attrs["settings_json"])
        except Exception:
            return None

    def open(self, seqs, window: tuple, target_names: list, settings: dict) -> np.ndarray:
        """Reopen a partial file of this run (``settings``, as many sequences), else create it; returns the done
        mask."""
        import h5py
        if os.path.exists(self.partial) and self.settings_of(self.partial) == settings:
            self.h5 = h5py.File(self.partial, "r+")
            if self.h5["done"].shape[0] == len(seqs):
                return self.h5["done"][...].astype(bool)
            self.close()
        n, w, t = len(seqs), window[1] - window[0], len(target_names)
        b = 4 if settings.get("replace_with") is None else 1
        f = self.h5 = h5py.File(self.partial, "w")
        shapes = dict(pairwise=(n, w, b, w, b, t), epistasis=(n, w, b, w, b, t), dependency_map=(n, w, w),
                      single=(n, w, b, t), ism=(n, b, w, t), y_ref=(n, t))
        if b == 1:
            del shapes["dependency_map"]
        for name, shape in shapes.items():
            f.create_dataset(name, shape=shape, dtype="f4", chunks=(1, *shape[1:]))
        f.create_dataset("seqs", data=seqs.onehot)
        f.create_dataset("done", shape=(n,), dtype="u1")
        f.create_dataset("names", data=np.asarray(seqs.names, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("target_names", data=np.asarray([str(x) for x in target_names], dtype=object),
                         dtype=h5py.string_dtype())
        f.attrs["settings_json"] = json.dumps(settings, sort_keys=True)
        f.attrs["window_start"], f.attrs["window_end"] = window
        f.flush()
        return np.zeros(n, dtype=bool)

    def write(self, lo: int, hi: int, values: dict) -> None:
        for name in DATASETS:
            if name in values:
                self.h5[name][lo:hi] = values[name]
        self.h5.flush()
        self.h5["done"][lo:hi] = 1
        self.h5.flush()

    def finish(self) -> None:
        self.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None


# --------------------------------------------------------------------------------------------- command
def _check_args(args) -> None:
    for opt in ("model", "seqs", "output"):
        if not getattr(args, opt):
            raise UserError(f"pairwise: -{opt[0]}/--{opt} is required")
    if args.start is None or args.end is None:
        raise UserError("pairwise: --start and --end are required (the window whose pairs are computed)")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive; got {args.batch_size}")
    pipeline.parse_replace(args.replace_with)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)


def _setup(args, ctx):
    from .distributed import resolve_device
    device = resolve_device(args.device, ctx)
    model = load_model(args.model, EngineOptions(device=device, batch_size=args.batch_size, dtype=args.dtype,
                                                 engine=args.engine, check=not args.no_check,
                                                 allow_unsafe=args.allow_unsafe))
    read = inputs.ReadOptions(args.seq_len or model.seq_len, args.n_policy, args.center_crop, args.pad, args.rna)
    with warnings.catch_warnings():
        if not ctx.is_main:                   # (rank 0 says it)
            warnings.simplefilter("ignore", inputs.InputWarning)
        seqs = inputs.load_sequences(args.seqs, read, genome=args.genome)
    seq_len = seqs.onehot.shape[2]
    model.bind(seq_len)
    spec = pipeline.ScoreSpec(window=(args.start, args.end), reduction=args.reduction,
                              profile_axis=args.profile_axis)
    window = pipeline.check_window(spec.window, seq_len)
    names_all = pipeline.target_names(model, seqs.onehot, spec)
    targets = pipeline.parse_targets(args.target, names_all) or list(range(len(names_all)))
    settings = {k: getattr(args, k) for k in RESULT_OPTIONS}
    settings.update(seq_len=int(seq_len), window=list(window), model=os.path.basename(args.model.rstrip("/")),
                    model_digest=model.digest, input_digest=seqs.digest(), n_sequences=len(seqs),
                    target_names=[names_all[i] for i in targets], command="pairwise")
    return model, seqs, window, targets, settings, device


def _part_paths(prefix: str, ctx) -> list:
    return [distributed.part_path(prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]


def _clear(final: str, args, ctx) -> None:
    """``--overwrite``: rank 0 removes the final file, its partial file and every rank's part files."""
    distributed.barrier(ctx)
    if ctx.is_main:
        parts = _part_paths(args.output, ctx) if ctx.active else []
        for p in [final + ".partial"] + [q for p in parts for q in (p, p + ".partial")]:
            if os.path.exists(p):
                os.unlink(p)
    distributed.barrier(ctx)


def _run_part(eng, seqs, path: str, window, targets, settings, args, ctx) -> int:
    """Compute ``seqs`` into ``path`` sequence by sequence, resuming ``path.partial``; 130 when interrupted."""
    from tqdm.auto import tqdm
    rf = PairwiseFile(path)
    if ctx.active and os.path.exists(path) and PairwiseFile.settings_of(path) == settings:
        return 0                              # a complete part of an interrupted torchrun
    done = rf.open(seqs, window, settings["target_names"], settings)
    replace = pipeline.parse_replace(args.replace_with)
    desc = "pairwise" if not ctx.active else f"pairwise rank {ctx.rank}"
    try:
        with tqdm(total=len(seqs), initial=int(done.sum()), disable=not args.verbose or not ctx.is_main,
                  unit="seq", desc=desc, file=sys.stderr) as bar:
            for n in np.flatnonzero(~done):
                rf.write(n, n + 1, compute(eng, seqs.onehot[n:n + 1], window, args.reduction, args.profile_axis,
                                           targets, verbose=args.verbose and ctx.is_main, replace_with=replace))
                bar.update(1)
        rf.finish()
    except KeyboardInterrupt:
        rf.close()
        print(f"\n{PROG}: interrupted; rerun the same command to resume from {rf.partial}", file=sys.stderr)
        return 130
    finally:
        rf.close()
    return 0


def _merge(final: str, seqs, window, settings, args, ctx) -> None:
    """Rank 0: the ranks' part files, in rank (= input) order, into ``final``; the parts are removed."""
    import h5py
    parts = _part_paths(args.output, ctx)
    rf = PairwiseFile(final)
    rf.open(seqs, window, settings["target_names"], settings)
    try:
        lo = 0
        for p in parts:
            with h5py.File(p, "r") as f:
                names = [k for k in DATASETS if k in f]
                for k in range(f["done"].shape[0]):
                    rf.write(lo + k, lo + k + 1, {name: f[name][k:k + 1] for name in names})
                lo += f["done"].shape[0]
        if lo != len(seqs):
            raise UserError(f"the part files hold {lo} sequences, not {len(seqs)}; rerun with --overwrite")
        rf.finish()
    finally:
        rf.close()
    for p in parts:
        os.unlink(p)


def cmd_pairwise(args) -> int:
    from .base import ISMBase
    ctx = distributed.context()
    _check_args(args)
    t0 = time.perf_counter()
    model, seqs, window, targets, settings, device = _setup(args, ctx)
    final = args.output + ".h5"
    if os.path.exists(final) and not args.overwrite:
        if PairwiseFile.settings_of(final) != settings:
            raise UserError(f"{final} exists with other settings; pass --overwrite or choose another -o")
        if ctx.is_main:
            print(f"{PROG}: {final} is already complete with these settings; nothing to do", file=sys.stderr)
        return 0
    eng = model.engine(window)
    if not isinstance(eng, ISMBase):
        raise UserError(f"pairwise needs a FastISM or NaiveISM engine; this model gives {type(eng).__name__}")
    distributed.init(ctx, device)
    try:
        if args.overwrite:
            _clear(final, args, ctx)
        lo, hi = distributed.shard(len(seqs), ctx) if ctx.active else (0, len(seqs))
        path = distributed.part_path(args.output, ctx) if ctx.active else final
        ok, code = True, 0
        try:
            code = _run_part(eng, seqs.subset(lo, hi), path, window, targets, settings, args, ctx) if hi > lo else 0
        except UserError as e:
            if not ctx.active:
                raise
            print(f"{PROG}: error: rank {ctx.rank}: {e}", file=sys.stderr, flush=True)
            ok = False
        if code:
            return code
        if ctx.active:
            if not distributed.all_ok(ctx, ok):
                raise UserError("a rank failed; rerun the same command to resume")
            if ctx.is_main:
                _merge(final, seqs, window, settings, args, ctx)
            distributed.barrier(ctx)
    finally:
        distributed.shutdown(ctx)
    if ctx.is_main:
        _picture(final, args)
    if args.verbose and ctx.is_main:
        print(f"{PROG}: wrote {final} and {args.output}.png in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def _picture(path: str, args) -> None:
    import h5py
    from .plot_pairwise import plot_pairwise
    with h5py.File(path, "r") as f:
        s, e = (int(v) for v in (f.attrs["window_start"], f.attrs["window_end"]))
        eps, ism = f["epistasis"][0], f["ism"][0]
        onehot, name = f["seqs"][0, :, s:e], f["names"][0].decode()
    ism = np.repeat(ism, 4, axis=0) if ism.shape[0] == 1 else ism          # --replace-with: one score a position
    try:
        plot_pairwise(eps.mean(-1), ism.mean(-1), onehot, args.output + ".png", start=s, title=name, dpi=args.dpi)
    except OSError as err:
        raise UserError(f"cannot write {args.output}.png: {err.strerror or err}") from None


# --------------------------------------------------------------------------------------------- parser
def add_parser(sub) -> None:
    """Register ``pairwise`` on the ``fastism-torch`` subparsers ``sub``."""
    s = sub.add_parser("pairwise", help="double-mutant maps, epistasis and dependency maps of a window",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__.split("\n")[0])
    g = s.add_argument_group("input and output")
    g.add_argument("-m", "--model", help="as for 'ism': Keras, ONNX or path/to/file.py:factory")
    g.add_argument("-s", "--seqs", help="FASTA, one-hot .npy/.npz (N, 4, L), or BED with --genome")
    g.add_argument("--genome", help="reference genome FASTA for a BED -s")
    g.add_argument("-o", "--output", help="output prefix: PREFIX.h5 and PREFIX.png")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    g.add_argument("-v", "--verbose", action="store_true", help="progress bars and timings on stderr")
    g.add_argument("--dpi", type=int, default=150, help="resolution of PREFIX.png")
    g = s.add_argument_group("sequences")
    g.add_argument("--seq-len", type=int, help="model input length (default: the model's, else the sequences')")
    g.add_argument("--n-policy", choices=inputs.N_POLICIES, default="zero", help="N and other ambiguous bases")
    g.add_argument("--rna", action="store_true", help="read U as T")
    g.add_argument("--center-crop", action="store_true", help="centre-crop longer sequences to the model length")
    g.add_argument("--pad", action="store_true", help="pad shorter sequences with N on both sides")
    g = s.add_argument_group("window and scores")
    g.add_argument("--start", "--window-start", dest="start", type=int,
                   help="first position of the window (0-based); under torchrun spell it --window-start")
    g.add_argument("--end", "--window-end", dest="end", type=int,
                   help="position after the window's last one (negative: from the end)")
    g.add_argument("--target", help="output(s) to keep: index or name, comma-separated (default: all)")
    g.add_argument("--reduction", choices=scores.REDUCTIONS, default="none",
                   help="per-target value of a profile model's outputs (as for 'ism')")
    g.add_argument("--profile-axis", type=int, default=-1, help="profile (length) axis of the profile output")
    g.add_argument("--replace-with", help="set both positions to 0/N, uniform or 'a,c,g,t' instead of every "
                                          "base (one value per pair; no dependency map)")
    g = s.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, help="edits per forward pass (default: the engine's)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    g.add_argument("--engine", choices=("fast", "naive"), default="fast")
    g.add_argument("--no-check", action="store_true", help="skip FastISM's self-check against naive ISM")
    g.add_argument("--allow-unsafe", action="store_true", help="let Lambda-layer code in a Keras file run")
    s.set_defaults(func=cmd_pairwise)
