"""The ``fastism-torch`` command: a parser over library calls.

* ``ism``: sequences (FASTA, one-hot, or BED regions of a genome) in; ``PREFIX.h5`` and modisco-,
  chrombpnet- and browser-ready files out (:mod:`fastism_torch.runner`, :mod:`fastism_torch.pipeline`,
  :mod:`fastism_torch.formats`).
* ``pairwise``: double-mutant maps, epistasis and dependency maps of a window (:mod:`fastism_torch.cli_pairwise`).
* ``plot``: heatmap and logo of one sequence (:mod:`fastism_torch.plot`).
* ``bigwig``: the projected scores as a bigWig track (:func:`fastism_torch.formats.write_bigwig`).

User errors (bad files, options or models) print one line and exit with status 1, without a traceback;
Ctrl-C and SIGTERM stop a run keeping what is computed (exit status 130 and 143).  A subcommand is a
function in :data:`SUBCOMMANDS` that adds its parser.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import warnings

from . import distributed, formats, inputs, outputs, pipeline, runner, scores
from .distributed import resolve_device
from .errors import UserError, first_line
from .loading import EngineOptions, load_model

PROG = runner.PROG

# Options that change results: a resumed or existing output must agree on all of them.
RESULT_OPTIONS = ("n_policy", "center_crop", "pad", "rna", "replace_with", "target", "reduction", "profile_axis",
                  "rc_average", "raw", "dtype", "engine", "no_check")


def _version():
    from . import __version__
    return __version__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- ism
def _check_output_prefix(output: str) -> None:
    """``-o`` is a prefix of file names, in a folder that exists or can be created (created only once the
    run starts, so an early error leaves no empty folder behind)."""
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        example = os.path.join(output.rstrip("/" + os.sep) or ".", "run")
        raise UserError(f"-o {output} is a folder; -o takes a prefix for the output files "
                        f"(e.g. -o {example} writes {example}.h5, {example}.attr.npz, ...)")
    near = runner.existing_ancestor(os.path.dirname(os.path.abspath(output)))
    if not os.path.isdir(near):
        raise UserError(f"cannot create output folder for -o {output}: {near} is not a folder")
    if not os.access(near, os.W_OK):
        raise UserError(f"output folder {near} is not writable")


def _check_ism_args(args) -> None:
    for opt in ("model", "seqs", "output"):
        if not getattr(args, opt):
            raise UserError(f"ism: -{opt[0]}/--{opt} is required (on the command line or in -p params.json)")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive; got {args.batch_size}")
    if args.max_output_gb is not None and args.max_output_gb <= 0:
        raise UserError(f"--max-output-gb must be positive; got {args.max_output_gb}")
    _check_output_prefix(args.output)
    if args.hypothetical:
        warnings.warn("--hypothetical is deprecated and does nothing: attr.npz holds hypothetical contributions "
                      "by default (proj.npz the projected ones); the flag will be removed in the next release",
                      FutureWarning, stacklevel=2)


def _compile_option(args) -> bool | str:
    """--compile -> FastISM's ``compile``: False, True (torch's default mode) or the mode's name."""
    return {None: False, "default": True}.get(args.compile, args.compile)


def _settings(args, seqs, model, device: str, spec: pipeline.ResolvedSpec) -> dict:
    s = {k: getattr(args, k) for k in RESULT_OPTIONS}
    s.update(seq_len=spec.seq_len, device=device.split(":")[0],
             model=os.path.basename(args.model.rstrip("/")), model_kind=model.kind, model_digest=model.digest,
             input_digest=seqs.digest(), n_sequences=len(seqs), window=list(spec.window), n_bases=spec.n_bases,
             heads=[[h.name, h.reduction, list(h.target_names)] for h in spec.heads],
             convention="mutant-reference, mean-centred over bases", format_version=outputs.FORMAT_VERSION)
    return s


def _summary(out: runner.Outcome, n: int, seconds: float) -> str:
    if out.already_complete:
        return f"{out.path} is already complete with these settings; nothing to do"
    prefix = out.path[:-len(".h5")]
    rest = [f[len(prefix):] if f.startswith(prefix) else f for f in out.files + [prefix + ".args.json"]]
    return f"wrote {out.path} (and {', '.join(rest)}) for {n} sequences in {seconds:.1f}s"


def cmd_ism(args) -> int:
    ctx = distributed.context()
    _check_ism_args(args)
    device = resolve_device(args.device, ctx)
    opts = runner.RunOptions(prefix=args.output, overwrite=args.overwrite, chunk_size=args.chunk_size,
                             verbose=args.verbose, formats=tuple(args.format or ()), max_output_gb=args.max_output_gb,
                             compression=args.compression,
                             record={"command": sys.argv, "args": {k: v for k, v in vars(args).items()
                                                                   if not k.startswith("_") and k != "func"}})
    t0 = time.perf_counter()
    model = load_model(args.model, EngineOptions(device=device, batch_size=args.batch_size, dtype=args.dtype,
                                                 engine=args.engine, check=not args.no_check,
                                                 allow_unsafe=args.allow_unsafe, compile=_compile_option(args)))
    with warnings.catch_warnings():
        if not ctx.is_main:
            warnings.simplefilter("ignore", inputs.InputWarning)
        read = inputs.ReadOptions(args.seq_len or model.seq_len, args.n_policy, args.center_crop, args.pad, args.rna)
        seqs = inputs.load_sequences(args.seqs, read, genome=args.genome)
    model.bind(seqs.onehot.shape[2])
    runner.info(opts, f"read {len(seqs)} sequences of length {seqs.onehot.shape[2]} in "
                      f"{time.perf_counter() - t0:.2f}s", ctx)
    wish = pipeline.ScoreSpec(window=(args.start, args.end), replace_with=pipeline.parse_replace(args.replace_with),
                              reduction=args.reduction, profile_axis=args.profile_axis, rc_average=args.rc_average,
                              raw=args.raw)
    spec = pipeline.resolve(model, seqs.onehot[:1], wish, target=args.target)
    job = runner.Job(model, seqs, spec, _settings(args, seqs, model, device, spec), opts, ctx)
    if ctx.active:
        distributed.init(ctx, device)
    try:
        out = runner.run(job)
    finally:
        distributed.shutdown(ctx)
    runner.say(_summary(out, len(seqs), time.perf_counter() - t0), ctx)
    return 0


# ------------------------------------------------------------------------------------------- plot, bigwig
def _image_path(args, result: str, name: str) -> str:
    """``-o``, or ``PREFIX.NAME.png`` beside the result file (the name made safe for a file name)."""
    if args.output:
        return args.output
    return f"{os.path.splitext(result)[0]}.{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"


def _check_image_format(path: str) -> None:
    from matplotlib.backend_bases import FigureCanvasBase
    known = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in known:
        raise UserError(f"cannot write {path}: {'unknown image format ' + repr(ext) if ext else 'no extension'}; "
                        f"end -o with one of .{', .'.join(sorted(known))}")


def cmd_plot(args) -> int:
    from . import plot
    if args.output:
        _check_image_format(args.output)
    with outputs.Result(args.result) as r:
        if not r.complete:
            warnings.warn(f"{args.result} is not complete")
        head = r.head(args.head)
        i = r.row(args.seq)
        ism = r.data("ism", head)[i]                      # (K, Lw, T)
        onehot = r.onehot(i)
        chrom, start, _ = r.window_coordinates()
        ws, we = r.window
        if args.target is not None:
            ism = ism[..., pipeline.parse_targets(args.target, r.target_names(head))]
        name = r.names[i]
    s = ws if args.start is None else args.start
    e = we if args.end is None else args.end
    if not (ws <= s < e <= we):
        raise UserError(f"--start/--end must lie in the computed window [{ws}, {we}); got {s}, {e}")
    region = f"{chrom[i]}:{int(start[i]) - ws + s}-{int(start[i]) - ws + e}" if r.chrom is not None else None
    title = args.title or (name if region in (None, name) else f"{name}  ({region})")
    title = title if head is None else f"{title}  [{head}]"
    path = _image_path(args, args.result, name)
    try:
        plot.plot_ism(ism.mean(-1)[:, s - ws:e - ws], onehot[:, s - ws:e - ws], path, start=s, title=title,
                      dpi=args.dpi)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write {path}: {first_line(e)}") from None
    print(f"{PROG}: wrote {path}", file=sys.stderr)
    return 0


def cmd_bigwig(args) -> int:
    with outputs.Result(args.result) as r:
        head = r.head(args.head)
    out = args.output or formats.head_prefix(os.path.splitext(args.result)[0], head) + ".proj.bw"
    n = formats.write_bigwig(args.result, args.chrom_sizes, out, head)
    print(f"{PROG}: wrote {out} ({n} bases)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help says its default or there is none."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return h
        return h + " (default: %(default)s)"


def _ism_parser(sub) -> None:
    s = sub.add_parser("ism", help="compute ISM maps for sequences (FASTA, one-hot, or BED + genome)",
                       formatter_class=_HelpFormatter)
    s.add_argument("-p", "--params", help="JSON file of options (keys are long option names); the command "
                                          "line overrides it")
    g = s.add_argument_group("input and output")
    g.add_argument("-m", "--model", help="Keras .h5/.keras/SavedModel folder, .onnx file, or PyTorch "
                                         "path/to/file.py:factory (factory() returns an nn.Module taking (N, 4, L))")
    g.add_argument("-s", "--seqs", help="FASTA (plain or gzipped), one-hot .npy/.npz ((N, 4, L), ACGT), or a "
                                        "BED3/narrowPeak file with --genome")
    g.add_argument("--genome", help="reference genome FASTA for a BED -s: windows of the model length centred "
                                    "on each summit (narrowPeak column 10) or midpoint")
    g.add_argument("-o", "--output", help="output prefix (not a folder): writes PREFIX.h5 (compressed), "
                                          "PREFIX.ohe.npz, PREFIX[.HEAD].attr.npz (hypothetical, for modisco), "
                                          "PREFIX[.HEAD].proj.npz, PREFIX.regions.bed, PREFIX.args.json")
    extra = {k: f for k, f in formats.FORMATS.items() if not f.default}
    g.add_argument("--format", action="append", choices=tuple(extra),
                   help="also write: " + "; ".join(f"{k}: {f.help}" for k, f in extra.items()))
    g.add_argument("--overwrite", action="store_true", help="replace an existing output with other settings")
    g.add_argument("--max-output-gb", type=float, help=f"stop before writing outputs larger than this (uncompressed "
                   f"estimate, printed before the run; default {runner.DEFAULT_MAX_OUTPUT_GB:g}, and the free disk "
                   f"space)")
    g.add_argument("--compression", choices=tuple(outputs.COMPRESSIONS), default="gzip",
                   help="of PREFIX.h5 (lossless): gzip (level 1 + shuffle, any HDF5 tool reads it), lzf (faster to "
                        "write, 15%% larger, read through h5py), none")
    g.add_argument("-v", "--verbose", action="store_true", help="progress bar and timings on stderr")
    g = s.add_argument_group("sequences")
    g.add_argument("--seq-len", type=int, help="model input length (default: the model's, else the sequences')")
    g.add_argument("--n-policy", choices=inputs.N_POLICIES, default="zero",
                   help="N and other ambiguous bases: all-zero column, skip the sequence, or stop with an error")
    g.add_argument("--rna", action="store_true", help="read U as T (otherwise U is an error)")
    g.add_argument("--center-crop", action="store_true", help="centre-crop longer sequences to the model length")
    g.add_argument("--pad", action="store_true", help="pad shorter sequences with N on both sides")
    g = s.add_argument_group("mutagenesis and scores")
    g.add_argument("--start", "--window-start", dest="start", type=int,
                   help="first position to mutate (0-based); under torchrun spell it --window-start")
    g.add_argument("--end", "--window-end", dest="end", type=int, help="position after the last one to mutate")
    g.add_argument("--replace-with", help="replace each position with 0/N, uniform or 'a,c,g,t' instead of "
                                          "full saturation (scores: mutant - reference)")
    g.add_argument("--target", help="output(s) to score: index or name, comma-separated (default: all; attr, "
                                    "proj and plots average the scored targets)")
    g.add_argument("--reduction", choices=("auto",) + scores.REDUCTIONS, default="auto",
                   help="per-target value of the outputs. auto (the default): for a model with several outputs one "
                        "of which has a length axis (BPNet, ChromBPNet), two sets of scores, counts (the counts "
                        "output) and profile (sum(softmax(logits) * logits) per task), in PREFIX.h5's counts/ "
                        "and profile/ groups and PREFIX.counts.* / PREFIX.profile.* files; for other models none "
                        "(every output value a target)")
    g.add_argument("--profile-axis", type=int, default=-1, help="profile (length) axis of the profile output, "
                                                                 "counted over one sequence's output")
    g.add_argument("--rc-average", action="store_true", help="average with the reverse-complement strand")
    g.add_argument("--raw", action="store_true", help="also store raw (reduced) mutant predictions as 'raw'")
    g.add_argument("--hypothetical", action="store_true", help=argparse.SUPPRESS)   # deprecated: the default now
    _execution_options(s.add_argument_group("execution"))
    s.set_defaults(func=cmd_ism)


def _execution_options(g) -> None:
    g.add_argument("--batch-size", type=int, help="edits per forward pass (default: the engine's)")
    g.add_argument("--chunk-size", type=int, help="sequences per written chunk (default: by output size)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="compute precision (autocast)")
    g.add_argument("--engine", choices=("fast", "naive"), default="fast",
                   help="FastISM, or NaiveISM (one full forward pass per edit)")
    g.add_argument("--compile", nargs="?", const="default", choices=("default", "reduce-overhead"),
                   help="FastISM under torch.compile: on one H100, 16-50 s to compile, then 1.8-3.6x faster per "
                        "sequence than eager (worth it for hundreds of sequences); 'reduce-overhead' adds CUDA graphs")
    g.add_argument("--no-check", action="store_true", help="skip FastISM's self-check against naive ISM")
    g.add_argument("--allow-unsafe", action="store_true",
                   help="let Python code stored in a Keras model file (Lambda layers) run when it loads; only for "
                        "files you trust. Without it every Keras format is checked for Lambda layers first "
                        "(refused, naming them) and loaded in safe mode")


def _plot_parser(sub) -> None:
    q = sub.add_parser("plot", help="heatmap and sequence logo of one sequence's ISM map",
                       formatter_class=_HelpFormatter)
    q.add_argument("result", help="PREFIX.h5 written by 'fastism-torch ism'")
    q.add_argument("--seq", help="sequence name (or index); default: the first")
    q.add_argument("-o", "--output", help="image file, its format from the extension (.png, .pdf, .svg, ...); "
                                          "default: PREFIX.NAME.png beside the result (NAME: the sequence's)")
    q.add_argument("--head", help="set of scores to show (counts, profile) for a result with several; "
                                  "default: the first")
    q.add_argument("--start", type=int, help="first position to show")
    q.add_argument("--end", type=int, help="position after the last one to show")
    q.add_argument("--target", help="target(s) to show (default: the mean of all)")
    q.add_argument("--title", help="figure title")
    q.add_argument("--dpi", type=int, default=150, help="resolution of raster images")
    q.set_defaults(func=cmd_plot)


def _bigwig_parser(sub) -> None:
    b = sub.add_parser("bigwig", help="bigWig track of the projected scores at genome coordinates",
                       formatter_class=_HelpFormatter)
    b.add_argument("result", help="PREFIX.h5 written by 'fastism-torch ism' (from BED regions or chrom:start-end "
                                  "names)")
    b.add_argument("--chrom-sizes", required=True, help="two-column chrom.sizes file (or the genome's .fai)")
    b.add_argument("--head", help="set of scores (counts, profile) for a result with several; default: the first")
    b.add_argument("-o", "--output", help="bigWig file (default: PREFIX[.HEAD].proj.bw)")
    b.set_defaults(func=cmd_bigwig)


#: one function per subcommand, each adding its parser (``add(subparsers)``) with ``set_defaults(func=...)``
def _pairwise_parser(sub) -> None:
    from .cli_pairwise import add_parser          # fastism_torch/cli_pairwise.py (it imports from here)
    add_parser(sub)


SUBCOMMANDS = [_ism_parser, _pairwise_parser, _plot_parser, _bigwig_parser]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fast exact in-silico saturation mutagenesis (ISM).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
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


def _on_sigterm(signum, frame):
    raise runner.Terminated()


def main(argv=None) -> int:
    parser = build_parser()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = _apply_params(parser, argv)
            return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, runner.Terminated)
        print(f"\n{PROG}: interrupted{' by SIGTERM' if terminated else ''}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        return 1
    except OSError as e:   # full disk, permissions, ... while writing outputs
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
