"""Scores: the tangermeme convention, the profile reductions and the reverse-strand mapping."""
import math

import numpy as np
import pytest
import torch

from fastism_torch import NaiveISM, scores
from fastism_torch.cli import main

from _cli_helpers import EXAMPLE_FA, EXAMPLE_MODEL, PROFILE_MODEL, write_fasta, random_seqs, write_model


def _onehot(n, L, seed=0):
    rng = np.random.default_rng(seed)
    return np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, L))].transpose(0, 2, 1).copy()


def test_ism_scores_are_centred_and_projected():
    rng = np.random.default_rng(0)
    mut, ref = rng.normal(size=(3, 4, 7, 2)), rng.normal(size=(3, 2))
    s = scores.ism_scores(mut, ref)
    np.testing.assert_allclose(s.sum(1), 0, atol=1e-12)
    np.testing.assert_allclose(s, (mut - ref[:, None, None]) - (mut - ref[:, None, None]).mean(1, keepdims=True))
    x = _onehot(3, 7)
    a = scores.attributions(s, x)
    np.testing.assert_allclose(a, (s.mean(-1) * x).astype(np.float32), rtol=1e-6)
    assert ((a != 0).sum(1) <= 1).all()
    h = scores.attributions(s, x, hypothetical=True)
    np.testing.assert_allclose(h, s.mean(-1), rtol=1e-6)


def test_reductions_match_formulas():
    g = torch.Generator().manual_seed(0)
    prof, cnt = torch.randn(5, 2, 11, generator=g), torch.randn(5, 2, generator=g)
    ref_prof = torch.randn(1, 2, 11, generator=g)
    outs, refs = [prof, cnt], [ref_prof, torch.zeros(1, 2)]
    r = lambda name: scores.reduce_outputs(outs, refs, name, 1).numpy()   # noqa: E731
    p = prof.double().numpy()
    np.testing.assert_allclose(r("none"), np.concatenate([p.reshape(5, -1), cnt.double().numpy()], 1))
    np.testing.assert_allclose(r("counts"), cnt.double().numpy())
    np.testing.assert_allclose(r("log2fc"), cnt.double().numpy() / math.log(2))
    sm = np.exp(p) / np.exp(p).sum(-1, keepdims=True)
    np.testing.assert_allclose(r("profile"), (p * sm).sum(-1))
    q = ref_prof.double().numpy()
    sq = np.exp(q) / np.exp(q).sum(-1, keepdims=True)
    m = (sm + sq) / 2
    jsd = 0.5 * (sm * np.log2(sm / m)).sum(-1) + 0.5 * (sq * np.log2(sq / m)).sum(-1)
    np.testing.assert_allclose(r("jsd"), jsd, atol=1e-12)
    assert np.allclose(scores.reduce_outputs([ref_prof], [ref_prof], "jsd", 1).numpy(), 0, atol=1e-12)
    # Without a counts head: counts = sum over the profile axis; log2fc = log2 of that sum.
    pos = prof.exp()
    np.testing.assert_allclose(scores.reduce_outputs([pos], [pos], "log2fc", 1).numpy(),
                               np.log2(pos.double().numpy().sum(-1)))
    with pytest.raises(ValueError, match="profile output"):
        scores.reduce_outputs([cnt], [cnt], "profile", 1)


def test_reverse_strand_mapping():
    """ISM of the reverse complement, mapped back, equals ISM of a strand-flipped model on the forward strand."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 3, 5), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 12, 1))

    class Flipped(torch.nn.Module):
        def forward(self, x):
            return net(x.flip(1, 2))

    x = _onehot(2, 16)
    a = NaiveISM(net, 16).saturation_mutagenesis(scores.reverse_complement(x))
    b = NaiveISM(Flipped(), 16).saturation_mutagenesis(x)
    np.testing.assert_allclose(scores.from_reverse_strand(a[..., None])[..., 0], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opts,tkw", [
    ([], {}),
    (["--target", "1"], {"target": 1}),
    (["--start", "40", "--end", "90", "--target", "ebox"], {"start": 40, "end": 90, "target": 1}),
])
def test_default_scores_equal_tangermeme(tmp_path, opts, tkw):
    tangermeme = pytest.importorskip("tangermeme.saturation_mutagenesis")
    import importlib.util
    spec = importlib.util.spec_from_file_location("example_model_t", EXAMPLE_MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prefix = str(tmp_path / "out")
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", prefix, "--device", "cpu",
                 *opts]) == 0
    ohe = np.load(prefix + ".ohe.npz")["arr_0"]
    attr = np.load(prefix + ".attr.npz")["arr_0"]
    proj = np.load(prefix + ".proj.npz")["arr_0"]
    import h5py
    with h5py.File(prefix + ".h5") as f:
        X = torch.from_numpy(f["seqs"][...])
    def tm(**kw):
        return tangermeme.saturation_mutagenesis(mod.make_model(), X, batch_size=256, device="cpu", fast=False,
                                                 **tkw, **kw).numpy()
    hyp, want = tm(hypothetical=True), tm()
    assert attr.shape == want.shape == proj.shape == ohe.shape
    np.testing.assert_allclose(attr, hyp, rtol=1e-4, atol=1e-6)      # attr.npz: hypothetical (modisco -a)
    np.testing.assert_allclose(proj, want, rtol=1e-4, atol=1e-6)     # proj.npz: on the observed base


def test_profile_reductions_and_rc_average_through_cli(tmp_path):
    model = write_model(tmp_path, PROFILE_MODEL, "bpnet_tiny.py")
    fa = write_fasta(tmp_path / "p.fa", random_seqs(3, 24, seed=3))
    res = {}
    import h5py
    for red in ("counts", "profile", "log2fc", "jsd"):
        prefix = str(tmp_path / red)
        assert main(["ism", "-m", f"{model}:make_model", "-s", fa, "-o", prefix, "--reduction", red]) == 0
        with h5py.File(prefix + ".h5") as f:
            res[red] = f["ism"][...]
            assert f["ism"].shape == (3, 4, 24, 2) and f["y_ref"].shape == (3, 2)
            if red == "jsd":
                np.testing.assert_allclose(f["y_ref"][...], 0, atol=1e-7)
    np.testing.assert_allclose(res["log2fc"], res["counts"] / math.log(2), rtol=1e-5, atol=1e-7)
    # rc-average: the mean of the forward run and the mapped-back run on reverse-complemented input.
    prefix = str(tmp_path / "rc")
    assert main(["ism", "-m", f"{model}:make_model", "-s", fa, "-o", prefix, "--reduction", "counts",
                 "--rc-average", "--raw"]) == 0
    from fastism_torch import inputs
    seqs = inputs.load_sequences(fa)
    rc_fa = write_fasta(tmp_path / "rc.fa", ["".join("ACGT"[3 - b] for b in np.argmax(s, 0)[::-1]) for s in seqs.onehot])
    assert main(["ism", "-m", f"{model}:make_model", "-s", rc_fa, "-o", str(tmp_path / "rev"),
                 "--reduction", "counts", "--raw"]) == 0
    assert main(["ism", "-m", f"{model}:make_model", "-s", fa, "-o", str(tmp_path / "fwd"),
                 "--reduction", "counts", "--raw"]) == 0
    with h5py.File(prefix + ".h5") as a, h5py.File(str(tmp_path / "fwd.h5")) as f, \
            h5py.File(str(tmp_path / "rev.h5")) as r:
        want = (f["raw"][...] + scores.from_reverse_strand(r["raw"][...])) / 2
        np.testing.assert_allclose(a["raw"][...], want, rtol=1e-5, atol=1e-6)
