"""The ``fastism-torch`` command: a parser over library calls.

* ``ism``: sequences (FASTA, one-hot, or BED regions of a genome) in; ``PREFIX.h5`` and modisco-,
  chrombpnet- and browser-ready files out (:mod:`fastism_torch.runner`, :mod:`fastism_torch.pipeline`).
* ``pairwise``: double-mutant maps, epistasis and dependency maps of a window (:mod:`fastism_torch.cli_pairwise`).
* ``plot``: heatmap and logo of one sequence (:mod:`fastism_torch.plot`).
* ``bigwig``: the projected scores as a bigWig track (:func:`fastism_torch.outputs.write_bigwig`).

User errors (bad files, options or models) print one line and exit with status 1, without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

from . import distributed, inputs, outputs, pipeline, runner, scores
from .errors import UserError
from .loading import EngineOptions, load_model

PROG = runner.PROG

# Options that change results: a resumed or existing output must agree on all of them.
RESULT_OPTIONS = ("seq_len", "n_policy", "center_crop", "pad", "rna", "start", "end", "replace_with", "target",
                  "reduction", "profile_axis", "rc_average", "raw", "dtype", "engine", "no_check")


def _version():
    from . import __version__
    return __version__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


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


# ------------------------------------------------------------------------------------------- ism
def _check_ism_args(args) -> None:
    for opt in ("model", "seqs", "output"):
        if not getattr(args, opt):
            raise UserError(f"ism: -{opt[0]}/--{opt} is required (on the command line or in -p params.json)")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive; got {args.batch_size}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"output folder {out_dir} is not writable")


def _compile_option(args) -> bool | str:
    """--compile -> FastISM's ``compile``: False, True (torch's default mode) or the mode's name."""
    return {None: False, "default": True}.get(args.compile, args.compile)


def _settings(args, seqs, model, device: str, spec, target_names) -> dict:
    s = {k: getattr(args, k) for k in RESULT_OPTIONS}
    s.update(seq_len=int(seqs.onehot.shape[2]), device=device.split(":")[0],
             model=os.path.basename(args.model.rstrip("/")), model_kind=model.kind, model_digest=model.digest,
             input_digest=seqs.digest(), n_sequences=len(seqs), window=list(spec.window), n_bases=spec.n_bases,
             target_names=[str(t) for t in target_names], convention="mutant-reference, mean-centred over bases",
             format_version=outputs.FORMAT_VERSION)
    return s


def cmd_ism(args) -> int:
    ctx = distributed.context()
    _check_ism_args(args)
    device = resolve_device(args.device, ctx)
    opts = runner.RunOptions(prefix=args.output, overwrite=args.overwrite, chunk_size=args.chunk_size,
                             verbose=args.verbose, formats=tuple(args.format or ()),
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
    seq_len = seqs.onehot.shape[2]
    model.bind(seq_len)
    runner.info(opts, f"read {len(seqs)} sequences of length {seq_len} in {time.perf_counter() - t0:.2f}s", ctx)

    spec = pipeline.ScoreSpec(window=(args.start or 0, seq_len if args.end is None else args.end),
                              replace_with=pipeline.parse_replace(args.replace_with), reduction=args.reduction,
                              profile_axis=args.profile_axis, rc_average=args.rc_average, raw=args.raw)
    window = spec.window_for(seq_len)
    names_all = pipeline.target_names(model, seqs.onehot, spec)
    targets = pipeline.parse_targets(args.target, names_all)
    spec = dataclasses.replace(spec, window=window, targets=None if targets is None else tuple(targets))
    target_names = names_all if targets is None else [names_all[i] for i in targets]
    settings = _settings(args, seqs, model, device, spec, target_names)

    if ctx.active:
        distributed.init(ctx, device)
    try:
        final = runner.run(runner.Job(model, seqs, spec, target_names, settings, opts, ctx))
    finally:
        distributed.shutdown(ctx)
    p = opts.prefix
    extra = f", {p}.ism_scores.h5" if "chrombpnet" in opts.formats else ""
    runner.info(opts, f"wrote {final} and {p}.{{ohe,attr,proj}}.npz, {p}.regions.bed, {p}.args.json{extra} "
                      f"in {time.perf_counter() - t0:.1f}s", ctx)
    return 0


# ------------------------------------------------------------------------------------------- plot, bigwig
def cmd_plot(args) -> int:
    from . import plot
    with outputs.Result(args.result) as r:
        if not r.complete:
            warnings.warn(f"{args.result} is not complete")
        i = r.row(args.seq)
        ism = r.f["ism"][i]                                # (K, Lw, T)
        onehot = r.onehot(i)
        chrom, start, _ = r.window_coordinates()
        ws, we = r.window
        if args.target is not None:
            ism = ism[..., pipeline.parse_targets(args.target, r.target_names)]
        name = r.names[i]
    s = ws if args.start is None else args.start
    e = we if args.end is None else args.end
    if not (ws <= s < e <= we):
        raise UserError(f"--start/--end must lie in the computed window [{ws}, {we}); got {s}, {e}")
    region = f"{chrom[i]}:{int(start[i]) - ws + s}-{int(start[i]) - ws + e}" if r.chrom is not None else None
    title = args.title or (name if region in (None, name) else f"{name}  ({region})")
    try:
        plot.plot_ism(ism.mean(-1)[:, s - ws:e - ws], onehot[:, s - ws:e - ws], args.output, start=s, title=title,
                      dpi=args.dpi)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"{PROG}: wrote {args.output}", file=sys.stderr)
    return 0


def cmd_bigwig(args) -> int:
    out = args.output or os.path.splitext(args.result)[0] + ".proj.bw"
    n = outputs.write_bigwig(args.result, args.chrom_sizes, out)
    print(f"{PROG}: wrote {out} ({n} bases)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- parser
def _ism_parser(sub) -> None:
    s = sub.add_parser("ism", help="compute ISM maps for sequences (FASTA, one-hot, or BED + genome)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("-p", "--params", help="JSON file of options (keys are long option names); the command "
                                          "line overrides it")
    g = s.add_argument_group("input and output")
    g.add_argument("-m", "--model", help="Keras .h5/.keras/SavedModel folder, .onnx file, or PyTorch "
                                         "path/to/file.py:factory (factory() returns an nn.Module taking (N, 4, L))")
    g.add_argument("-s", "--seqs", help="FASTA (plain or gzipped), one-hot .npy/.npz ((N, 4, L), ACGT), or a "
                                        "BED3/narrowPeak file with --genome")
    g.add_argument("--genome", help="reference genome FASTA for a BED -s: windows of the model length centred "
                                    "on each summit (narrowPeak column 10) or midpoint")
    g.add_argument("-o", "--output", help="output prefix: writes PREFIX.h5, PREFIX.ohe.npz, PREFIX.attr.npz "
                                          "(hypothetical, for modisco), PREFIX.proj.npz, PREFIX.regions.bed, "
                                          "PREFIX.args.json")
    g.add_argument("--format", action="append", choices=("chrombpnet",),
                   help="also write PREFIX.ism_scores.h5 in chrombpnet's layout (/raw/seq, /shap/seq, "
                        "/projected_shap/seq)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output with other settings")
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
    g.add_argument("--target", help="output(s) to score: index or name, comma-separated (default: mean of all)")
    g.add_argument("--reduction", choices=scores.REDUCTIONS, default="none",
                   help="per-target value of a profile model's outputs")
    g.add_argument("--profile-axis", type=int, default=-1, help="profile (length) axis of the profile output, "
                                                                 "counted over one sequence's output")
    g.add_argument("--rc-average", action="store_true", help="average with the reverse-complement strand")
    g.add_argument("--raw", action="store_true", help="also store raw (reduced) mutant predictions as 'raw'")
    g = s.add_argument_group("execution")
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
    s.set_defaults(func=cmd_ism)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fast exact in-silico saturation mutagenesis (ISM).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{ism,pairwise,plot,bigwig}")
    sub.required = True
    _ism_parser(sub)
    from .cli_pairwise import add_parser as _pairwise_parser     # fastism_torch/cli_pairwise.py
    _pairwise_parser(sub)

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

    b = sub.add_parser("bigwig", help="bigWig track of the projected scores at genome coordinates")
    b.add_argument("result", help="PREFIX.h5 written by 'fastism-torch ism' (from BED regions or chrom:start-end "
                                  "names)")
    b.add_argument("--chrom-sizes", required=True, help="two-column chrom.sizes file (or the genome's .fai)")
    b.add_argument("-o", "--output", help="bigWig file (default: PREFIX.proj.bw)")
    b.set_defaults(func=cmd_bigwig)
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
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
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
