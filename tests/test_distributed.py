"""torchrun with 2 CPU processes (Gloo): sharded, merged on rank 0, identical to a single-process run."""
import os
import subprocess
import sys

import h5py
import numpy as np

from fastism_torch import distributed
from fastism_torch.cli import main

from _cli_helpers import EXAMPLE_FA, EXAMPLE_MODEL, REPO


def test_shards_cover_every_sequence_once():
    for n in (1, 2, 7, 12, 100):
        for world in (1, 2, 3, 8):
            blocks = [distributed.shard(n, distributed.Context(r, world, r)) for r in range(world)]
            covered = np.concatenate([np.arange(lo, hi) for lo, hi in blocks])
            assert list(covered) == list(range(n))


def test_torchrun_two_cpu_processes_matches_single_process(tmp_path):
    prefix = str(tmp_path / "dist")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fastism_torch", "ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", prefix,
           "--device", "cpu", "--window-start", "100", "--window-end", "200", "--chunk-size", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["dist" + e for e in (".h5", ".ohe.npz", ".attr.npz", ".proj.npz", ".regions.bed", ".args.json")])   # parts removed
    single = str(tmp_path / "single")
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", single, "--device", "cpu",
                 "--start", "100", "--end", "200"]) == 0
    with h5py.File(prefix + ".h5") as a, h5py.File(single + ".h5") as b:
        assert a.attrs["complete"] and a.attrs["settings_json"] == b.attrs["settings_json"]
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            np.testing.assert_allclose(a[k][...].astype(float) if a[k].dtype.kind in "fiu" else 0,
                                       b[k][...].astype(float) if b[k].dtype.kind in "fiu" else 0,
                                       rtol=1e-5, atol=1e-6, err_msg=k)
            if a[k].dtype.kind == "O":
                assert list(a[k][...]) == list(b[k][...]), k
        assert list(a["index"][...]) == list(range(12))
    assert open(prefix + ".regions.bed").read() == open(single + ".regions.bed").read()
