"""Sequences in: FASTA / one-hot reading, encoding, the N policy, RNA, lengths, BED regions of a genome."""
import gzip
import warnings

import numpy as np
import pytest

from fastism_torch import inputs as fio
from fastism_torch.errors import InputWarning, UserError

from _cli_helpers import random_seqs, write_fasta


def test_encoding_lookup_table(tmp_path):
    fa = write_fasta(tmp_path / "a.fa", ["ACGTacgtN", "TTTTGGGGC"], names=["s1", "s2"], width=4)
    with pytest.warns(InputWarning, match="1 ambiguous base"):
        s = fio.load_sequences(fa)
    assert s.onehot.dtype == np.int8 and s.onehot.shape == (2, 4, 9)
    assert "".join("ACGT"[i] for i in s.onehot[0, :, :8].argmax(0)) == "ACGTACGT"
    assert s.onehot[0, :, 8].sum() == 0                                 # N -> all-zero column
    assert s.names == ["s1", "s2"] and s.chrom is None
    assert list(s.index) == [0, 1]


def test_n_policy(tmp_path):
    fa = write_fasta(tmp_path / "n.fa", ["ACGTA", "ACRTN", "ACGTA"], names=["a", "b", "c"])
    with pytest.warns(InputWarning, match=r"2 ambiguous base\(s\) .* in 1 of 3 sequence\(s\) are all-zero"):
        assert len(fio.load_sequences(fa, fio.ReadOptions(n_policy="zero"))) == 3
    with pytest.warns(InputWarning, match=r"skipped 1 of 3 sequence\(s\) .*first: 'b'"):
        s = fio.load_sequences(fa, fio.ReadOptions(n_policy="skip"))
    assert s.names == ["a", "c"] and list(s.index) == [0, 2] and s.skipped == ["b"]
    with pytest.raises(UserError, match=r"'b' has an ambiguous base .* at position 3"):
        fio.load_sequences(fa, fio.ReadOptions(n_policy="error"))
    clean = write_fasta(tmp_path / "clean.fa", ["ACGTA"], names=["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing zeroed: no warning
        fio.load_sequences(clean)


def test_rna_needs_asking(tmp_path):
    fa = write_fasta(tmp_path / "r.fa", ["ACGUA", "UUUUA"], names=["r1", "r2"])
    with pytest.raises(UserError, match=r"'r1' has U \(RNA\) at position 4; pass --rna"):
        fio.load_sequences(fa)
    s = fio.load_sequences(fa, fio.ReadOptions(rna=True))
    dna = fio.load_sequences(write_fasta(tmp_path / "d.fa", ["ACGTA", "TTTTA"], names=["r1", "r2"]))
    assert np.array_equal(s.onehot, dna.onehot)


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
        fio.load_sequences(fa, fio.ReadOptions(seq_len=8, pad=True))
    s = fio.load_sequences(fa, fio.ReadOptions(seq_len=8, center_crop=True, pad=True))
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


def test_reads_10000_sequences(tmp_path):
    rng = np.random.default_rng(0)
    L = 1000
    codes = rng.integers(0, 4, (10_000, L))
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[codes]
    with open(tmp_path / "big.fa", "wb") as fh:
        for i, row in enumerate(letters):
            fh.write(b">chr1:%d-%d\n" % (i * L, i * L + L))
            fh.write(b"\n".join(row[j:j + 80].tobytes() for j in range(0, L, 80)) + b"\n")
    s = fio.load_sequences(str(tmp_path / "big.fa"))
    assert s.onehot.shape == (10_000, 4, L) and s.names[-1] == f"chr1:{9999 * L}-{10_000 * L}"
    assert np.array_equal(s.onehot.argmax(1), codes) and list(s.start[:2]) == [0, L]


def _genome(tmp_path, sizes=(("chr1", 400), ("chr2", 250)), seed=0):
    rng = np.random.default_rng(seed)
    seqs = {c: "".join(rng.choice(list("ACGT"), n)) for c, n in sizes}
    path = write_fasta(tmp_path / "genome.fa", list(seqs.values()), names=list(seqs), width=50)
    return path, seqs


def test_bed_regions_centred_on_summit_or_midpoint(tmp_path):
    genome, g = _genome(tmp_path)
    bed = tmp_path / "peaks.narrowPeak"
    bed.write_text("track name=x\n"
                   "chr1\t100\t200\tp1\t0\t.\t1\t1\t1\t30\n"     # summit 130
                   "chr2\t50\t90\n"                               # BED3: midpoint 70
                   "chr1\t390\t399\tp3\t0\t.\t1\t1\t1\t-1\n"      # runs off chr1's end: skipped
                   "chr1\t0\t40\tp4\t0\t.\t1\t1\t1\t5\n")         # runs off the start: skipped
    with pytest.warns(InputWarning, match=r"skipped 2 of 4 region\(s\)"):
        s = fio.load_sequences(str(bed), fio.ReadOptions(seq_len=20), genome=genome)
    assert s.names == ["chr1:120-140", "chr2:60-80"] and list(s.index) == [0, 1]
    assert s.chrom == ["chr1", "chr2"] and list(s.start) == [120, 60] and list(s.end) == [140, 80]
    decoded = ["".join("ACGT"[i] for i in row.argmax(0)) for row in s.onehot]
    assert decoded == [g["chr1"][120:140], g["chr2"][60:80]]


def test_bed_names_are_kept_when_every_region_has_a_unique_one(tmp_path):
    genome, _ = _genome(tmp_path)
    bed = tmp_path / "peaks.narrowPeak"
    bed.write_text("chr1\t100\t200\tpeakA\t0\t.\t1\t1\t1\t30\n"
                   "chr1\t0\t40\toff\t0\t.\t1\t1\t1\t5\n"            # skipped: its name goes too
                   "chr2\t50\t90\tpeakB\n")
    with pytest.warns(InputWarning):
        s = fio.load_sequences(str(bed), fio.ReadOptions(seq_len=20), genome=genome)
    assert s.names == ["peakA", "peakB"] and list(s.index) == [0, 2]
    assert s.chrom == ["chr1", "chr2"] and list(s.start) == [120, 60] and list(s.end) == [140, 80]
    for dup in ("chr1\t100\t200\tp\nchr2\t50\t90\tp\n", "chr1\t100\t200\tp\nchr2\t50\t90\t.\n"):
        bed.write_text(dup)                  # repeated or missing names: coordinates name every region
        s = fio.load_sequences(str(bed), fio.ReadOptions(seq_len=20), genome=genome)
        assert s.names == ["chr1:140-160", "chr2:60-80"] and list(s.start) == [140, 60]


def test_bed_errors(tmp_path):
    genome, _ = _genome(tmp_path)
    bed = tmp_path / "p.bed"
    bed.write_text("chrX\t10\t20\n")
    with pytest.raises(UserError, match=r"chromosome\(s\) chrX are not in"):
        fio.load_sequences(str(bed), fio.ReadOptions(seq_len=10), genome=genome)
    bed.write_text("chr1\tten\t20\n")
    with pytest.raises(UserError, match="line 1 is not BED"):
        fio.load_sequences(str(bed), fio.ReadOptions(seq_len=10), genome=genome)
    bed.write_text("chr1\t10\t20\n")
    with pytest.raises(UserError, match="needs the reference genome"):
        fio.load_sequences(str(bed), fio.ReadOptions(seq_len=10))
    with pytest.raises(UserError, match="no region fits"):
        fio.load_sequences(str(bed), fio.ReadOptions(seq_len=1000), genome=genome)
