"""Results out: the resumable, compressed HDF5 result file (:class:`ResultFile`), the merge of torchrun's
part files (:func:`merge_parts`), reading a result back (:class:`Result`), and small atomic file writers.

The files derived from a result (modisco, chrombpnet, bigWig) are in :mod:`fastism_torch.formats`.
Files are written to a temporary name and renamed, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .errors import UserError

FORMAT_VERSION = 3   # 2: attr is hypothetical, proj holds the projected scores; 3: sets of scores (heads), gzip
READABLE_SINCE = 2   # a version-2 file reads as one set of scores at the top of the file

#: lossless compressions of the per-sequence datasets (one HDF5 chunk per sequence), by ``--compression`` name:
#: gzip level 1 with the shuffle filter (the default; readable by any HDF5 tool), lzf (faster to write, read
#: through h5py's filter), none; sizes and write times in benchmarks/RESULTS.md (bench_h5)
COMPRESSIONS = {"gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
                "lzf": {"compression": "lzf", "shuffle": True},
                "none": {}}
HEAD_DATASETS = ("ism", "attr", "proj", "y_ref", "raw")


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
def dataset_path(head: str | None, name: str) -> str:
    """Where a set of scores' dataset lives: at the top of the file for a single set (``head`` None), else
    in the group named after the set (``counts/ism``)."""
    return name if head is None else f"{head}/{name}"


def result_layout(n: int, spec) -> list[tuple[str, tuple, str]]:
    """``(path, shape, dtype)`` of the per-sequence datasets of a result for ``n`` sequences under a
    :class:`~fastism_torch.pipeline.ResolvedSpec`."""
    lw, k = spec.window[1] - spec.window[0], spec.n_bases
    out = [("seqs", (n, 4, spec.seq_len), "i1")]
    for h in spec.heads:
        t = len(h.target_names)
        out += [(dataset_path(h.name, "ism"), (n, k, lw, t), "f4"), (dataset_path(h.name, "attr"), (n, 4, lw), "f4"),
                (dataset_path(h.name, "proj"), (n, 4, lw), "f4"), (dataset_path(h.name, "y_ref"), (n, t), "f4")]
        if spec.raw:
            out.append((dataset_path(h.name, "raw"), (n, k, lw, t), "f4"))
    return out


def result_bytes(n: int, spec) -> int:
    """Uncompressed size of the result's per-sequence datasets (an upper bound of the file's size)."""
    return sum(int(np.prod(shape)) * np.dtype(dt).itemsize for _, shape, dt in result_layout(n, spec))


def _create(f, name: str, shape: tuple, dtype, data=None, compression: str = "gzip"):
    """A dataset chunked by sequence, allocated when created; compressed when it has a length axis."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    n = shape[0]
    chunks = (1,) + tuple(shape[1:]) if len(shape) > 1 else (min(max(n, 1), 65536),)
    kw = COMPRESSIONS[compression] if len(shape) > 2 and n > 0 else {}
    d = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl, **kw)
    if data is not None:
        d[...] = data
    return d


class ResultFile:
    """The HDF5 result file, written chunk by chunk and resumable.

    Datasets are chunked by sequence and allocated when created; a per-sequence ``done`` flag is set only
    after a chunk's data are flushed, so a process killed between chunks leaves a file that reopens (one
    killed inside HDF5's write reopens or, if its index is torn, is recomputed from the start).  The file is
    written under ``PATH.partial`` and renamed to ``PATH`` by :meth:`finish`, which also sets the
    ``complete`` attribute: a file named ``PATH`` is always complete.

    Layout, per set of scores (at the top of the file for a single set, else in a group per set, e.g.
    ``counts/`` and ``profile/``): ``ism`` (N, K, Lw, T) float32 (K = 4 bases, or 1 with a fixed
    replacement); ``attr`` (N, 4, Lw) hypothetical contributions (the scores averaged over targets, for all
    4 bases); ``proj`` (N, 4, Lw) the same projected onto the observed base; ``y_ref`` (N, T); optional
    ``raw`` (N, K, Lw, T); ``target_names``.  Shared: ``seqs`` (N, 4, L) int8; ``names``; ``index``;
    ``chrom/start/end`` when known; ``done`` (N,) uint8; settings as attributes; ``heads`` (JSON list of
    the sets' names, ``[null]`` for a single set).  Per-sequence datasets are compressed (``compression``, a
    name in :data:`COMPRESSIONS`; a resumed file keeps its own).
    """

    def __init__(self, path: str, compression: str = "gzip"):
        if compression not in COMPRESSIONS:
            raise UserError(f"compression must be one of {', '.join(COMPRESSIONS)}; got {compression!r}")
        self.path = path
        self.compression = compression
        self.partial = path + ".partial"
        self.h5 = None

    @staticmethod
    def stored_settings(path: str) -> dict | None:
        import h5py
        with h5py.File(path, "r") as f:
            s = f.attrs.get("settings_json")
            return None if s is None else json.loads(s)

    def create(self, seqs, spec, settings: dict) -> None:
        """A new ``PATH.partial`` for ``seqs`` under a :class:`~fastism_torch.pipeline.ResolvedSpec`."""
        import h5py
        n = len(seqs)
        if os.path.exists(self.partial):
            os.unlink(self.partial)
        f = h5py.File(self.partial, "w")
        try:
            for name, shape, dtype in result_layout(n, spec):
                _create(f, name, shape, dtype if name != "seqs" else seqs.onehot.dtype,
                        seqs.onehot if name == "seqs" else None, self.compression)
            _create(f, "index", (n,), "i8", seqs.index)
            _create(f, "done", (n,), "u1")
            str_t = h5py.string_dtype()
            f.create_dataset("names", data=np.asarray(seqs.names, dtype=object), dtype=str_t)
            for h in spec.heads:
                f.create_dataset(dataset_path(h.name, "target_names"), dtype=str_t,
                                 data=np.asarray([str(x) for x in h.target_names], dtype=object))
                if h.name is not None:
                    f[h.name].attrs["reduction"] = h.reduction
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
            f.attrs["heads"] = json.dumps([h.name for h in spec.heads])
            f.attrs["window_start"], f.attrs["window_end"] = int(spec.window[0]), int(spec.window[1])
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
        """Write one chunk (rows ``lo:hi``) and mark it done: ``{head name: Scores}`` as
        :func:`fastism_torch.pipeline.score_heads` gives, or one :class:`~fastism_torch.pipeline.Scores`."""
        f = self.h5
        by_head = {None: scores} if isinstance(scores, tuple) else scores
        for head, s in by_head.items():
            for name, value in zip(("ism", "attr", "proj", "y_ref", "raw"),
                                   (s.ism, s.hypothetical, s.projected, s.y_ref, s.raw)):
                if value is not None:
                    f[dataset_path(head, name)][lo:hi] = value
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


def _datasets(f) -> list:
    import h5py
    out = []
    f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def _copy_rows(o, srcs: list, name: str) -> None:
    at = 0
    for s in srcs:
        src = s[name]
        step = max(1, (64 << 20) // max(1, src.dtype.itemsize * int(np.prod(src.shape[1:]))))
        for lo in range(0, src.shape[0], step):
            blk = src[lo:lo + step]
            o[at + lo:at + lo + len(blk)] = blk
        at += src.shape[0]


def merge_parts(parts: list, out_path: str, n_total: int, index) -> None:
    """Concatenate complete part files (in order) into ``out_path`` via ``out_path.partial`` and a rename.

    Before the merged file is marked complete, the parts must hold every one of the ``n_total`` sequences
    exactly once, in order (their ``index`` equal to ``index``), each marked done.  Datasets keep their
    chunking and compression.
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
            for name in _datasets(first):
                d = first[name]
                if name.endswith("target_names"):
                    out.create_dataset(name, data=d[...], dtype=d.dtype)
                    continue
                chunks = d.chunks
                if chunks is not None and name in ("index", "done"):
                    chunks = (min(max(n_total, 1), 65536),)
                o = out.create_dataset(name, shape=(n_total,) + d.shape[1:], dtype=d.dtype, chunks=chunks,
                                       compression=d.compression, compression_opts=d.compression_opts,
                                       shuffle=d.shuffle)
                _copy_rows(o, srcs, name)
            for name, g in first.items():
                if isinstance(g, h5py.Group):
                    out[name].attrs.update(dict(g.attrs))
            for k, v in first.attrs.items():
                out.attrs[k] = v
            out.attrs["complete"] = True
        os.replace(partial, out_path)
    finally:
        for s in srcs:
            s.close()


# --------------------------------------------------------------------------------------------- reading back
class Result:
    """A result file opened for reading: the window, names, coordinates, sets of scores and arrays by row."""

    def __init__(self, path: str):
        import h5py
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
        try:
            self.f = h5py.File(path, "r")
        except OSError:
            raise UserError(f"{path}: not an HDF5 result file") from None
        if "names" not in self.f or "seqs" not in self.f:
            self.f.close()
            raise UserError(f"{path}: not a fastism-torch result file (no 'names' and 'seqs' datasets)")
        version = int(self.f.attrs.get("format_version", 1))
        if version < READABLE_SINCE:
            self.f.close()
            raise UserError(f"{path} was written by an older fastism-torch (format {version}); rerun "
                            f"'fastism-torch ism' with --overwrite")
        self.path = path
        self.complete = bool(self.f.attrs.get("complete", False))
        self.window = int(self.f.attrs["window_start"]), int(self.f.attrs["window_end"])
        self.heads = json.loads(self.f.attrs["heads"]) if "heads" in self.f.attrs else [None]
        self.names = _strings(self.f["names"])
        self.chrom = _strings(self.f["chrom"]) if "chrom" in self.f else None
        self.start = self.f["start"][...] if "start" in self.f else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def head(self, name: str | None = None) -> str | None:
        """A set of scores by name (None: the first)."""
        if name is None:
            return self.heads[0]
        if name not in self.heads:
            raise UserError(f"{self.path} has no set of scores {name!r}; it has "
                            f"{', '.join(map(str, self.heads)) if self.heads != [None] else 'one (no --head)'}")
        return name

    def data(self, name: str, head: str | None = None):
        """The dataset ``name`` (``ism``, ``attr``, ``proj``, ``y_ref``, ``raw``) of a set of scores."""
        return self.f[dataset_path(head, name)]

    def target_names(self, head: str | None = None) -> list[str]:
        return _strings(self.data("target_names", head))

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
