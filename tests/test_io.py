"""FASTA / one-hot reading, encoding, the N policy, lengths, and the resumable result file."""
import gzip
import os
import time

import numpy as np
import pytest

from fastism_torch import io as fio
from fastism_torch.io import UserError

from _cli_helpers import random_seqs, write_fasta


def test_encoding_lookup_table(tmp_path):
    fa = write_fasta(tmp_path / "a.fa", ["ACGTacgtN", "TTTTGGGGC"], names=["s1", "s2"], width=4)
    s = fio.load_sequences(fa)
    assert s.onehot.dtype == np.int8 and s.onehot.shape == (2, 4, 9)
    assert "".join("ACGT"[i] for i in s.onehot[0, :, :8].argmax(0)) == "ACGTACGT"
    assert s.onehot[0, :, 8].sum() == 0                                 # N -> all-zero column
    assert s.names == ["s1", "s2"] and s.chrom is None
    assert list(s.index) == [0, 1]


def test_n_policy(tmp_path):
    fa = write_fasta(tmp_path / "n.fa", ["ACGTA", "ACRTA", "ACGTA"], names=["a", "b", "c"])
    assert len(fio.load_sequences(fa, n_policy="zero")) == 3
    s = fio.load_sequences(fa, n_policy="skip")
    assert s.names == ["a", "c"] and list(s.index) == [0, 2] and s.skipped == ["b"]
    with pytest.raises(UserError, match=r"'b' has an ambiguous base \(R\) at position 3"):
        fio.load_sequences(fa, n_policy="error")


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("\n\n", "empty"),
    ("ACGT\nACGT\n", "not a FASTA"),
    (">a\nACGT\n>a\nACGT\n", "duplicate"),
    (">a\nAC-T\n", "invalid character"),
    (">a\nACGT\n>b\nACGTAA\n", "different lengths"),
])
def test_bad_fasta(tmp_path, content, match):
    p = tmp_path / "bad.fa"
    p.write_text(content)
    with pytest.raises(UserError, match=match):
        fio.load_sequences(str(p))


def test_missing_file():
    with pytest.raises(UserError, match="no such file"):
        fio.load_sequences("/nonexistent/x.fa")


def test_crop_pad_and_coordinates(tmp_path):
    fa = write_fasta(tmp_path / "c.fa", ["AAAACCCCGG", "ACGTAC"], names=["chr2:100-110", "chr2:200-206"])
    with pytest.raises(UserError, match="--center-crop"):
        fio.load_sequences(fa, seq_len=8, pad=True)
    s = fio.load_sequences(fa, seq_len=8, center_crop=True, pad=True)
    assert s.onehot.shape == (2, 4, 8)
    assert "".join("ACGT"[i] for i in s.onehot[0].argmax(0)) == "AAACCCCG"        # offset 1
    assert s.onehot[1, :, 0].sum() == 0 and s.onehot[1, :, 7].sum() == 0          # one N each side
    assert s.chrom == ["chr2", "chr2"]
    assert list(s.start) == [101, 199] and list(s.end) == [109, 207]
    # samtools-style 1-based inclusive names convert to BED
    fa1 = write_fasta(tmp_path / "d.fa", ["ACGT", "ACGT"], names=["chr1:1-4", "chr1:11-14"])
    assert list(fio.load_sequences(fa1).start) == [0, 10]


def test_gzip_fasta(tmp_path):
    seqs = random_seqs(5, 50, seed=1)
    plain = write_fasta(tmp_path / "p.fa", seqs)
    gz = str(tmp_path / "p.fa.gz")
    with open(plain, "rb") as a, gzip.open(gz, "wb") as b:
        b.write(a.read())
    a, b = fio.load_sequences(plain), fio.load_sequences(gz)
    assert a.names == b.names and np.array_equal(a.onehot, b.onehot)


def test_onehot_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (3, 12))]      # (N, L, 4)
    np.save(tmp_path / "x.npy", x)
    s = fio.load_sequences(str(tmp_path / "x.npy"))
    assert s.onehot.shape == (3, 4, 12) and np.array_equal(s.onehot, x.transpose(0, 2, 1))
    np.savez(tmp_path / "x.npz", x.transpose(0, 2, 1), names=np.array(["a", "b", "c"]))
    assert fio.load_sequences(str(tmp_path / "x.npz")).names == ["a", "b", "c"]
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 7)))
    with pytest.raises(UserError, match=r"\(N, 4, L\)"):
        fio.load_sequences(str(tmp_path / "bad.npy"))


def test_fasta_speed_10000_sequences(tmp_path):
    rng = np.random.default_rng(0)
    L = 1000
    codes = rng.integers(0, 4, (10_000, L))
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[codes]
    with open(tmp_path / "big.fa", "wb") as fh:
        for i, row in enumerate(letters):
            fh.write(b">chr1:%d-%d\n" % (i * L, i * L + L))
            fh.write(b"\n".join(row[j:j + 80].tobytes() for j in range(0, L, 80)) + b"\n")
    t = time.perf_counter()
    s = fio.load_sequences(str(tmp_path / "big.fa"))
    dt = time.perf_counter() - t
    assert s.onehot.shape == (10_000, 4, L)
    assert np.array_equal(s.onehot[:, :, :].argmax(1), codes)
    assert dt < 2.0, f"reading and encoding 10,000 x 1 kb took {dt:.2f}s"


def test_result_file_resumes(tmp_path):
    seqs = fio.encode(["a", "b", "c", "d"], [s.encode() for s in random_seqs(4, 10)])
    path = str(tmp_path / "r.h5")
    rf = fio.ResultFile(path)
    rf.create(seqs, (0, 10), 4, ["t"], {"k": 1}, raw=False)
    rf.write_chunk(0, 2, np.ones((2, 4, 10, 1)), np.ones((2, 4, 10)), np.ones((2, 1)))
    rf.close()
    assert not os.path.exists(path) and os.path.exists(path + ".partial")
    rf2 = fio.ResultFile(path)
    assert rf2.open_partial() is not None
    assert list(rf2.done_mask()) == [True, True, False, False]
    assert fio.ResultFile.stored_settings(path + ".partial") == {"k": 1}
    rf2.write_chunk(2, 4, 2 * np.ones((2, 4, 10, 1)), np.ones((2, 4, 10)), np.ones((2, 1)))
    rf2.finish()
    import h5py
    with h5py.File(path) as f:
        assert f.attrs["complete"] and f["ism"][0, 0, 0, 0] == 1 and f["ism"][3, 0, 0, 0] == 2
        assert f["seqs"].dtype == np.int8 and [n.decode() for n in f["names"][...]] == ["a", "b", "c", "d"]
    fio.write_sidecars(path, str(tmp_path / "r"))
    ohe = np.load(tmp_path / "r.ohe.npz")
    assert list(ohe.keys()) == ["arr_0"] and ohe["arr_0"].shape == (4, 4, 10)
    assert np.load(tmp_path / "r.attr.npz")["arr_0"].shape == (4, 4, 10)
    assert open(tmp_path / "r.regions.bed").read().splitlines()[0] == "a\t0\t10\ta"
