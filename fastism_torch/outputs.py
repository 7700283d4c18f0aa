"""Results out: the resumable HDF5 file, modisco- and chrombpnet-ready files, bigWig tracks.

``PREFIX.h5`` (:class:`ResultFile`) holds everything; from it come

* ``PREFIX.ohe.npz``, ``PREFIX.attr.npz`` (hypothetical contributions, what ``modisco motifs -s -a`` expects)
  and ``PREFIX.proj.npz`` (scores projected onto the observed base), ``PREFIX.regions.bed``
  (:func:`write_sidecars`);
* ``PREFIX.ism_scores.h5`` with ``/raw/seq``, ``/shap/seq`` (hypothetical) and ``/projected_shap/seq``, each
  ``(N, 4, L)``, the layout of chrombpnet's ``*_scores.h5`` (:func:`write_chrombpnet`);
* a bigWig of the projected scores at genome coordinates (:func:`write_bigwig`).

Files are written to a temporary name and renamed, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .errors import UserError

FORMAT_VERSION = 2   # 2: attr is hypothetical, proj holds the projected scores


# --------------------------------------------------------------------------------------------- small files
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


def _strings(d) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in d[...]]


# --------------------------------------------------------------------------------------------- result file
class ResultFile:
    """The HDF5 result file, written chunk by chunk and resumable.

    Datasets are chunked and allocated when created (no metadata changes while data are written), so a
    process killed mid-write leaves a file that reopens; a per-sequence ``done`` flag is set only after a
    chunk's data are flushed.  The file is written under ``PATH.partial`` and renamed to ``PATH`` by
    :meth:`finish`, which also sets the ``complete`` attribute: a file named ``PATH`` is always complete.

    Layout: ``ism`` (N, K, Lw, T) float32 (K = 4 bases, or 1 with a fixed replacement); ``attr`` (N, 4, Lw)
    hypothetical contributions (the scores averaged over targets, for all 4 bases); ``proj`` (N, 4, Lw) the
    same projected onto the observed base; ``y_ref`` (N, T); optional ``raw`` (N, K, Lw, T); ``seqs``
    (N, 4, L) int8; ``names``; ``index``; ``chrom/start/end`` when known; ``target_names``; ``done`` (N,)
    uint8; settings as attributes.
    """
    CHUNKED = ("ism", "attr", "proj", "y_ref", "raw")

    def __init__(self, path: str):
        self.path = path
        self.partial = path + ".partial"
        self.h5 = None

    @staticmethod
    def stored_settings(path: str) -> dict | None:
        import h5py
        with h5py.File(path, "r") as f:
            s = f.attrs.get("settings_json")
            return None if s is None else json.loads(s)

    def create(self, seqs, window: tuple, n_bases: int, target_names: list, settings: dict, raw: bool) -> None:
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
            dset("ism", (n, n_bases, lw, t), "f4")
            dset("attr", (n, 4, lw), "f4")
            dset("proj", (n, 4, lw), "f4")
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
                else:
                    f.attrs[k] = "None" if v is None else json.dumps(v)
            f.attrs["settings_json"] = json.dumps(settings, sort_keys=True)
            f.attrs["window_start"], f.attrs["window_end"] = int(window[0]), int(window[1])
            f.attrs["format_version"] = FORMAT_VERSION
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

    def write_chunk(self, lo: int, hi: int, scores) -> None:
        """Write one chunk of :class:`fastism_torch.pipeline.Scores` (rows ``lo:hi``) and mark it done."""
        f = self.h5
        for name, value in (("ism", scores.ism), ("attr", scores.hypothetical), ("proj", scores.projected),
                            ("y_ref", scores.y_ref), ("raw", scores.raw)):
            if value is not None:
                f[name][lo:hi] = value
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


def merge_parts(parts: list, out_path: str, n_total: int, index) -> None:
    """Concatenate complete part files (in order) into ``out_path`` via ``out_path.partial`` and a rename.

    Before the merged file is marked complete, the parts must hold every one of the ``n_total`` sequences
    exactly once, in order (their ``index`` equal to ``index``), each marked done.
    """
    import h5py
    partial = out_path + ".partial"
    srcs = [h5py.File(p, "r") for p in parts]
    try:
        for p, s in zip(parts, srcs):
            if not bool(s.attrs.get("complete", False)):
                raise RuntimeError(f"part file {p} is not complete")
        got = np.concatenate([s["index"][...] for s in srcs]) if srcs else np.zeros(0, dtype=np.int64)
        done = np.concatenate([s["done"][...] for s in srcs]) if srcs else np.zeros(0, dtype=np.uint8)
        if len(got) != n_total or not np.array_equal(got, np.asarray(index)) or not done.all():
            raise RuntimeError(f"the part files hold {len(got)} sequences ({int(done.sum())} done) but the run "
                               f"has {n_total}; rerun the same command to compute the missing ones")
        first = srcs[0]
        with h5py.File(partial, "w") as out:
            for name, d in first.items():
                if name == "target_names":
                    out.create_dataset(name, data=d[...], dtype=d.dtype)
                    continue
                shape = (n_total,) + d.shape[1:]
                chunks = d.chunks
                if chunks is not None and name in ("index", "done"):
                    chunks = (min(max(n_total, 1), 65536),)
                o = out.create_dataset(name, shape=shape, dtype=d.dtype, chunks=chunks)
                at = 0
                for s in srcs:
                    src = s[name]
                    step = max(1, (64 << 20) // max(1, src.dtype.itemsize * int(np.prod(src.shape[1:]))))
                    for lo in range(0, src.shape[0], step):
                        blk = src[lo:lo + step]
                        o[at + lo:at + lo + len(blk)] = blk
                    at += src.shape[0]
            for k, v in first.attrs.items():
                out.attrs[k] = v
            out.attrs["complete"] = True
        os.replace(partial, out_path)
    finally:
        for s in srcs:
            s.close()


# --------------------------------------------------------------------------------------------- reading back
class Result:
    """A complete result file opened for reading: the window, names, coordinates and arrays by row."""

    def __init__(self, path: str):
        import h5py
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
        try:
            self.f = h5py.File(path, "r")
        except OSError:
            raise UserError(f"{path}: not an HDF5 result file") from None
        if "ism" not in self.f or "names" not in self.f:
            self.f.close()
            raise UserError(f"{path}: not a fastism-torch result file (no 'ism' dataset)")
        if int(self.f.attrs.get("format_version", 1)) < FORMAT_VERSION:
            self.f.close()
            raise UserError(f"{path} was written by an older fastism-torch (format "
                            f"{int(self.f.attrs.get('format_version', 1))}); rerun 'fastism-torch ism' with --overwrite")
        self.path = path
        self.complete = bool(self.f.attrs.get("complete", False))
        self.window = int(self.f.attrs["window_start"]), int(self.f.attrs["window_end"])
        self.names = _strings(self.f["names"])
        self.target_names = _strings(self.f["target_names"])
        self.chrom = _strings(self.f["chrom"]) if "chrom" in self.f else None
        self.start = self.f["start"][...] if "start" in self.f else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def row(self, seq: str | int | None) -> int:
        """Row of a sequence given by name or index (default: the first)."""
        if seq is None:
            return 0
        if str(seq) in self.names:
            return self.names.index(str(seq))
        if str(seq).isdigit() and int(seq) < len(self.names):
            return int(seq)
        shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
        raise UserError(f"sequence {seq!r} is not in {self.path} (names: {shown})")

    def onehot(self, rows=slice(None)) -> np.ndarray:
        """One-hot ``(n, 4, Lw)`` of the mutated window, float32."""
        ws, we = self.window
        return self.f["seqs"][rows, :, ws:we].astype(np.float32)

    def window_coordinates(self) -> tuple[list, np.ndarray, np.ndarray]:
        """BED ``(chrom, start, end)`` of each row's mutated window; rows without coordinates are named."""
        ws, we = self.window
        if self.chrom is None:
            return self.names, np.full(len(self.names), ws), np.full(len(self.names), we)
        start = self.start + ws
        return self.chrom, start, start + (we - ws)


# --------------------------------------------------------------------------------------------- derived files
def write_sidecars(h5_path: str, prefix: str) -> None:
    """``PREFIX.ohe.npz``, ``PREFIX.attr.npz`` (hypothetical), ``PREFIX.proj.npz`` and ``PREFIX.regions.bed``."""
    with Result(h5_path) as r:
        ws, we = r.window
        ohe = r.f["seqs"][:, :, ws:we]
        save_npz(prefix + ".ohe.npz", ohe.astype(np.float32) if ohe.dtype != np.int8 else ohe)
        save_npz(prefix + ".attr.npz", r.f["attr"][...])
        save_npz(prefix + ".proj.npz", r.f["proj"][...])
        save_bed(prefix + ".regions.bed", *r.window_coordinates(), r.names)


def write_chrombpnet(h5_path: str, out_path: str) -> None:
    """chrombpnet's ``*_scores.h5`` layout: ``/raw/seq``, ``/shap/seq``, ``/projected_shap/seq``, (N, 4, Lw)."""
    import h5py

    def w(tmp):
        with Result(h5_path) as r, h5py.File(tmp, "w") as out:
            out.create_dataset("raw/seq", data=r.onehot(), compression="gzip")
            out.create_dataset("shap/seq", data=r.f["attr"][...], compression="gzip")
            out.create_dataset("projected_shap/seq", data=r.f["proj"][...], compression="gzip")
    atomic_write(out_path, w, suffix=".h5")


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


def write_bigwig(h5_path: str, chrom_sizes: str, out_path: str) -> int:
    """A bigWig of the projected scores (summed over bases: the observed base's score) at genome
    coordinates; returns the number of bases written.  Needs ``pyBigWig``."""
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
        values = r.f["proj"][...].sum(1)
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
