"""Files derived from a result file, and the table of output formats.

:data:`FORMATS` maps a format's name to the files it writes and its writer; ``fastism-torch ism --format``
offers every format that is not written by default.  To add a format, add an :class:`OutputFormat` here.

* ``modisco`` (always): ``PREFIX.ohe.npz``, per set of scores ``PREFIX[.HEAD].attr.npz`` (hypothetical
  contributions, what ``modisco motifs -s -a`` expects) and ``PREFIX[.HEAD].proj.npz`` (projected onto the
  observed base), and ``PREFIX.regions.bed`` (:func:`write_sidecars`);
* ``chrombpnet``: per set of scores ``PREFIX.ism_scores.h5`` (one set) or ``PREFIX.HEAD_scores.h5`` (e.g.
  ``PREFIX.counts_scores.h5``, ``PREFIX.profile_scores.h5``) with ``/raw/seq``, ``/shap/seq``
  (hypothetical) and ``/projected_shap/seq``, each ``(N, 4, Lw)``, the layout of chrombpnet's
  ``*_scores.h5`` (:func:`write_chrombpnet`).

``fastism-torch bigwig`` writes a bigWig of the projected scores at genome coordinates (:func:`write_bigwig`).
``HEAD`` is the name of a set of scores (``counts``, ``profile``); a single set has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .outputs import Result, atomic_write, save_bed, save_npz


def head_prefix(prefix: str, head: str | None) -> str:
    """``PREFIX`` for a single set of scores, ``PREFIX.HEAD`` for one of several."""
    return prefix if head is None else f"{prefix}.{head}"


# --------------------------------------------------------------------------------------------- modisco
def sidecar_files(prefix: str, heads: Sequence) -> list[str]:
    per_head = [head_prefix(prefix, h) + s for h in heads for s in (".attr.npz", ".proj.npz")]
    return [prefix + ".ohe.npz", *per_head, prefix + ".regions.bed"]


def write_sidecars(h5_path: str, prefix: str) -> None:
    """``PREFIX.ohe.npz``, ``PREFIX[.HEAD].attr.npz`` (hypothetical), ``PREFIX[.HEAD].proj.npz`` and
    ``PREFIX.regions.bed`` (column 4: the sequence names)."""
    with Result(h5_path) as r:
        ws, we = r.window
        ohe = r.f["seqs"][:, :, ws:we]
        save_npz(prefix + ".ohe.npz", ohe.astype(np.float32) if ohe.dtype != np.int8 else ohe)
        for h in r.heads:
            save_npz(head_prefix(prefix, h) + ".attr.npz", r.data("attr", h)[...])
            save_npz(head_prefix(prefix, h) + ".proj.npz", r.data("proj", h)[...])
        save_bed(prefix + ".regions.bed", *r.window_coordinates(), r.names)


# --------------------------------------------------------------------------------------------- chrombpnet
def chrombpnet_files(prefix: str, heads: Sequence) -> list[str]:
    return [f"{prefix}.{h or 'ism'}_scores.h5" for h in heads]


def write_chrombpnet(h5_path: str, prefix: str) -> None:
    """chrombpnet's ``*_scores.h5`` layout per set of scores: ``/raw/seq``, ``/shap/seq``,
    ``/projected_shap/seq``, each (N, 4, Lw) (:func:`chrombpnet_files` names them)."""
    import h5py
    with Result(h5_path) as r:
        for h, path in zip(r.heads, chrombpnet_files(prefix, r.heads)):
            def w(tmp):
                with h5py.File(tmp, "w") as out:
                    out.create_dataset("raw/seq", data=r.onehot(), compression="gzip")
                    out.create_dataset("shap/seq", data=r.data("attr", h)[...], compression="gzip")
                    out.create_dataset("projected_shap/seq", data=r.data("proj", h)[...], compression="gzip")
            atomic_write(path, w, suffix=".h5")


# --------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class OutputFormat:
    """An output format: ``files(prefix, heads)`` the paths it writes for the sets of scores ``heads``,
    ``write(result_h5, prefix)`` its writer, ``size(n, lw, n_heads)`` the bytes it takes at most for ``n``
    sequences with ``lw`` mutated positions, ``help`` for ``--format``, ``default`` written always."""
    name: str
    files: Callable[[str, Sequence], list]
    write: Callable[[str, str], None]
    size: Callable[[int, int, int], int]
    help: str
    default: bool = False


FORMATS = {f.name: f for f in (
    OutputFormat("modisco", sidecar_files, write_sidecars,
                 lambda n, lw, k: n * 4 * lw * (1 + 2 * 4 * k),             # int8 one-hot; float32 attr, proj
                 "PREFIX.ohe.npz, PREFIX[.HEAD].attr.npz "
                 "(hypothetical), PREFIX[.HEAD].proj.npz, PREFIX.regions.bed", default=True),
    OutputFormat("chrombpnet", chrombpnet_files, write_chrombpnet,
                 lambda n, lw, k: n * 4 * lw * 4 * 3 * k,                    # float32 raw, shap, projected
                 "PREFIX.ism_scores.h5, or "
                 "PREFIX.HEAD_scores.h5 per set of scores, in chrombpnet's layout (/raw/seq, /shap/seq, "
                 "/projected_shap/seq)"))}


def selected(names: Sequence[str] = ()) -> list[OutputFormat]:
    """The formats a run writes: the default ones and ``names``."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise UserError(f"unknown output format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    return [f for f in FORMATS.values() if f.default or f.name in names]


def derived_bytes(n: int, lw: int, n_heads: int, names: Sequence[str] = ()) -> int:
    """The most the derived files take (before compression)."""
    return sum(f.size(n, lw, n_heads) for f in selected(names))


def derived_files(prefix: str, heads: Sequence, names: Sequence[str] = ()) -> list[str]:
    return [p for f in selected(names) for p in f.files(prefix, heads)]


def write_derived(h5_path: str, prefix: str, names: Sequence[str] = ()) -> None:
    for f in selected(names):
        f.write(h5_path, prefix)


# --------------------------------------------------------------------------------------------- bigWig
def read_chrom_sizes(path: str) -> list[tuple[str, int]]:
    """``(chrom, size)`` pairs of a two-column chrom.sizes file (a ``.fai`` index works too)."""
    sizes = []
    try:
        with open(path) as fh:
            for ln, line in enumerate(fh, 1):
                f = line.split()
                if not f:
                    continue
                if len(f) < 2 or not f[1].isdigit():
                    raise UserError(f"{path}: line {ln} is not 'chrom<TAB>size': {line.strip()[:60]!r}")
                sizes.append((f[0], int(f[1])))
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    if not sizes:
        raise UserError(f"{path}: no chromosome sizes")
    return sizes


def track_entries(chrom, start, values, order: list) -> list[tuple[str, int, np.ndarray]]:
    """Non-overlapping ``(chrom, start, values)`` pieces of region tracks, one value per base.

    Regions are taken in genome order (``order``: chromosome names); where two overlap, the boundary is
    midway between their centres, so each base takes its value from the region whose centre is nearest
    (chrombpnet's rule for its bigWigs).
    """
    rank = {c: i for i, c in enumerate(order)}
    idx = sorted(range(len(chrom)), key=lambda i: (rank[chrom[i]], int(start[i])))
    out, cur_chrom, cur_end = [], None, 0
    for k, i in enumerate(idx):
        c, s, v = chrom[i], int(start[i]), values[i]
        e, mid = s + len(v), s + len(v) // 2
        if c != cur_chrom:
            cur_chrom, cur_end = c, 0
        lo, hi = max(cur_end, s), e
        if k + 1 < len(idx):
            j = idx[k + 1]
            if chrom[j] == c and int(start[j]) < e:
                hi = max(lo, min(e, (mid + int(start[j]) + len(values[j]) // 2) // 2))
        if hi > lo:
            out.append((c, lo, np.asarray(v[lo - s:hi - s], dtype=np.float64)))
        cur_end = max(cur_end, hi)
    return out


def write_bigwig(h5_path: str, chrom_sizes: str, out_path: str, head: str | None = None) -> int:
    """A bigWig of the projected scores of one set of scores (``head``; None: the first), summed over bases
    (the observed base's score), at genome coordinates; returns the number of bases written.  Needs
    ``pyBigWig``."""
    try:
        import pyBigWig
    except ImportError:
        raise UserError("bigWig output needs pyBigWig: pip install pyBigWig") from None
    sizes = read_chrom_sizes(chrom_sizes)
    with Result(h5_path) as r:
        if r.chrom is None:
            raise UserError(f"{h5_path} has no genome coordinates: give regions (-s peaks.bed --genome ...) "
                            f"or FASTA names chrom:start-end")
        chrom, start, end = r.window_coordinates()
        values = r.data("proj", r.head(head))[...].sum(1)
    known = dict(sizes)
    for c, e in zip(chrom, end):
        if c not in known:
            raise UserError(f"chromosome {c!r} is not in {chrom_sizes}")
        if e > known[c]:
            raise UserError(f"region {c}:{e} ends past {c}'s size {known[c]} in {chrom_sizes}")
    pieces = track_entries(chrom, start, values, [c for c, _ in sizes])

    def w(tmp):
        bw = pyBigWig.open(tmp, "w")
        try:
            bw.addHeader(sizes)
            for c, s, v in pieces:
                bw.addEntries(c, s, values=v.tolist(), span=1, step=1)
        finally:
            bw.close()
    atomic_write(out_path, w, suffix=".bw")
    return sum(len(v) for _, _, v in pieces)
