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


def test_pairwise_cli_replace_with(tmp_path):
    """--replace-with N: both positions set to zeros, one value per pair, against plain forward passes."""
    model, fa = _files(tmp_path)
    assert _run(tmp_path, model, fa, "--reduction", "counts", "--replace-with", "N") == 0
    with h5py.File(tmp_path / "pw.h5") as f:
        assert "dependency_map" not in f
        pw, eps, ism, y_ref, x = (f[k][...] for k in ("pairwise", "epistasis", "ism", "y_ref", "seqs"))
    assert pw.shape == eps.shape == (2, W, 1, W, 1, 2) and ism.shape == (2, 1, W, 2)
    net = _net(model)
    rows = []
    for s in range(2):
        for i in range(W):
            for j in range(W):
                y = torch.from_numpy(x[s]).float()
                y[:, [START + i, START + j]] = 0
                rows.append(y)
    with torch.no_grad():
        want = net(torch.stack(rows))[1].reshape(2, W, 1, W, 1, 2)
    assert_close(pw, want)
    single = np.stack([pw[:, i, 0, i, 0] for i in range(W)], 1)                 # (2, W, 2)
    np.testing.assert_allclose(ism[:, 0], single - y_ref[:, None], rtol=1e-5, atol=1e-6)
    assert os.path.getsize(tmp_path / "pw.png") > 1000
    assert _run(tmp_path, model, fa, "--replace-with", "x,y", prefix="bad") == 1


def test_pairwise_cli_under_torchrun_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes (Gloo): each rank computes its block into a part file, rank 0 merges them
    into the same file a single process writes (parts removed)."""
    import subprocess
    import sys
    from _cli_helpers import REPO
    model, fa = _files(tmp_path, n=3)
    prefix = str(tmp_path / "dist")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "fastism_torch", "pairwise", "-m", f"{model}:make_model", "-s", fa, "--window-start", str(START),
           "--window-end", str(END), "-o", prefix, "--device", "cpu", "--no-check", "--reduction", "counts"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("dist")) == ["dist.h5", "dist.png"]
    assert _run(tmp_path, model, fa, "--reduction", "counts", "--device", "cpu", prefix="one") == 0
    with h5py.File(prefix + ".h5") as a, h5py.File(tmp_path / "one.h5") as b:
        assert a.attrs["settings_json"] == b.attrs["settings_json"] and set(a) == set(b)
        assert list(a["done"][...]) == [1, 1, 1]
        for k in ("pairwise", "epistasis", "dependency_map", "single", "ism", "y_ref", "seqs"):
            np.testing.assert_allclose(a[k][...], b[k][...], rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=k)
        assert list(a["names"][...]) == list(b["names"][...])
