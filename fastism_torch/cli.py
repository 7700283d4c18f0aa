"""The ``fastism-torch`` command: ``ism`` (FASTA in, ISM maps and modisco-ready files out) and ``plot``.

``fastism-torch ism -m MODEL -s SEQS -o PREFIX`` writes ``PREFIX.h5`` (see :class:`fastism_torch.io.ResultFile`),
``PREFIX.ohe.npz``, ``PREFIX.attr.npz``, ``PREFIX.regions.bed`` and ``PREFIX.args.json``.  The work is done in
chunks of sequences, each written as soon as it is done, so an interrupted run resumes where it stopped when
the same command is run again.  Under ``torchrun`` the sequences are sharded across ranks.

User errors (bad files, options or models) print one line and exit with status 1, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import io as fio
from . import scores
from .io import UserError

PROG = "fastism-torch"

# Options that change results: a resumed or existing output must agree on all of them.
RESULT_OPTIONS = ("seq_len", "n_policy", "center_crop", "pad", "start", "end", "replace_with", "target",
                  "reduction", "profile_axis", "rc_average", "hypothetical", "raw", "dtype")


# ------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model ready to be wrapped in an ISM engine.

    ``make_engine(change_ranges)`` returns an object with the :class:`fastism_torch.FastISM` API.
    """
    kind: str                      # "torch", "keras" or "onnx"
    seq_len: int | None
    layout: str
    target_names: list | None
    digest: str | None
    make_engine: object = None
    instantiate: object = None     # torch: seq_len -> None (sets make_engine)
    engines: dict = field(default_factory=dict)

    def engine(self, change_ranges):
        key = None if change_ranges is None else tuple(change_ranges)
        if key not in self.engines:
            self.engines[key] = self.make_engine(change_ranges)
        return self.engines[key]


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def _info(args, msg: str) -> None:
    if getattr(args, "verbose", False) and getattr(args, "_is_main", True):
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _torch_dtype(name):
    import torch
    return None if name in (None, "float32") else getattr(torch, name)


def _engine_kwargs(args, device):
    return dict(device=device, batch_size=args.batch_size, dtype=_torch_dtype(args.dtype))


def _build_engine(model, seq_len, layout, change_ranges, args, device):
    """The ISM engine for a PyTorch model: FastISM, or NaiveISM with ``--engine naive`` or as a fallback."""
    import fastism_torch as ft
    kw = dict(seq_len=seq_len, num_chars=4, layout=layout, change_ranges=change_ranges,
              **_engine_kwargs(args, device))
    if args.engine == "fast" and getattr(ft, "FastISM", None) is not None:
        try:
            return ft.FastISM(model, test_correctness=not args.no_check, **kw)
        except Exception as e:  # an unsupported model: the exact but slower engine still works
            _warn(f"FastISM cannot run this model ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                  f"using NaiveISM")
    return ft.NaiveISM(model, **kw)


def _split_factory(spec: str):
    """``path/to/file.py:factory`` -> (path, factory) or None."""
    if ":" not in spec:
        return None
    path, _, name = spec.rpartition(":")
    if path.endswith(".py") and name.isidentifier():
        return path, name
    return None


def load_model(spec: str, args, device: str) -> LoadedModel:
    """Load MODEL: ``file.py:factory`` (PyTorch), ``.onnx``, or a Keras ``.h5``/``.keras``/SavedModel folder."""
    fac = _split_factory(spec)
    if fac is not None:
        return _load_torch(*fac, args, device)
    if spec.endswith(".py"):
        raise UserError(f"model {spec!r}: name the factory function too, as {spec}:make_model")
    if not os.path.exists(spec):
        raise UserError(f"model {spec!r}: no such file or folder")
    low = spec.lower().rstrip("/")
    if low.endswith(".onnx"):
        kind, loader = "onnx", "from_onnx"
    elif low.endswith((".h5", ".hdf5", ".keras")) or os.path.isdir(spec):
        kind, loader = "keras", "from_keras"
    else:
        raise UserError(f"model {spec!r}: unknown model format; use a .h5/.keras file, a SavedModel folder, "
                        f"a .onnx file or file.py:factory")
    import fastism_torch as ft
    kw = _engine_kwargs(args, device)

    def make(change_ranges):
        fn = getattr(ft, loader)
        try:
            try:
                return fn(spec, change_ranges=change_ranges, **kw)
            except TypeError:
                return fn(spec)
        except UserError:
            raise
        except ImportError as e:
            raise UserError(f"model {spec!r}: loading {kind} models needs extra packages "
                            f"(pip install 'fastism-torch[{kind}]'): {e}") from None
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"model {spec!r} does not load: {type(e).__name__}: {msg}") from None

    eng = make(None)   # load once to learn the length, layout and output names
    lm = LoadedModel(kind, int(eng.seq_len), getattr(eng, "layout", "NLC"),
                     getattr(eng, "output_names", None) or getattr(eng, "target_names", None),
                     fio.file_digest(spec), make_engine=make)
    lm.engines[None] = eng
    return lm


def _load_torch(path: str, name: str, args, device: str) -> LoadedModel:
    from torch import nn
    if not os.path.isfile(path):
        raise UserError(f"model file {path!r}: no such file")
    mod_name = "_fastism_user_model_" + str(abs(hash(os.path.abspath(path))))
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"model file {path!r} does not load: {type(e).__name__}: {msg}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"model file {path!r} has no function {name!r}")
    try:
        takes_len = "seq_len" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_len = False
    lm = LoadedModel("torch", getattr(module, "SEQ_LEN", None), getattr(module, "LAYOUT", "NCL"),
                     getattr(module, "TARGET_NAMES", None), fio.file_digest(path))

    def instantiate(seq_len):
        try:
            model = factory(seq_len=seq_len) if takes_len else factory()
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"model factory {path}:{name} failed: {type(e).__name__}: {msg}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"model factory {path}:{name} returned {type(model).__name__}, not a torch.nn.Module")
        lm.layout = getattr(model, "layout", lm.layout)
        lm.target_names = getattr(model, "target_names", None) or lm.target_names
        if getattr(model, "seq_len", None) not in (None, seq_len):
            raise UserError(f"model factory {path}:{name} made a model for length {model.seq_len}, "
                            f"but the sequences have length {seq_len}")
        lm.seq_len = seq_len
        lm.make_engine = lambda ranges: _build_engine(model, seq_len, lm.layout, ranges, args, device)
    lm.instantiate = instantiate
    if lm.layout not in ("NCL", "NLC"):
        raise UserError(f"model file {path!r}: LAYOUT must be 'NCL' or 'NLC'; got {lm.layout!r}")
    return lm


# ------------------------------------------------------------------------------------------- compute
@dataclass
class Job:
    """Everything the per-chunk computation needs."""
    model: LoadedModel
    seq_len: int
    window: tuple
    replace: np.ndarray | None     # (4,) replacement vector, or None for full saturation
    reduction: str
    profile_axis: int
    targets: list | None
    rc_average: bool
    hypothetical: bool
    raw: bool


def _to_model_layout(x, layout):
    return x if layout == "NCL" else np.ascontiguousarray(x.transpose(0, 2, 1))


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _raw_edits(job: Job, x: np.ndarray, window: tuple, replace) -> list:
    """Raw model outputs per head, ``(n, K, Lw, *out)`` in forward (NCL) base/position order."""
    s, e = window
    full = (s, e) == (0, job.seq_len)
    ranges = None if full else [(i, i + 1) for i in range(s, e)]
    eng = job.model.engine(ranges)
    eng_ranges = getattr(eng, "change_ranges", None)
    if eng_ranges is not None and len(eng_ranges) == job.seq_len and not full:
        pick = np.arange(s, e)        # an engine that cannot restrict its ranges: slice the full result
    else:
        pick = None
    layout = getattr(eng, "layout", "NCL")
    xin = _to_model_layout(x, layout)
    if replace is None and (full or pick is not None):
        outs = _as_list(eng.saturation_mutagenesis(xin))
        if layout == "NLC":
            outs = [np.swapaxes(o, 1, 2) for o in outs]            # (n, 4, L, *out)
        if pick is not None:
            outs = [o[:, :, pick] for o in outs]
        return outs
    reps = [replace] if replace is not None else list(np.eye(4, dtype=np.float32))
    per_base = []
    for r in reps:
        o = _as_list(eng(xin, replace_with=r))                     # (n, R, *out)
        if pick is not None:
            o = [a[:, pick] for a in o]
        per_base.append(o)
    return [np.stack(hs, axis=1) for hs in zip(*per_base)]


def _strand_values(job: Job, x: np.ndarray, window: tuple, replace):
    """Reduced values ``(n, K, Lw, T_all)`` for the edits and ``(n, T_all)`` for the references."""
    import torch
    eng = job.model.engine(None if window == (0, job.seq_len) else [(i, i + 1) for i in range(*window)])
    refs = [torch.from_numpy(np.asarray(r)) for r in _as_list(eng.predict(_to_model_layout(x, eng.layout)))]
    muts = [torch.from_numpy(np.asarray(m)) for m in _raw_edits(job, x, window, replace)]
    try:
        v_ref = scores.reduce_outputs(refs, refs, job.reduction, 1, job.profile_axis)
        v_mut = scores.reduce_outputs(muts, [r[:, None, None] for r in refs], job.reduction, 3, job.profile_axis)
    except ValueError as e:
        raise UserError(str(e)) from None
    return v_mut.numpy(), v_ref.numpy()


def compute_chunk(job: Job, x: np.ndarray):
    """``(ism, attr, y_ref, raw)`` for one chunk of one-hot sequences ``x`` (n, 4, L)."""
    v_mut, v_ref = _strand_values(job, x, job.window, job.replace)
    if job.rc_average:
        s, e = job.window
        rc_window = (job.seq_len - e, job.seq_len - s)
        rc_rep = None if job.replace is None else job.replace[::-1].copy()
        m2, r2 = _strand_values(job, scores.reverse_complement(x), rc_window, rc_rep)
        v_mut = (v_mut + scores.from_reverse_strand(m2)) / 2
        v_ref = (v_ref + r2) / 2
    v_mut = scores.select_targets(v_mut, job.targets)
    v_ref = scores.select_targets(v_ref, job.targets)
    ism = scores.ism_scores(v_mut, v_ref, centre=job.replace is None)
    attr = scores.attributions(ism, x[:, :, job.window[0]:job.window[1]], job.hypothetical)
    return (ism.astype(np.float32), attr, v_ref.astype(np.float32),
            v_mut.astype(np.float32) if job.raw else None)


# ------------------------------------------------------------------------------------------- options
def _parse_targets(spec, names: list, n: int):
    if spec is None or spec == "":
        return None
    out = []
    for tok in str(spec).split(","):
        tok = tok.strip()
        if tok in names:
            out.append(names.index(tok))
        elif tok.lstrip("-").isdigit() and -n <= int(tok) < n:
            out.append(int(tok) % n)
        else:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise UserError(f"--target {tok!r} does not exist; the model has {n} target(s): {shown}")
    return out


def _parse_replace(spec):
    if spec is None:
        return None
    txt = str(spec).strip().upper()
    if txt in ("0", "ZERO", "N"):
        return np.zeros(4, dtype=np.float32)
    if txt in ("UNIFORM",):
        return np.full(4, 0.25, dtype=np.float32)
    try:
        v = np.asarray([float(t) for t in txt.split(",")], dtype=np.float32)
    except ValueError:
        v = None
    if v is None or v.shape != (4,) or not np.isfinite(v).all():
        raise UserError(f"--replace-with must be 0, N, uniform or 4 comma-separated numbers (A,C,G,T); got {spec!r}")
    return v


def _resolve_device(name, ctx):
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


def _settings(args, seqs, model: LoadedModel, target_names, window, n_bases) -> dict:
    s = {k: getattr(args, k) for k in RESULT_OPTIONS}
    s["seq_len"] = int(seqs.onehot.shape[2])
    s.update(model=os.path.basename(args.model.rstrip("/")), model_kind=model.kind, model_digest=model.digest,
             input_digest=seqs.digest(), n_sequences=len(seqs), window=list(window), n_bases=n_bases,
             target_names=[str(t) for t in target_names], convention="mutant-reference, mean-centred over bases",
             format_version=1)
    return s


def _differences(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------------- ism
def cmd_ism(args) -> int:
    from . import distributed
    ctx = distributed.context()
    args._is_main = ctx.is_main
    for opt in ("model", "seqs", "output"):
        if not getattr(args, opt):
            raise UserError(f"ism: -{opt[0]}/--{opt} is required (on the command line or in -p params.json)")
    if args.hypothetical and args.replace_with is not None:
        raise UserError("--hypothetical needs full saturation; it cannot be combined with --replace-with")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive; got {args.batch_size}")
    prefix = args.output
    out_dir = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"output folder {out_dir} is not writable")
    device = _resolve_device(args.device, ctx)
    replace = _parse_replace(args.replace_with)

    t0 = time.perf_counter()
    model = load_model(args.model, args, device)
    seq_len = args.seq_len or model.seq_len
    seqs = fio.load_sequences(args.seqs, seq_len, args.n_policy, args.center_crop, args.pad)
    if seqs.skipped:
        if ctx.is_main:
            _warn(f"--n-policy skip: left out {len(seqs.skipped)} sequence(s) with ambiguous bases "
                  f"(first: {seqs.skipped[0]!r})")
    seq_len = seqs.onehot.shape[2]
    if model.instantiate is not None:
        model.instantiate(seq_len)
    elif model.seq_len != seq_len:
        raise UserError(f"the model takes length {model.seq_len} but the sequences have length {seq_len}")
    _info(args, f"read {len(seqs)} sequences of length {seq_len} in {time.perf_counter() - t0:.2f}s")

    start = 0 if args.start is None else args.start
    end = seq_len if args.end is None else args.end
    if end < 0:
        end += seq_len
    if not (0 <= start < end <= seq_len):
        raise UserError(f"--start/--end must satisfy 0 <= start < end <= {seq_len}; got {start}, {end}")
    window = (start, end)

    # Probe one sequence for the number of targets and their names.
    probe = Job(model, seq_len, window, replace, args.reduction, args.profile_axis, None, args.rc_average,
                args.hypothetical, False)
    import torch
    eng = model.engine(None if window == (0, seq_len) else [(i, i + 1) for i in range(*window)])
    try:
        ref0 = [torch.from_numpy(np.asarray(r))
                for r in _as_list(eng.predict(_to_model_layout(seqs.onehot[:1].astype(np.float32), eng.layout)))]
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"the model fails on the sequences ({type(e).__name__}: {msg})") from None
    try:
        t_all = scores.reduce_outputs(ref0, ref0, args.reduction, 1, args.profile_axis).shape[-1]
    except ValueError as e:
        raise UserError(str(e)) from None
    names_all = [str(n) for n in model.target_names] if model.target_names is not None and \
        len(model.target_names) == t_all else [str(i) for i in range(t_all)]
    targets = _parse_targets(args.target, names_all, t_all)
    target_names = names_all if targets is None else [names_all[i] for i in targets]
    job = Job(**{**probe.__dict__, "targets": targets, "raw": args.raw})
    n_bases = 1 if replace is not None else 4
    settings = _settings(args, seqs, model, target_names, window, n_bases)

    if ctx.active:
        distributed.init(ctx, device)
    final = prefix + ".h5"
    status = _prepare_output(final, prefix, settings, args, ctx)
    if status == "complete":
        distributed.shutdown(ctx)
        return 0

    # This process's sequences and its file (the final file, or a part file under torchrun).
    lo, hi = distributed.shard(len(seqs), ctx) if ctx.active else (0, len(seqs))
    mine = _subset(seqs, lo, hi)
    path = distributed.part_path(prefix, ctx) if ctx.active else final
    ok = True
    if len(mine):
        ok = _run_part(job, mine, path, settings, window, n_bases, target_names, args, ctx, total=len(seqs))
    if ctx.active:
        if not distributed.all_ok(ctx, ok):
            distributed.shutdown(ctx)
            if ctx.is_main:
                raise UserError("another rank failed; rerun the same command to resume")
            return 1
        if ctx.is_main:
            parts = [distributed.part_path(prefix, distributed.Context(r, ctx.world, 0)) for r in range(ctx.world)]
            parts = [p for p in parts if os.path.exists(p)]
            distributed.merge_parts(parts, final)
            for p in parts:
                os.unlink(p)
        distributed.barrier(ctx)
    if ctx.is_main:
        fio.write_sidecars(final, prefix)
        _info(args, f"wrote {final} and {prefix}.{{ohe,attr}}.npz, {prefix}.regions.bed, {prefix}.args.json "
                    f"in {time.perf_counter() - t0:.1f}s")
    distributed.shutdown(ctx)
    return 0


def _subset(seqs: fio.Sequences, lo: int, hi: int) -> fio.Sequences:
    return fio.Sequences(names=seqs.names[lo:hi], onehot=seqs.onehot[lo:hi], index=seqs.index[lo:hi],
                         chrom=None if seqs.chrom is None else seqs.chrom[lo:hi],
                         start=None if seqs.start is None else seqs.start[lo:hi],
                         end=None if seqs.end is None else seqs.end[lo:hi])


def _prepare_output(final: str, prefix: str, settings: dict, args, ctx) -> str:
    """Check existing outputs against this run; returns 'complete', or 'go' after clearing what must go."""
    from . import distributed
    sidecars = [prefix + s for s in (".ohe.npz", ".attr.npz", ".regions.bed")]
    existing = [p for p in (final, final + ".partial") if os.path.exists(p)]
    if ctx.active:
        existing += [p for p in (distributed.part_path(prefix, distributed.Context(r, ctx.world, 0))
                                 for r in range(ctx.world)) for p in (p, p + ".partial") if os.path.exists(p)]
    for p in existing:
        try:
            old = fio.ResultFile.stored_settings(p)
        except Exception:
            old = None   # unreadable partial file: it is replaced below
            if p == final and not args.overwrite:
                raise UserError(f"{final} exists but is not a readable result file; pass --overwrite to replace it")
        if old is not None and old != settings and not args.overwrite:
            diff = ", ".join(_differences(old, settings))
            raise UserError(f"{p} exists with different settings ({diff}); pass --overwrite to replace it, "
                            f"or choose another -o")
    if args.overwrite:
        distributed.barrier(ctx)
        if ctx.is_main:
            for p in existing + sidecars:
                if os.path.exists(p):
                    os.unlink(p)
        distributed.barrier(ctx)
    elif os.path.exists(final):
        if ctx.is_main and not all(os.path.exists(p) for p in sidecars):
            fio.write_sidecars(final, prefix)
        if ctx.is_main:
            print(f"{PROG}: {final} is already complete with these settings; nothing to do", file=sys.stderr)
        return "complete"
    if ctx.is_main:
        record = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
        fio.save_json(prefix + ".args.json", {"command": sys.argv, "args": record, "settings": settings,
                                              "version": _version()})
    return "go"


def _version():
    from . import __version__
    return __version__


def _chunk_size(args, n_values_per_seq: int) -> int:
    if args.chunk_size:
        return max(1, int(args.chunk_size))
    budget = 256 << 20          # bytes of raw outputs held per chunk (float64 while reducing)
    return int(np.clip(budget // max(1, 8 * n_values_per_seq), 1, 64))


def _run_part(job: Job, seqs: fio.Sequences, path: str, settings: dict, window, n_bases, target_names, args,
              ctx, total: int) -> bool:
    """Compute this process's sequences into ``path`` (resuming ``path.partial``); True on success."""
    rf = fio.ResultFile(path)
    if os.path.exists(path):      # a complete part file from an interrupted torchrun: reuse it
        return True
    resumed = False
    if os.path.exists(rf.partial):
        if rf.open_partial() is not None and fio.ResultFile.stored_settings(rf.partial) == settings \
                and rf.h5["ism"].shape[0] == len(seqs):
            resumed = True
        else:
            rf.close()
            _warn(f"{rf.partial} is unreadable or from another run; starting over")
    try:
        if not resumed:
            rf.create(seqs, window, n_bases, target_names, settings, job.raw)
        done = rf.done_mask()
        if resumed:
            _info(args, f"resuming: {int(done.sum())} of {len(seqs)} sequences already in {rf.partial}")
        # Raw outputs per sequence decide how many sequences a chunk holds.
        eng = job.model.engine(None if window == (0, job.seq_len) else [(i, i + 1) for i in range(*window)])
        ref0 = _as_list(eng.predict(_to_model_layout(seqs.onehot[:1].astype(np.float32), eng.layout)))
        per_seq = n_bases * (window[1] - window[0]) * sum(int(np.prod(np.shape(r)[1:])) for r in ref0)
        step = _chunk_size(args, per_seq)
        bar = _progress(args, ctx, len(seqs), int(done.sum()))
        try:
            for lo in range(0, len(seqs), step):
                hi = min(len(seqs), lo + step)
                if done[lo:hi].all():
                    continue
                x = seqs.onehot[lo:hi].astype(np.float32)
                ism, attr, y_ref, raw = compute_chunk(job, x)
                rf.write_chunk(lo, hi, ism, attr, y_ref, raw)
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
    return True


def _progress(args, ctx, total, initial):
    from tqdm.auto import tqdm
    desc = "ISM" if not ctx.active else f"ISM rank {ctx.rank}"
    return tqdm(total=total, initial=initial, disable=not args.verbose or not ctx.is_main, unit="seq",
                desc=desc, dynamic_ncols=True, file=sys.stderr, mininterval=0.2)


# ------------------------------------------------------------------------------------------- plot
def cmd_plot(args) -> int:
    import h5py
    from . import plot
    if not os.path.isfile(args.result):
        raise UserError(f"{args.result}: no such file")
    try:
        f = h5py.File(args.result, "r")
    except OSError:
        raise UserError(f"{args.result}: not an HDF5 result file") from None
    with f:
        if "ism" not in f or "names" not in f:
            raise UserError(f"{args.result}: not a fastism-torch result file (no 'ism' dataset)")
        if not bool(f.attrs.get("complete", False)):
            _warn(f"{args.result} is not complete")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][...]]
        if args.seq is None:
            i = 0
        elif args.seq in names:
            i = names.index(args.seq)
        elif args.seq.isdigit() and int(args.seq) < len(names):
            i = int(args.seq)
        else:
            raise UserError(f"--seq {args.seq!r} is not in {args.result} (names: {', '.join(names[:10])}"
                            f"{', ...' if len(names) > 10 else ''})")
        ws, we = int(f.attrs["window_start"]), int(f.attrs["window_end"])
        ism = f["ism"][i]                               # (K, Lw, T)
        onehot = f["seqs"][i, :, ws:we].astype(np.float32)
        tnames = [t.decode() if isinstance(t, bytes) else str(t) for t in f["target_names"][...]]
        offset = int(f["start"][i]) if "start" in f else 0
        chrom = (f["chrom"][i].decode() if isinstance(f["chrom"][i], bytes) else str(f["chrom"][i])) \
            if "chrom" in f else None
    s = ws if args.start is None else args.start
    e = we if args.end is None else args.end
    if not (ws <= s < e <= we):
        raise UserError(f"--start/--end must lie in the computed window [{ws}, {we}); got {s}, {e}")
    if args.target is not None:
        t = _parse_targets(args.target, tnames, len(tnames))
        ism = ism[..., t]
    heat = ism.mean(-1)[:, s - ws:e - ws]
    seq = onehot[:, s - ws:e - ws]
    region = f"{chrom}:{offset + s}-{offset + e}" if chrom else None
    title = args.title or (names[i] if region in (None, names[i]) else f"{names[i]}  ({region})")
    try:
        plot.plot_ism(heat, seq, args.output, start=s, title=title, dpi=args.dpi)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"{PROG}: wrote {args.output}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fast exact in-silico saturation mutagenesis (ISM).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{ism,plot}")
    sub.required = True

    s = sub.add_parser("ism", help="compute ISM maps for sequences in a FASTA (or one-hot) file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("-p", "--params", help="JSON file of options (keys are long option names); the command "
                                          "line overrides it")
    g = s.add_argument_group("input and output")
    g.add_argument("-m", "--model", help="Keras .h5/.keras/SavedModel folder, .onnx file, or PyTorch "
                                         "path/to/file.py:factory (factory() returns an nn.Module taking (N, 4, L))")
    g.add_argument("-s", "--seqs", help="FASTA (plain or bgzipped) or one-hot .npy/.npz ((N, 4, L), ACGT)")
    g.add_argument("-o", "--output", help="output prefix: writes PREFIX.h5, PREFIX.ohe.npz, PREFIX.attr.npz, "
                                          "PREFIX.regions.bed, PREFIX.args.json")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output with other settings")
    g.add_argument("-v", "--verbose", action="store_true", help="progress bar and timings on stderr")
    g = s.add_argument_group("sequences")
    g.add_argument("--seq-len", type=int, help="model input length (default: the model's, else the sequences')")
    g.add_argument("--n-policy", choices=fio.N_POLICIES, default="zero",
                   help="N and other ambiguous bases: all-zero column, skip the sequence, or stop with an error")
    g.add_argument("--center-crop", action="store_true", help="centre-crop longer sequences to the model length")
    g.add_argument("--pad", action="store_true", help="pad shorter sequences with N on both sides")
    g = s.add_argument_group("mutagenesis and scores")
    g.add_argument("--start", "--window-start", dest="start", type=int,
                   help="first position to mutate (0-based); under torchrun spell it --window-start")
    g.add_argument("--end", "--window-end", dest="end", type=int, help="position after the last one to mutate")
    g.add_argument("--replace-with", help="replace each position with 0/N, uniform or 'a,c,g,t' instead of "
                                          "full saturation (scores: mutant - reference)")
    g.add_argument("--target", help="output(s) to score: index or name, comma-separated (default: mean of all)")
    g.add_argument("--reduction", choices=scores.REDUCTIONS, default="none",
                   help="per-target value of a profile model's outputs")
    g.add_argument("--profile-axis", type=int, default=-1, help="profile (length) axis of the profile output, "
                                                                 "counted over one sequence's output")
    g.add_argument("--rc-average", action="store_true", help="average with the reverse-complement strand")
    g.add_argument("--hypothetical", action="store_true", help="attr.npz holds all 4 bases, not only the "
                                                                "observed one")
    g.add_argument("--raw", action="store_true", help="also store raw (reduced) mutant predictions as 'raw'")
    g = s.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, help="edits per forward pass (default: the engine's)")
    g.add_argument("--chunk-size", type=int, help="sequences per written chunk (default: by output size)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="compute precision (autocast)")
    g.add_argument("--engine", choices=("fast", "naive"), default="fast",
                   help="FastISM, or NaiveISM (one full forward pass per edit)")
    g.add_argument("--no-check", action="store_true", help="skip FastISM's self-check against naive ISM")
    s.set_defaults(func=cmd_ism)

    q = sub.add_parser("plot", help="heatmap and sequence logo of one sequence's ISM map")
    q.add_argument("result", help="PREFIX.h5 written by 'fastism-torch ism'")
    q.add_argument("--seq", help="sequence name (or index); default: the first")
    q.add_argument("-o", "--output", default="ism.png", help="image file (.png, .pdf, .svg)")
    q.add_argument("--start", type=int, help="first position to show")
    q.add_argument("--end", type=int, help="position after the last one to show")
    q.add_argument("--target", help="target(s) to show (default: mean of all)")
    q.add_argument("--title", help="figure title")
    q.add_argument("--dpi", type=int, default=150)
    q.set_defaults(func=cmd_plot)
    return p


def _apply_params(parser, argv):
    """Re-parse with ``-p params.json`` values as defaults of the ``ism`` subcommand."""
    args = parser.parse_args(argv)
    if getattr(args, "params", None) is None:
        return args
    try:
        with open(args.params) as fh:
            params = json.load(fh)
    except OSError as e:
        raise UserError(f"{args.params}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{args.params}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(params, dict):
        raise UserError(f"{args.params}: expected a JSON object of options")
    known = {k for k in vars(args) if not k.startswith("_")} - {"func", "command", "params"}
    clean = {}
    for k, v in params.items():
        key = k.lstrip("-").replace("-", "_")
        if key not in known:
            raise UserError(f"{args.params}: unknown option {k!r}")
        clean[key] = v
    sub = parser._subparsers._group_actions[0].choices[args.command]
    sub.set_defaults(**clean)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = _apply_params(parser, argv)
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:   # full disk, permissions, ... while writing outputs
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
