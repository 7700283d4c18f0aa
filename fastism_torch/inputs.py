"""Sequences in: FASTA, one-hot arrays, or BED regions of a reference genome, as int8 one-hot ``(N, 4, L)``.

* FASTA (plain or gzip/bgzip): names are the first word of each header; bases are encoded ACGT by a byte
  lookup table.  A name of the form ``chrom:start-end`` carries genome coordinates into the outputs.
* one-hot ``.npy``/``.npz``: ``(N, 4, L)`` or ``(N, L, 4)``, optional ``names`` array in the ``.npz``.
* BED3/narrowPeak + genome FASTA (read with pyfaidx): each region is centred at the model length on its
  summit (narrowPeak column 10) or midpoint, the way bpnet-lite, chrombpnet and tangermeme do.

N and other IUPAC ambiguity codes follow the N policy (``zero``: an all-zero column, ``skip`` the
sequence, or ``error``); zeroed bases and skipped sequences are counted in an :class:`InputWarning`.
``U`` (RNA) is an error unless ``rna=True``, which reads it as ``T``.  Every problem raises
:class:`UserError` with a one-line message.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import InputWarning, UserError, first_line

ALPHABET = "ACGT"
AMBIGUOUS = "NRYSWKMBDHV"   # IUPAC codes that are not one of ACGT: handled by the N policy
N_POLICIES = ("zero", "skip", "error")

_BAD, _AMB, _U = 255, 4, 5
_LUT = np.full(256, _BAD, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _LUT[ord(_c.lower())] = _i
for _c in AMBIGUOUS:
    _LUT[ord(_c)] = _LUT[ord(_c.lower())] = _AMB
_LUT[ord("U")] = _LUT[ord("u")] = _U

_REGION = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)(?:\([+\-.]\))?$")


@dataclass(frozen=True)
class ReadOptions:
    """How sequences become model inputs: ``seq_len`` (None: the sequences' own length, which must agree),
    ``n_policy`` for ambiguous bases, ``center_crop`` longer and ``pad`` shorter sequences (with N), and
    ``rna`` to read U as T."""
    seq_len: int | None = None
    n_policy: str = "zero"
    center_crop: bool = False
    pad: bool = False
    rna: bool = False


@dataclass
class Sequences:
    """Encoded sequences in input order.

    ``onehot`` is int8 ``(N, 4, L)`` (ACGT, all-zero columns for N); ``index`` gives each row's position in
    the input (rows dropped by the N policy leave gaps); ``chrom/start/end`` are the BED coordinates of
    each row's first and past-the-last base when known (regions, or ``chrom:start-end`` names).
    """
    names: list
    onehot: np.ndarray
    index: np.ndarray
    chrom: list | None = None
    start: np.ndarray | None = None
    end: np.ndarray | None = None
    skipped: list = field(default_factory=list)

    def __len__(self):
        return len(self.names)

    def digest(self) -> str:
        """A hash of the names and the one-hot array: identifies the input for resuming."""
        h = hashlib.sha1()
        h.update("\n".join(self.names).encode())
        h.update(np.ascontiguousarray(self.onehot).tobytes())
        return h.hexdigest()

    def subset(self, lo: int, hi: int) -> "Sequences":
        """Rows ``lo:hi``."""
        cut = lambda v: None if v is None else v[lo:hi]   # noqa: E731
        return Sequences(names=self.names[lo:hi], onehot=self.onehot[lo:hi], index=self.index[lo:hi],
                         chrom=cut(self.chrom), start=cut(self.start), end=cut(self.end))


# --------------------------------------------------------------------------------------------- FASTA
def _open_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            return fh.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read: {first_line(e)}") from None


def read_fasta(path: str) -> tuple[list, list]:
    """Names (first word of each header) and raw sequence bytes of a FASTA file (plain or gzip/bgzip)."""
    data = _open_bytes(path)
    if not data.strip():
        raise UserError(f"{path}: the FASTA file is empty")
    if not data.lstrip().startswith(b">"):
        raise UserError(f"{path}: not a FASTA file (the first non-blank character is not '>')")
    names, seqs, seen = [], [], set()
    for rec in data.lstrip()[1:].split(b"\n>"):
        header, _, body = rec.partition(b"\n")
        words = header.strip().split()
        if not words:
            raise UserError(f"{path}: a record has an empty header (record {len(names) + 1})")
        name = words[0].decode(errors="replace")
        if name in seen:
            raise UserError(f"{path}: duplicate sequence name {name!r}; names must be unique")
        seq = body.replace(b"\n", b"").replace(b"\r", b"").replace(b" ", b"")
        if not seq:
            raise UserError(f"{path}: sequence {name!r} is empty")
        seen.add(name)
        names.append(name)
        seqs.append(seq)
    return names, seqs


# --------------------------------------------------------------------------------------------- encoding
def fit_length(codes: np.ndarray, seq_len: int, center_crop: bool, pad: bool, name: str) -> tuple:
    """Centre-crop or N-pad one sequence's codes to ``seq_len``; return ``(codes, offset)``.

    ``offset`` is the input position of output position 0 (negative when padded).
    """
    n = len(codes)
    if n == seq_len:
        return codes, 0
    if n > seq_len:
        if not center_crop:
            raise UserError(f"sequence {name!r} has length {n} but the model takes {seq_len}; "
                            f"pass --center-crop to crop it")
        off = (n - seq_len) // 2
        return codes[off:off + seq_len], off
    if not pad:
        raise UserError(f"sequence {name!r} has length {n} but the model takes {seq_len}; "
                        f"pass --pad to pad it with N")
    left = (seq_len - n) // 2
    out = np.full(seq_len, _AMB, dtype=np.uint8)
    out[left:left + n] = codes
    return out, -left


def parse_regions(names: list):
    """``(chrom, start, end)`` arrays (BED, 0-based half-open) if every name is ``chrom:start-end``, else None."""
    chrom, start, end = [], [], []
    for n in names:
        m = _REGION.match(n)
        if m is None:
            return None
        chrom.append(m["chrom"])
        start.append(int(m["start"].replace(",", "")))
        end.append(int(m["end"].replace(",", "")))
    return chrom, np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)


def _codes(names, raw_seqs, path: str, rna: bool) -> list:
    """Per-sequence uint8 codes (0-3 = ACGT, 4 = ambiguous); bad characters and unasked-for U raise."""
    codes = [_LUT[np.frombuffer(s, dtype=np.uint8)] for s in raw_seqs]
    for n, c in zip(names, codes):
        if (c == _BAD).any():
            i = int(np.argmax(c == _BAD))
            raise UserError(f"{path}: sequence {n!r} has an invalid character at position {i + 1}; "
                            f"expected A, C, G, T or IUPAC ambiguity codes")
        if not rna and (c == _U).any():
            raise UserError(f"{path}: sequence {n!r} has U (RNA) at position {int(np.argmax(c == _U)) + 1}; "
                            f"pass --rna (rna=True) to read U as T")
        if rna:
            c[c == _U] = ALPHABET.index("T")
    return codes


def _apply_n_policy(names, codes, n_policy: str, path: str, zeroed: bool = True) -> tuple[np.ndarray, list]:
    """Rows kept and names skipped under the N policy; warns with counts of what was zeroed (when
    ``zeroed``: FASTA bases become all-zero columns) or skipped."""
    if n_policy not in N_POLICIES:
        raise UserError(f"--n-policy must be one of {N_POLICIES}; got {n_policy!r}")
    n_amb = np.fromiter(((c == _AMB).sum() for c in codes), dtype=np.int64, count=len(codes))
    bad = np.flatnonzero(n_amb)
    if n_policy == "error" and len(bad):
        i = int(bad[0])
        raise UserError(f"{path}: sequence {names[i]!r} has an ambiguous base (N or another IUPAC code) at "
                        f"position {int(np.argmax(codes[i] == _AMB)) + 1}; use --n-policy zero or skip")
    keep = np.ones(len(codes), dtype=bool)
    if n_policy == "skip":
        keep[bad] = False
        if len(bad):
            warnings.warn(f"{path}: skipped {len(bad)} of {len(codes)} sequence(s) with ambiguous bases "
                          f"(first: {names[bad[0]]!r})", InputWarning, stacklevel=3)
    elif len(bad) and zeroed:
        warnings.warn(f"{path}: {int(n_amb.sum())} ambiguous base(s) (N or other IUPAC codes) in {len(bad)} "
                      f"of {len(codes)} sequence(s) are all-zero columns (--n-policy zero)", InputWarning,
                      stacklevel=3)
    index = np.flatnonzero(keep)
    if len(index) == 0:
        raise UserError(f"{path}: no sequences left after --n-policy {n_policy}")
    return index, [names[i] for i in bad] if n_policy == "skip" else []


def encode(names, raw_seqs, opts: ReadOptions = ReadOptions(), path: str = "<input>") -> Sequences:
    """Encode raw sequences (bytes) to int8 one-hot ``(N, 4, L)`` with the N policy and lengths applied."""
    seq_len, center_crop, pad = opts.seq_len, opts.center_crop, opts.pad
    codes = _codes(names, raw_seqs, path, opts.rna)
    index, skipped = _apply_n_policy(names, codes, opts.n_policy, path)
    names = [names[i] for i in index]
    codes = [codes[i] for i in index]
    lengths = np.fromiter((len(c) for c in codes), dtype=np.int64, count=len(codes))
    if seq_len is None:
        if (lengths != lengths[0]).any() and not (center_crop or pad):
            j = int(np.argmax(lengths != lengths[0]))
            raise UserError(f"{path}: sequences have different lengths ({names[0]!r}: {lengths[0]}, "
                            f"{names[j]!r}: {lengths[j]}); pass --seq-len with --center-crop and/or --pad")
        seq_len = int(lengths[0]) if not (center_crop or pad) else int(lengths.min() if center_crop and not pad
                                                                        else lengths.max())
    offsets = np.zeros(len(codes), dtype=np.int64)
    if (lengths == seq_len).all():
        mat = np.concatenate(codes).reshape(len(codes), seq_len)
    else:
        mat = np.empty((len(codes), seq_len), dtype=np.uint8)
        for i, (n, c) in enumerate(zip(names, codes)):
            mat[i], offsets[i] = fit_length(c, seq_len, center_crop, pad, n)
    onehot = (mat[:, None, :] == np.arange(4, dtype=np.uint8)[None, :, None]).view(np.int8)
    out = Sequences(names=names, onehot=onehot, index=index, skipped=skipped)
    regions = parse_regions(names)
    if regions is not None:
        chrom, start, end = regions
        if ((end - start + 1) == lengths).all() and not ((end - start) == lengths).all():
            start = start - 1          # 1-based inclusive (samtools faidx style) -> BED; else bedtools style
        out.chrom, out.start = chrom, start + offsets
        out.end = out.start + seq_len
    return out


# --------------------------------------------------------------------------------------------- one-hot
def load_onehot(path: str) -> tuple[list, np.ndarray]:
    """Names and a one-hot ``(N, 4, L)`` array from ``.npy`` or ``.npz`` (``(N, L, 4)`` is transposed)."""
    try:
        obj = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read one-hot array: {first_line(e)}") from None
    names = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        keys = list(obj.keys())
        arr_keys = [k for k in keys if k != "names"]
        if not arr_keys:
            raise UserError(f"{path}: the .npz file holds no array")
        x = obj[arr_keys[0]]
        if "names" in keys:
            names = [str(n) for n in obj["names"]]
    else:
        x = obj
    if x.ndim != 3 or 4 not in x.shape[1:]:
        raise UserError(f"{path}: expected a one-hot array of shape (N, 4, L) or (N, L, 4); got {x.shape}")
    if x.shape[1] != 4:
        x = x.transpose(0, 2, 1)
    if x.shape[0] == 0:
        raise UserError(f"{path}: the array holds no sequences")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{path}: the array has non-finite values")
    if names is None:
        names = [f"seq{i}" for i in range(x.shape[0])]
    if len(names) != x.shape[0]:
        raise UserError(f"{path}: {len(names)} names for {x.shape[0]} sequences")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: duplicate sequence names")
    return names, np.ascontiguousarray(x)


def _fit_onehot(x: np.ndarray, seq_len: int | None, center_crop: bool, pad: bool, path: str) -> tuple:
    L = x.shape[2]
    if seq_len is None or L == seq_len:
        return x, 0
    if L > seq_len and center_crop:
        off = (L - seq_len) // 2
        return x[:, :, off:off + seq_len], off
    if L < seq_len and pad:
        left = (seq_len - L) // 2
        y = np.zeros((x.shape[0], 4, seq_len), dtype=x.dtype)
        y[:, :, left:left + L] = x
        return y, -left
    raise UserError(f"{path}: sequences have length {L} but the model takes {seq_len}; "
                    f"pass --center-crop or --pad")


def _load_onehot_sequences(path: str, opts: ReadOptions) -> Sequences:
    names, x = load_onehot(path)
    x, offset = _fit_onehot(x, opts.seq_len, opts.center_crop, opts.pad, path)
    amb = x.sum(1) != 1                                       # (N, L): N columns and soft values
    codes = [np.where(a, _AMB, 0).astype(np.uint8) for a in amb]
    index, skipped = _apply_n_policy(names, codes, opts.n_policy, path, zeroed=False)
    xi = x[index]
    onehot = xi.astype(np.int8) if np.array_equal(xi, np.round(xi)) else xi.astype(np.float32)
    seqs = Sequences(names=[names[i] for i in index], onehot=onehot, index=index, skipped=skipped)
    regions = parse_regions(seqs.names)
    if regions is not None:
        seqs.chrom, start, _ = regions
        seqs.start = start + offset
        seqs.end = seqs.start + onehot.shape[2]
    return seqs


# --------------------------------------------------------------------------------------------- BED + genome
def read_bed(path: str) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, list]:
    """``(chrom, start, end, centre, name)`` of a BED3+/narrowPeak file (gzip allowed).

    The centre is the summit (narrowPeak column 10, an offset from start) when given and not -1, else the
    midpoint; the name is column 4 (None where there is none or it is ``.``).  ``track``/``browser``/``#``
    lines are skipped.
    """
    chrom, start, end, centre, name = [], [], [], [], []
    for ln, line in enumerate(_open_bytes(path).decode(errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.rstrip("\n").split("\t")
        try:
            s, e = int(f[1]), int(f[2])
            summit = int(f[9]) if len(f) >= 10 else -1
        except (IndexError, ValueError):
            raise UserError(f"{path}: line {ln} is not BED (chrom, start, end tab-separated): {line[:60]!r}") \
                from None
        if not 0 <= s < e:
            raise UserError(f"{path}: line {ln} has start {s} and end {e}; need 0 <= start < end")
        chrom.append(f[0])
        start.append(s)
        end.append(e)
        centre.append(s + summit if summit >= 0 else (s + e) // 2)
        name.append(f[3].strip() if len(f) >= 4 and f[3].strip() not in ("", ".") else None)
    if not chrom:
        raise UserError(f"{path}: the BED file has no regions")
    return chrom, np.asarray(start), np.asarray(end), np.asarray(centre), name


def load_loci(bed: str, genome: str, opts: ReadOptions) -> Sequences:
    """Sequences of ``opts.seq_len`` bp centred on each BED region's summit (or midpoint), from ``genome``.

    Regions that run off their chromosome are skipped with a warning (as chrombpnet does); a chromosome
    that is not in the genome is an error.  Names are the BED names (column 4) when every kept region has
    one and they are unique, else ``chrom:start-end`` of the model window.
    """
    import pyfaidx
    seq_len = opts.seq_len
    chrom, _, _, centre, bed_names = read_bed(bed)
    lo = centre - seq_len // 2
    try:
        fa = pyfaidx.Fasta(genome, as_raw=True, sequence_always_upper=False, rebuild=False)
    except (OSError, ValueError, RuntimeError, pyfaidx.FastaIndexingError) as e:
        raise UserError(f"{genome}: cannot open the genome FASTA with pyfaidx ({first_line(e)}); it needs a "
                        f".fai index beside it or a writable folder") from None
    try:
        sizes = {k: len(v) for k, v in fa.items()}
        missing = sorted({c for c in chrom if c not in sizes})
        if missing:
            raise UserError(f"{bed}: chromosome(s) {', '.join(missing[:5])} are not in {genome} "
                            f"(it has {', '.join(list(sizes)[:5])}{', ...' if len(sizes) > 5 else ''})")
        inside = np.asarray([0 <= s and s + seq_len <= sizes[c] for c, s in zip(chrom, lo)], dtype=bool)
        if not inside.any():
            raise UserError(f"{bed}: no region fits a {seq_len}-bp window inside its chromosome")
        if not inside.all():
            warnings.warn(f"{bed}: skipped {int((~inside).sum())} of {len(chrom)} region(s) whose {seq_len}-bp "
                          f"window runs off the chromosome", InputWarning, stacklevel=2)
        keep = np.flatnonzero(inside)
        raw = [fa[chrom[i]][int(lo[i]):int(lo[i]) + seq_len].encode() for i in keep]
    finally:
        fa.close()
    coords = [f"{chrom[i]}:{lo[i]}-{lo[i] + seq_len}" for i in keep]
    given = [bed_names[i] for i in keep]
    names = given if None not in given and len(set(given)) == len(given) else coords
    seqs = encode(names, raw, ReadOptions(seq_len, opts.n_policy, rna=opts.rna), path=bed)
    rows = keep[seqs.index]
    seqs.index = rows
    seqs.chrom = [chrom[i] for i in rows]
    seqs.start = np.asarray(lo[rows], dtype=np.int64)
    seqs.end = seqs.start + seq_len
    return seqs


def load_sequences(path: str, opts: ReadOptions = ReadOptions(), genome: str | None = None) -> Sequences:
    """Read FASTA, one-hot ``.npy``/``.npz``, or (with ``genome``) a BED file into :class:`Sequences`."""
    if genome is not None:
        if opts.seq_len is None:
            raise UserError("BED input needs the model length (the model's, or --seq-len)")
        return load_loci(path, genome, opts)
    if path.lower().endswith((".bed", ".bed.gz", ".narrowpeak", ".narrowpeak.gz")):
        raise UserError(f"{path}: a BED file needs the reference genome: pass --genome genome.fa")
    if path.endswith((".npy", ".npz")):
        return _load_onehot_sequences(path, opts)
    names, raw = read_fasta(path)
    return encode(names, raw, opts, path)
