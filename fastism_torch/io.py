"""Files in and out of the command-line tool.

In: FASTA (plain or bgzipped, read with pyfaidx) or one-hot ``.npy``/``.npz``, encoded to int8 one-hot
``(N, 4, L)`` in ACGT order by a byte lookup table.  Out: the resumable HDF5 result file, the
modisco-ready ``.npz`` pair, a BED file of the regions and ``args.json``.

Every problem with a user's file raises :class:`UserError` with a one-line message; the CLI prints it
without a traceback.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np

ALPHABET = "ACGT"
AMBIGUOUS = "NRYSWKMBDHVU"   # IUPAC codes (and U) that are not one of ACGT: handled by the N policy
N_POLICIES = ("zero", "skip", "error")

_BAD, _AMB = 255, 4
_LUT = np.full(256, _BAD, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _LUT[ord(_c.lower())] = _i
for _c in AMBIGUOUS:
    _LUT[ord(_c)] = _LUT[ord(_c.lower())] = _AMB

_REGION = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)(?:\([+\-.]\))?$")


class UserError(Exception):
    """A problem with the user's input, options or files: reported as one line, no traceback."""


@dataclass
class Sequences:
    """Encoded sequences in input order.

    ``onehot`` is int8 ``(N, 4, L)`` (ACGT, all-zero columns for N); ``index`` gives each row's position in
    the input file (rows dropped by ``--n-policy skip`` leave gaps); ``chrom/start/end`` are set when every
    name is a ``chrom:start-end`` region (BED coordinates, adjusted for cropping and padding).
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


# --------------------------------------------------------------------------------------------- reading
def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _parse_fasta_bytes(data: bytes, path: str) -> tuple[list, list]:
    """Names (first word of each header) and raw sequence bytes of an in-memory FASTA."""
    if not data.strip():
        raise UserError(f"{path}: the FASTA file is empty")
    if not data.lstrip().startswith(b">"):
        raise UserError(f"{path}: not a FASTA file (the first non-blank character is not '>')")
    names, seqs = [], []
    for rec in data.lstrip()[1:].split(b"\n>"):
        header, _, body = rec.partition(b"\n")
        words = header.strip().split()
        if not words:
            raise UserError(f"{path}: a record has an empty header (record {len(names) + 1})")
        names.append(words[0].decode(errors="replace"))
        seqs.append(body.replace(b"\n", b"").replace(b"\r", b"").replace(b" ", b""))
    return names, seqs


def _read_with_pyfaidx(path: str) -> tuple[list, list]:
    import pyfaidx
    try:
        fa = pyfaidx.Fasta(path, as_raw=True, duplicate_action="stop", rebuild=True)
    except ValueError as e:   # duplicate_action="stop"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else "malformed FASTA"
        if "Duplicate" in msg or "duplicate" in msg:
            raise UserError(f"{path}: duplicate sequence names ({msg})") from None
        raise UserError(f"{path}: cannot read FASTA: {msg}") from None
    except pyfaidx.FastaIndexingError as e:
        raise UserError(f"{path}: malformed FASTA: {str(e).strip().splitlines()[0]}") from None
    try:
        names = list(fa.keys())
        seqs = [fa.faidx.fetch(n, 1, fa.faidx.index[n].rlen).encode() if fa.faidx.index[n].rlen else b""
                for n in names]
    finally:
        fa.close()
    return names, seqs


def read_fasta(path: str) -> tuple[list, list]:
    """Names and raw (unencoded) sequences of a FASTA file, in file order.

    Plain files and bgzipped files (with Biopython installed) are read with pyfaidx, which writes a
    ``.fai`` index next to the file.  Without Biopython, or when the index cannot be written, the file
    (plain or any gzip) is parsed in memory instead.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a FASTA file")
    gz = _is_gzip(path)
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: the FASTA file is empty")
    use_faidx = True
    if gz:
        try:
            import Bio.bgzf  # noqa: F401  (pyfaidx needs it for bgzip)
        except ImportError:
            use_faidx = False
    if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) and not os.path.exists(path + ".fai"):
        use_faidx = False
    if use_faidx:
        with open(path, "rb") as fh:   # pyfaidx accepts some non-FASTA text silently: check the start
            head = fh.read(1 << 16) if not gz else gzip.open(path, "rb").read(1 << 16)
        if not head.strip():
            raise UserError(f"{path}: the FASTA file is empty")
        if not head.lstrip().startswith(b">"):
            raise UserError(f"{path}: not a FASTA file (the first non-blank character is not '>')")
        try:
            names, seqs = _read_with_pyfaidx(path)
        except UserError:
            raise
        except (OSError, RuntimeError, UnicodeDecodeError):
            use_faidx = False  # e.g. a plain-gzip file (not bgzip): fall back to reading it in memory
    if not use_faidx:
        try:
            data = gzip.open(path, "rb").read() if gz else open(path, "rb").read()
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: cannot read: {e}") from None
        names, seqs = _parse_fasta_bytes(data, path)
    if not names:
        raise UserError(f"{path}: the FASTA file has no records")
    seen = set()
    for n in names:
        if n in seen:
            raise UserError(f"{path}: duplicate sequence name {n!r}; names must be unique")
        seen.add(n)
    for n, s in zip(names, seqs):
        if not s:
            raise UserError(f"{path}: sequence {n!r} is empty")
    return names, seqs


def codes_of(seqs: list) -> list:
    """Per-sequence uint8 codes (0-3 = ACGT, 4 = ambiguous) via a lookup table; bad characters raise."""
    return [_LUT[np.frombuffer(s, dtype=np.uint8)] for s in seqs]


def _check_codes(names, codes, path):
    for n, c in zip(names, codes):
        if (c == _BAD).any():
            raise_bad = int(np.argmax(c == _BAD))
            raise UserError(f"{path}: sequence {n!r} has an invalid character at position {raise_bad + 1}; "
                            f"expected A, C, G, T or IUPAC ambiguity codes")


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


def encode(names, raw_seqs, seq_len: int | None = None, n_policy: str = "zero", center_crop: bool = False,
           pad: bool = False, path: str = "<input>") -> Sequences:
    """Encode raw sequences to int8 one-hot ``(N, 4, L)`` with the N policy and length handling applied.

    ``seq_len=None`` takes the length of the sequences, which must then all agree.
    """
    if n_policy not in N_POLICIES:
        raise UserError(f"--n-policy must be one of {N_POLICIES}; got {n_policy!r}")
    codes = codes_of(raw_seqs)
    _check_codes(names, codes, path)
    keep = np.ones(len(codes), dtype=bool)
    skipped = []
    if n_policy != "zero":
        for i, (n, c) in enumerate(zip(names, codes)):
            amb = c == _AMB
            if amb.any():
                if n_policy == "error":
                    raise UserError(f"sequence {n!r} has an ambiguous base ({raw_seqs[i][int(np.argmax(amb))]:c}) "
                                    f"at position {int(np.argmax(amb)) + 1}; use --n-policy zero or skip")
                keep[i] = False
                skipped.append(n)
    index = np.flatnonzero(keep)
    if len(index) == 0:
        raise UserError(f"{path}: no sequences left after --n-policy {n_policy} "
                        f"({len(skipped)} skipped for ambiguous bases)")
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


def load_onehot(path: str) -> tuple[list, np.ndarray]:
    """Names and a one-hot ``(N, 4, L)`` array from ``.npy`` or ``.npz`` (``(N, L, 4)`` is transposed)."""
    try:
        obj = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read one-hot array: {str(e).splitlines()[0]}") from None
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
    if not np.isfinite(x).all() if x.dtype.kind == "f" else False:
        raise UserError(f"{path}: the array has non-finite values")
    if names is None:
        names = [f"seq{i}" for i in range(x.shape[0])]
    if len(names) != x.shape[0]:
        raise UserError(f"{path}: {len(names)} names for {x.shape[0]} sequences")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: duplicate sequence names")
    return names, np.ascontiguousarray(x)


def load_sequences(path: str, seq_len: int | None = None, n_policy: str = "zero", center_crop: bool = False,
                   pad: bool = False) -> Sequences:
    """Read FASTA or one-hot ``.npy``/``.npz`` into :class:`Sequences`."""
    if path.endswith((".npy", ".npz")):
        names, x = load_onehot(path)
        L = x.shape[2]
        offsets = np.zeros(len(names), dtype=np.int64)
        if seq_len is not None and L != seq_len:
            if L > seq_len and center_crop:
                off = (L - seq_len) // 2
                x, offsets[:] = x[:, :, off:off + seq_len], off
            elif L < seq_len and pad:
                left = (seq_len - L) // 2
                y = np.zeros((x.shape[0], 4, seq_len), dtype=x.dtype)
                y[:, :, left:left + L] = x
                x, offsets[:] = y, -left
            else:
                raise UserError(f"{path}: sequences have length {L} but the model takes {seq_len}; "
                                f"pass --center-crop or --pad")
        amb = x.sum(1) != 1
        keep = np.ones(len(names), dtype=bool)
        if n_policy != "zero" and amb.any():
            bad = np.flatnonzero(amb.any(1))
            if n_policy == "error":
                raise UserError(f"sequence {names[bad[0]]!r} has a position that is not one-hot "
                                f"(an N or a soft value); use --n-policy zero or skip")
            keep[bad] = False
        index = np.flatnonzero(keep)
        if len(index) == 0:
            raise UserError(f"{path}: no sequences left after --n-policy {n_policy}")
        xi = x[index]
        onehot = xi.astype(np.int8) if np.array_equal(xi, np.round(xi)) else xi.astype(np.float32)
        seqs = Sequences(names=[names[i] for i in index], onehot=onehot, index=index,
                         skipped=[names[i] for i in np.flatnonzero(~keep)])
        regions = parse_regions(seqs.names)
        if regions is not None:
            seqs.chrom, start, _ = regions
            seqs.start = start + offsets[index]
            seqs.end = seqs.start + onehot.shape[2]
        return seqs
    names, raw = read_fasta(path)
    return encode(names, raw, seq_len, n_policy, center_crop, pad, path)


# --------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write_fn, suffix: str = "") -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``: a crash never leaves a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=d)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: str, arr: np.ndarray) -> None:
    """One unnamed array (``arr_0``), as ``modisco motifs -s/-a`` reads."""
    def w(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, arr)
    atomic_write(path, w)


def save_bed(path: str, chrom, start, end, names) -> None:
    def w(tmp):
        with open(tmp, "w") as fh:
            for c, s, e, n in zip(chrom, start, end, names):
                fh.write(f"{c}\t{int(s)}\t{int(e)}\t{n}\n")
    atomic_write(path, w)


def save_json(path: str, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
    atomic_write(path, w)


def file_digest(path: str) -> str | None:
    """sha1 of a file (or None for a folder, e.g. a SavedModel)."""
    if not os.path.isfile(path):
        return None
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ResultFile:
    """The HDF5 result file, written chunk by chunk and resumable.

    Datasets are chunked and allocated when created (no metadata changes while data are written), so a
    process killed mid-write leaves a file that reopens; a per-sequence ``done`` flag is set only after a
    chunk's data are flushed.  The file is written under ``PATH.partial`` and renamed to ``PATH`` by
    :meth:`finish`, which also sets the ``complete`` attribute: a file named ``PATH`` is always complete.

    Layout: ``ism`` (N, K, Lw, T) float32 (K = 4 bases, or 1 with ``--replace-with``); ``attr`` (N, 4, Lw);
    ``y_ref`` (N, T); optional ``raw`` (N, K, Lw, T); ``seqs`` (N, 4, L) int8; ``names``; ``index``;
    ``chrom/start/end`` when known; ``target_names``; ``done`` (N,) uint8; settings as attributes.
    """

    def __init__(self, path: str):
        self.path = path
        self.partial = path + ".partial"
        self.h5 = None

    # -- settings
    @staticmethod
    def stored_settings(path: str) -> dict | None:
        import h5py
        with h5py.File(path, "r") as f:
            s = f.attrs.get("settings_json")
            return None if s is None else json.loads(s)

    def create(self, seqs: Sequences, window: tuple, n_bases: int, target_names: list, settings: dict,
               raw: bool) -> None:
        import h5py
        n = len(seqs)
        lw, t = window[1] - window[0], len(target_names)
        if os.path.exists(self.partial):
            os.unlink(self.partial)
        f = h5py.File(self.partial, "w")
        try:
            def dset(name, shape, dtype, data=None):
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                chunks = (1,) + tuple(shape[1:]) if len(shape) > 1 else (min(max(n, 1), 65536),)
                d = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl)
                if data is not None:
                    d[...] = data
                return d
            dset("ism", (n, n_bases, lw, t), "f4")
            dset("attr", (n, 4, lw), "f4")
            dset("y_ref", (n, t), "f4")
            if raw:
                dset("raw", (n, n_bases, lw, t), "f4")
            dset("seqs", seqs.onehot.shape, seqs.onehot.dtype, seqs.onehot)
            dset("index", (n,), "i8", seqs.index)
            dset("done", (n,), "u1")
            str_t = h5py.string_dtype()
            f.create_dataset("names", data=np.asarray(seqs.names, dtype=object), dtype=str_t)
            f.create_dataset("target_names", data=np.asarray([str(x) for x in target_names], dtype=object),
                             dtype=str_t)
            if seqs.chrom is not None:
                f.create_dataset("chrom", data=np.asarray(seqs.chrom, dtype=object), dtype=str_t)
                f.create_dataset("start", data=seqs.start)
                f.create_dataset("end", data=seqs.end)
            for k, v in settings.items():
                if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
                    f.attrs[k] = v
                elif v is None:
                    f.attrs[k] = "None"
                else:
                    f.attrs[k] = json.dumps(v)
            f.attrs["settings_json"] = json.dumps(settings, sort_keys=True)
            f.attrs["window_start"], f.attrs["window_end"] = int(window[0]), int(window[1])
            f.attrs["complete"] = False
            f.flush()
        except BaseException:
            f.close()
            raise
        self.h5 = f

    def open_partial(self):
        """Reopen ``PATH.partial`` for appending; None if it is unreadable (then start over)."""
        import h5py
        try:
            self.h5 = h5py.File(self.partial, "r+")
            self.h5["done"][...]
        except Exception:
            self.h5 = None
        return self.h5

    def done_mask(self) -> np.ndarray:
        return self.h5["done"][...].astype(bool)

    def write_chunk(self, lo: int, hi: int, ism: np.ndarray, attr: np.ndarray, y_ref: np.ndarray,
                    raw: np.ndarray | None = None) -> None:
        f = self.h5
        f["ism"][lo:hi] = ism
        f["attr"][lo:hi] = attr
        f["y_ref"][lo:hi] = y_ref
        if raw is not None:
            f["raw"][lo:hi] = raw
        f.flush()
        f["done"][lo:hi] = 1
        f.flush()

    def close(self):
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None

    def finish(self) -> None:
        """Mark complete, close, rename ``PATH.partial`` to ``PATH``."""
        self.h5.attrs["complete"] = True
        self.h5.flush()
        self.close()
        os.replace(self.partial, self.path)


def write_sidecars(h5_path: str, prefix: str) -> None:
    """``PREFIX.ohe.npz``, ``PREFIX.attr.npz`` (modisco layout) and ``PREFIX.regions.bed`` from the result."""
    import h5py
    with h5py.File(h5_path, "r") as f:
        ws, we = int(f.attrs["window_start"]), int(f.attrs["window_end"])
        ohe = f["seqs"][:, :, ws:we]
        attr = f["attr"][...]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][...]]
        if "chrom" in f:
            chrom = [c.decode() if isinstance(c, bytes) else str(c) for c in f["chrom"][...]]
            start = f["start"][...] + ws
            end = start + (we - ws)
        else:
            chrom, start, end = names, np.full(len(names), ws), np.full(len(names), we)
    save_npz(prefix + ".ohe.npz", ohe.astype(np.float32) if ohe.dtype != np.int8 else ohe)
    save_npz(prefix + ".attr.npz", attr)
    save_bed(prefix + ".regions.bed", chrom, start, end, names)
