"""Results out: the resumable, compressed HDF5 file with its sets of scores, the formats table
(modisco/chrombpnet files), merging parts, bigWig tracks."""
import json
import os

import h5py
import numpy as np
import pytest

from fastism_torch import formats, inputs, outputs
from fastism_torch.errors import UserError
from fastism_torch.pipeline import Head, ResolvedSpec, Scores

from _cli_helpers import random_seqs


def _scores(n, value, L=10, T=1, seed=0):
    rng = np.random.default_rng(seed)
    hyp = rng.normal(size=(n, 4, L)).astype(np.float32)
    return Scores(np.full((n, 4, L, T), value, np.float32), hyp, hyp * 0.5, np.ones((n, T), np.float32), None)


def _spec(L=10, window=None, heads=(None,), T=1):
    hs = tuple(Head(h, h or "none", tuple(f"t{i}" for i in range(T))) for h in heads)
    return ResolvedSpec(L, window or (0, L), hs, 1)


def _result(tmp_path, names=("a", "b", "c", "d"), L=10, **kw):
    seqs = inputs.encode(list(names), [s.encode() for s in random_seqs(len(names), L)])
    path = str(tmp_path / "r.h5")
    rf = outputs.ResultFile(path)
    rf.create(seqs, _spec(L, **kw), {"k": 1})
    return seqs, path, rf


def test_result_file_resumes(tmp_path):
    seqs, path, rf = _result(tmp_path)
    rf.write_chunk(0, 2, _scores(2, 1))
    rf.close()
    assert not os.path.exists(path) and os.path.exists(path + ".partial")
    rf2 = outputs.ResultFile(path)
    assert rf2.open_partial() is not None
    assert list(rf2.done_mask()) == [True, True, False, False]
    assert outputs.ResultFile.stored_settings(path + ".partial") == {"k": 1}
    s2 = _scores(2, 2, seed=1)
    rf2.write_chunk(2, 4, s2)
    rf2.finish()
    with h5py.File(path) as f:
        assert f.attrs["complete"] and f["ism"][0, 0, 0, 0] == 1 and f["ism"][3, 0, 0, 0] == 2
        assert f["seqs"].dtype == np.int8 and [n.decode() for n in f["names"][...]] == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(f["attr"][2:], s2.hypothetical)
        np.testing.assert_array_equal(f["proj"][2:], s2.projected)
    formats.write_sidecars(path, str(tmp_path / "r"))
    ohe = np.load(tmp_path / "r.ohe.npz")
    assert list(ohe.keys()) == ["arr_0"] and ohe["arr_0"].shape == (4, 4, 10)
    np.testing.assert_array_equal(np.load(tmp_path / "r.attr.npz")["arr_0"][2:], s2.hypothetical)
    np.testing.assert_array_equal(np.load(tmp_path / "r.proj.npz")["arr_0"][2:], s2.projected)
    assert open(tmp_path / "r.regions.bed").read().splitlines()[0] == "a\t0\t10\ta"


def test_chrombpnet_layout(tmp_path):
    seqs, path, rf = _result(tmp_path)
    s = _scores(4, 1)
    rf.write_chunk(0, 4, s)
    rf.finish()
    formats.write_chrombpnet(path, str(tmp_path / "x"))
    with h5py.File(tmp_path / "x.ism_scores.h5") as f:
        np.testing.assert_array_equal(f["raw/seq"][...], seqs.onehot)
        np.testing.assert_array_equal(f["shap/seq"][...], s.hypothetical)
        np.testing.assert_array_equal(f["projected_shap/seq"][...], s.projected)


def _part(tmp_path, name, seqs, index, done=True, heads=(None,)):
    rf = outputs.ResultFile(str(tmp_path / name))
    sub = inputs.Sequences(seqs.names, seqs.onehot, np.asarray(index))
    rf.create(sub, _spec(heads=heads), {"k": 1})
    if done:
        rf.write_chunk(0, len(index), {h: _scores(len(index), index[0] + k) for k, h in enumerate(heads)})
    rf.finish()
    return rf.path


def test_merge_checks_every_sequence_arrived(tmp_path):
    seqs, _, rf = _result(tmp_path)
    rf.close()
    a = _part(tmp_path, "a.h5", seqs.subset(0, 2), [0, 1])
    b = _part(tmp_path, "b.h5", seqs.subset(2, 4), [2, 3])
    with pytest.raises(RuntimeError, match="hold 2 sequences .* but the run has 4"):
        outputs.merge_parts([a], str(tmp_path / "m.h5"), 4, np.arange(4))
    assert not os.path.exists(tmp_path / "m.h5")
    c = _part(tmp_path, "c.h5", seqs.subset(2, 4), [2, 3], done=False)     # complete flag, rows not done
    with pytest.raises(RuntimeError, match=r"\(2 done\)"):
        outputs.merge_parts([a, c], str(tmp_path / "m.h5"), 4, np.arange(4))
    outputs.merge_parts([a, b], str(tmp_path / "m.h5"), 4, np.arange(4))
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["complete"] and list(f["index"][...]) == [0, 1, 2, 3] and f["ism"][3, 0, 0, 0] == 2


def _brute_track(chrom, start, values):
    """Per base: the value of the covering region whose centre (``start + len // 2 - 0.5``) is nearest,
    ties to the later region: chrombpnet's boundary ``(mid_i + mid_j) // 2`` between neighbours."""
    best = {}
    for c, s, v in sorted(zip(chrom, start, values), key=lambda r: r[1]):
        centre = s + len(v) // 2 - 0.5
        for k, x in enumerate(v):
            d = abs(s + k - centre)
            if (c, s + k) not in best or d <= best[(c, s + k)][0]:
                best[(c, s + k)] = (d, x)
    return {k: v[1] for k, v in best.items()}


def test_track_entries_split_overlaps_between_centres():
    rng = np.random.default_rng(0)
    chrom = ["chr1", "chr2", "chr1", "chr1", "chr1"]
    start = [100, 10, 130, 300, 106]
    values = [rng.normal(size=40) for _ in start]
    pieces = formats.track_entries(chrom, start, values, ["chr1", "chr2"])
    got = {}
    for c, s, v in pieces:
        for k, x in enumerate(v):
            assert (c, s + k) not in got                 # no base written twice
            got[(c, s + k)] = x
    want = _brute_track(chrom, start, values)
    assert got == want


def test_bigwig_reads_back(tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    seqs = inputs.encode(["chr1:100-110", "chr1:300-310", "chr2:5-15"],
                         [s.encode() for s in random_seqs(3, 10)])
    rf = outputs.ResultFile(str(tmp_path / "r.h5"))
    rf.create(seqs, _spec(10, (2, 8)), {})
    s = _scores(3, 1, L=6)
    rf.write_chunk(0, 3, s)
    rf.finish()
    sizes = tmp_path / "chrom.sizes"
    sizes.write_text("chr1\t1000\nchr2\t500\n")
    n = formats.write_bigwig(rf.path, str(sizes), str(tmp_path / "r.bw"))
    assert n == 18
    bw = pyBigWig.open(str(tmp_path / "r.bw"))
    want = s.projected.sum(1)
    np.testing.assert_allclose(bw.values("chr1", 102, 108), want[0], rtol=1e-6)
    np.testing.assert_allclose(bw.values("chr1", 302, 308), want[1], rtol=1e-6)
    np.testing.assert_allclose(bw.values("chr2", 7, 13), want[2], rtol=1e-6)
    assert np.isnan(bw.values("chr1", 108, 109)[0])
    bw.close()
    sizes.write_text("chr1\t1000\n")
    with pytest.raises(UserError, match="'chr2' is not in"):
        formats.write_bigwig(rf.path, str(sizes), str(tmp_path / "r2.bw"))


def test_sets_of_scores_compressed_merged_and_derived_per_head(tmp_path):
    """Two sets of scores (counts, profile): a group each, gzip per sequence, kept through the torchrun
    merge; modisco and chrombpnet files per set, named by the formats table."""
    seqs, _, rf = _result(tmp_path)
    rf.close()
    heads = ("counts", "profile")
    a = _part(tmp_path, "a.h5", seqs.subset(0, 2), [0, 1], heads=heads)
    b = _part(tmp_path, "b.h5", seqs.subset(2, 4), [2, 3], heads=heads)
    m = str(tmp_path / "m.h5")
    outputs.merge_parts([a, b], m, 4, np.arange(4))
    with h5py.File(m) as f:
        assert json.loads(f.attrs["heads"]) == ["counts", "profile"] and "ism" not in f
        assert f["counts"].attrs["reduction"] == "counts"
        for h, k in (("counts", 0), ("profile", 1)):
            d = f[f"{h}/ism"]
            assert d.compression == "gzip" and d.shuffle and d.chunks == (1, 4, 10, 1)
            assert d[0, 0, 0, 0] == k and d[3, 0, 0, 0] == 2 + k
        assert f["seqs"].compression == "gzip"
    prefix = str(tmp_path / "m")
    want = formats.derived_files(prefix, heads, ["chrombpnet"])
    assert want == [prefix + s for s in (".ohe.npz", ".counts.attr.npz", ".counts.proj.npz", ".profile.attr.npz",
                                         ".profile.proj.npz", ".regions.bed", ".counts_scores.h5",
                                         ".profile_scores.h5")]
    formats.write_derived(m, prefix, ["chrombpnet"])
    with outputs.Result(m) as r, h5py.File(prefix + ".profile_scores.h5") as c:
        assert all(os.path.exists(p) for p in want)
        np.testing.assert_array_equal(np.load(prefix + ".counts.attr.npz")["arr_0"], r.data("attr", "counts")[...])
        np.testing.assert_array_equal(c["shap/seq"][...], r.data("attr", "profile")[...])
        np.testing.assert_array_equal(c["raw/seq"][...], seqs.onehot)
        assert r.head() == "counts" and r.target_names("profile") == ["t0"]
        with pytest.raises(UserError, match="no set of scores 'jsd'; it has counts, profile"):
            r.head("jsd")
    with pytest.raises(UserError, match="unknown output format"):
        formats.selected(["bogus"])


def test_size_of_the_layout():
    spec = ResolvedSpec(100, (10, 60), (Head("counts", "counts", ("a",)), Head("profile", "profile", ("a", "b"))),
                        1, raw=True)
    # seqs int8 + per set: ism and raw (4 x 50 x T) + attr, proj (4 x 50) + y_ref (T), float32
    want = 3 * (4 * 100 + 4 * (2 * 4 * 50 * 1 + 2 * 4 * 50 + 1) + 4 * (2 * 4 * 50 * 2 + 2 * 4 * 50 + 2))
    assert outputs.result_bytes(3, spec) == want


def test_unknown_compression_is_refused():
    with pytest.raises(UserError, match="compression must be one of gzip, lzf, none; got 'zstd'"):
        outputs.ResultFile("x.h5", "zstd")
