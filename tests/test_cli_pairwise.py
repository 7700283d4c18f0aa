"""``fastism-torch pairwise`` end to end: the HDF5 file against plain forward passes, the picture, resuming,
settings checks and one-line errors."""
import os

import h5py
import numpy as np
import torch

import fastism_torch as ft
from fastism_torch.cli import main

from _cli_helpers import PROFILE_MODEL, random_seqs, write_fasta, write_model
from test_pairwise import assert_close, naive_pairwise

L, START, END = 40, 14, 20
W = END - START


def _files(tmp_path, n=2):
    model = write_model(tmp_path, PROFILE_MODEL, "profile_model.py")
    fa = write_fasta(tmp_path / "s.fa", random_seqs(n, L, seed=3))
    return model, fa


def _run(tmp_path, model, fa, *extra, prefix="pw"):
    return main(["pairwise", "-m", f"{model}:make_model", "-s", fa, "--start", str(START), "--end", str(END),
                 "-o", str(tmp_path / prefix), "--no-check", *map(str, extra)])


def _net(model_path):
    ns = {}
    exec(open(model_path).read(), ns)
    return ns["make_model"]().eval()


def test_pairwise_cli_writes_exact_maps_and_picture(tmp_path):
    model, fa = _files(tmp_path)
    assert _run(tmp_path, model, fa, "--reduction", "counts") == 0
    assert os.path.getsize(tmp_path / "pw.png") > 1000
    with h5py.File(tmp_path / "pw.h5") as f:
        pw, eps, dep = f["pairwise"][...], f["epistasis"][...], f["dependency_map"][...]
        single, ism, y_ref, x = f["single"][...], f["ism"][...], f["y_ref"][...], f["seqs"][...]
        assert list(f["done"][...]) == [1, 1]
        assert [t.decode() for t in f["target_names"][...]] == ["0", "1"]
    assert pw.shape == eps.shape == (2, W, 4, W, 4, 2) and dep.shape == (2, W, W) and ism.shape == (2, 4, W, 2)
    net = _net(model)
    counts = lambda m: m(torch.from_numpy(x).float())[1]                      # noqa: E731  (reduction counts)

    class Counts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, s):
            return self.net(s)[1]
    want = naive_pairwise(Counts(), torch.from_numpy(x).float(), START, END)
    assert_close(pw, want)
    assert_close(y_ref, counts(net).detach())
    s = np.stack([pw[:, i, a, i, a] for i in range(W) for a in range(4)], 1).reshape(2, W, 4, 2)
    assert_close(single, s)
    assert_close(eps, ft.epistasis(pw, single, y_ref))
    ref = ft.dependency_map(Counts(), torch.from_numpy(x).float(), start=START, end=END, test_correctness=False)
    assert_close(dep, ref[:, START:END], rtol=1e-4)


def test_pairwise_cli_resumes_and_checks_settings(tmp_path, capsys):
    model, fa = _files(tmp_path)
    assert _run(tmp_path, model, fa, "--target", "1") == 0
    final = tmp_path / "pw.h5"
    with h5py.File(final) as f:
        before = f["pairwise"][...]
    assert before.shape[-1] == 1
    assert _run(tmp_path, model, fa, "--target", "1") == 0                     # complete: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert _run(tmp_path, model, fa, "--target", "0") == 1                     # other settings: refused
    assert "other settings" in capsys.readouterr().err
    os.replace(final, str(final) + ".partial")                                  # an interrupted run
    with h5py.File(str(final) + ".partial", "r+") as f:
        f["done"][1] = 0
        f["pairwise"][1] = 0
    assert _run(tmp_path, model, fa, "--target", "1") == 0
    with h5py.File(final) as f:
        np.testing.assert_array_equal(f["pairwise"][...], before)


def test_pairwise_cli_user_errors_are_one_line(tmp_path, capsys):
    model, fa = _files(tmp_path, n=1)
    assert main(["pairwise", "-m", f"{model}:make_model", "-s", fa, "-o", str(tmp_path / "x")]) == 1
    assert "--start and --end are required" in capsys.readouterr().err
    assert main(["pairwise", "-m", f"{model}:make_model", "-s", fa, "-o", str(tmp_path / "x"), "--start", "30",
                 "--end", "10"]) == 1
    err = capsys.readouterr().err
    assert "0 <= start < end" in err and len(err.strip().splitlines()) == 1
