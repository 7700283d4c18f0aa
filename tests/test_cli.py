"""The command-line tool end to end: files written, settings checks, user errors, resuming after a kill."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from fastism_torch.cli import main

from _cli_helpers import (EXAMPLE_FA, EXAMPLE_MODEL, REPO, random_seqs, run_cli, write_fasta, write_model)


def ism_mean(path):
    with h5py.File(path) as f:
        return f["ism"][...].mean(-1)


def _ism(tmp_path, *extra, model=None, fa=None, prefix="out"):
    model = model or f"{EXAMPLE_MODEL}:make_model"
    fa = fa or EXAMPLE_FA
    return main(["ism", "-m", model, "-s", fa, "-o", str(tmp_path / prefix), *map(str, extra)])


def test_example_end_to_end(tmp_path):
    assert _ism(tmp_path) == 0
    p = tmp_path / "out"
    for ext in (".h5", ".ohe.npz", ".attr.npz", ".proj.npz", ".regions.bed", ".args.json"):
        assert os.path.exists(str(p) + ext), ext
    assert not os.path.exists(str(p) + ".h5.partial")
    with h5py.File(str(p) + ".h5") as f:
        assert f.attrs["complete"]
        assert f["ism"].shape == (12, 4, 300, 3) and f["ism"].chunks[0] == 1
        assert f["y_ref"].shape == (12, 3) and f["attr"].shape == (12, 4, 300)
        assert f["seqs"].dtype == np.int8 and f["seqs"].shape == (12, 4, 300)
        assert [t.decode() for t in f["target_names"][...]] == ["gata", "ebox", "ap1"]
        names = [n.decode() for n in f["names"][...]]
        assert names[0] == "chr1:10000-10300" and f["chrom"][0].decode() == "chr1"
        assert f["start"][1] == 12000 and f["end"][1] == 12300
        np.testing.assert_allclose(f["ism"][...].sum(1), 0, atol=1e-5)           # centred across bases
        settings = json.loads(f.attrs["settings_json"])
        assert settings["reduction"] == "auto" and f.attrs["n_policy"] == "zero"     # auto: "none" for a classifier
        assert settings["heads"] == [[None, "none", ["gata", "ebox", "ap1"]]] and f["ism"].compression == "gzip"
        attr, proj = f["attr"][...], f["proj"][...]
        seqs = f["seqs"][...]
    np.testing.assert_array_equal(np.load(str(p) + ".attr.npz")["arr_0"], attr)
    np.testing.assert_array_equal(np.load(str(p) + ".proj.npz")["arr_0"], proj)
    mean = ism_mean(str(p) + ".h5")
    np.testing.assert_allclose(attr, mean, rtol=1e-5, atol=1e-8)   # hypothetical: every base
    np.testing.assert_allclose(proj, mean * seqs, rtol=1e-5, atol=1e-8)   # projected: the observed base
    np.testing.assert_array_equal(np.load(str(p) + ".ohe.npz")["arr_0"], seqs)
    bed = open(str(p) + ".regions.bed").read().splitlines()
    assert len(bed) == 12 and bed[0].split("\t") == ["chr1", "10000", "10300", "chr1:10000-10300"]
    args = json.load(open(str(p) + ".args.json"))
    assert args["args"]["n_policy"] == "zero" and "settings" in args


def test_existing_output_is_refused_or_reused(tmp_path, capsys):
    model = write_model(tmp_path)
    fa = write_fasta(tmp_path / "s.fa", random_seqs(3, 16))
    base = ["--engine", "naive"]
    assert _ism(tmp_path, *base, model=f"{model}:make_model", fa=fa) == 0
    capsys.readouterr()
    assert _ism(tmp_path, *base, model=f"{model}:make_model", fa=fa) == 0
    assert "already complete" in capsys.readouterr().err
    assert _ism(tmp_path, *base, "--target", "t1", model=f"{model}:make_model", fa=fa) == 1
    err = capsys.readouterr().err
    assert "different settings" in err and "target" in err and "--overwrite" in err
    assert _ism(tmp_path, *base, "--target", "t1", "--overwrite", model=f"{model}:make_model", fa=fa) == 0
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["ism"].shape == (3, 4, 16, 1)
    capsys.readouterr()
    # engine, dtype and the self-check are settings too: one file never mixes FastISM and NaiveISM results
    assert _ism(tmp_path, "--target", "t1", model=f"{model}:make_model", fa=fa) == 1
    err = capsys.readouterr().err
    assert "different settings (engine)" in err


def test_params_json_and_command_line_override(tmp_path):
    model = write_model(tmp_path)
    fa = write_fasta(tmp_path / "s.fa", random_seqs(2, 16))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"model": f"{model}:make_model", "seqs": fa, "output": str(tmp_path / "pj"),
                                  "start": 2, "end": 10, "target": "t0", "engine": "naive"}))
    assert main(["ism", "-p", str(params), "--end", "12"]) == 0
    with h5py.File(tmp_path / "pj.h5") as f:
        assert f["ism"].shape == (2, 4, 10, 1)
        assert f.attrs["window_start"] == 2 and f.attrs["window_end"] == 12
    params.write_text(json.dumps({"bogus_option": 1}))
    assert main(["ism", "-p", str(params)]) == 1


def test_replace_with_and_onehot_input(tmp_path):
    import fastism_torch
    model = write_model(tmp_path)
    rng = np.random.default_rng(0)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (3, 16))].transpose(0, 2, 1).copy()
    np.save(tmp_path / "x.npy", x)
    assert _ism(tmp_path, "--replace-with", "0", "--raw", "--engine", "naive", model=f"{model}:make_model",
                fa=str(tmp_path / "x.npy")) == 0
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny_t", model)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    eng = fastism_torch.NaiveISM(mod.make_model(16), 16)
    want = eng(x, replace_with=0) - eng.predict(x)[:, None]                      # (N, L, T)
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["ism"].shape == (3, 1, 16, 2)
        np.testing.assert_allclose(f["ism"][:, 0], want, rtol=1e-5, atol=1e-6)
        assert [n.decode() for n in f["names"][...]] == ["seq0", "seq1", "seq2"]
    attr = np.load(tmp_path / "out.attr.npz")["arr_0"]
    np.testing.assert_allclose(attr, np.broadcast_to(want.mean(-1)[:, None], x.shape), rtol=1e-5, atol=1e-6)
    proj = np.load(tmp_path / "out.proj.npz")["arr_0"]
    np.testing.assert_allclose(proj, x * want.mean(-1)[:, None], rtol=1e-5, atol=1e-6)


def test_n_policy_skip_keeps_input_index(tmp_path):
    model = write_model(tmp_path)
    seqs = random_seqs(4, 16)
    seqs[1] = "N" + seqs[1][1:]
    fa = write_fasta(tmp_path / "s.fa", seqs)
    assert _ism(tmp_path, "--n-policy", "skip", "--engine", "naive", model=f"{model}:make_model", fa=fa) == 0
    with h5py.File(tmp_path / "out.h5") as f:
        assert list(f["index"][...]) == [0, 2, 3]
    assert _ism(tmp_path, "--n-policy", "error", "--engine", "naive", model=f"{model}:make_model", fa=fa,
                prefix="o2") == 1


def _bad_cases(tmp_path):
    model = write_model(tmp_path)
    good = write_fasta(tmp_path / "good.fa", random_seqs(2, 16))
    (tmp_path / "empty.fa").write_text("")
    (tmp_path / "malformed.fa").write_text("this is not fasta\n")
    write_fasta(tmp_path / "dup.fa", random_seqs(2, 16), names=["x", "x"])
    write_fasta(tmp_path / "mixed.fa", ["ACGTACGT", "ACG"], names=["a", "b"])
    (tmp_path / "broken.py").write_text("def make_model(:\n")
    (tmp_path / "notafile").write_text("")
    m = f"{model}:make_model"
    return [
        (["-m", m, "-s", str(tmp_path / "empty.fa")], "empty"),
        (["-m", m, "-s", str(tmp_path / "malformed.fa")], "not a FASTA"),
        (["-m", m, "-s", str(tmp_path / "dup.fa")], "duplicate"),
        (["-m", m, "-s", str(tmp_path / "mixed.fa")], "different lengths"),
        (["-m", f"{tmp_path / 'broken.py'}:make_model", "-s", good], "does not load"),
        (["-m", f"{model}:nope", "-s", good], "no function 'nope'"),
        (["-m", str(tmp_path / "model.onnx"), "-s", good], "no such file"),
        (["-m", m, "-s", good, "--target", "t9"], "does not exist"),
        (["-m", m, "-s", good, "--start", "10", "--end", "5"], "--start/--end"),
        (["-m", m, "-s", good, "-o", str(tmp_path / "notafile" / "sub" / "x")], "cannot create output folder"),
    ]


def test_user_errors_are_one_line(tmp_path, capsys):
    for argv, match in _bad_cases(tmp_path):
        if "-o" not in argv:
            argv = argv + ["-o", str(tmp_path / "err")]
        code = main(["ism", *argv, "--engine", "naive"])
        err = capsys.readouterr().err.strip()
        assert code == 1, (argv, err)
        assert match in err and "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
        assert not os.path.exists(tmp_path / "err.h5")


def test_user_error_in_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "empty.fa").write_text("")
    r = run_cli("ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", tmp_path / "empty.fa", "-o", tmp_path / "x")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("fastism-torch: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_killed_run_resumes_to_identical_result(tmp_path):
    """SIGKILL a run after some chunks are written; the same command finishes it; same result as one run."""
    model = write_model(tmp_path, sleep=0.05)
    fa = write_fasta(tmp_path / "s.fa", random_seqs(16, 20, seed=5))
    cmd = ["ism", "-m", f"{model}:make_model", "-s", fa, "-o", tmp_path / "killed", "--chunk-size", "2",
           "--batch-size", "32", "--engine", "naive", "-v"]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "fastism_torch", *map(str, cmd)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    seen, buf = [0], []

    def reader():
        while True:
            c = proc.stderr.read(1)
            if not c:
                return
            buf.append(c)
            m = re.findall(rb"(\d+)/16", b"".join(buf[-40:]))
            if m:
                seen[0] = max(seen[0], int(m[-1]))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.time() + 60
    while seen[0] < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: " + b"".join(buf).decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t.join(5)
    assert not os.path.exists(tmp_path / "killed.h5")                       # nothing looks complete
    with h5py.File(tmp_path / "killed.h5.partial") as f:
        n_done = int(f["done"][...].sum())
        assert not f.attrs["complete"]
    assert 4 <= n_done < 16
    r = run_cli(*cmd)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {n_done} of 16" in r.stderr
    whole = [str(tmp_path / "whole") if c == tmp_path / "killed" else str(c) for c in cmd]
    assert main(whole) == 0      # the same command uninterrupted (the same batch sizes: bit-identical results)
    with h5py.File(tmp_path / "killed.h5") as a, h5py.File(tmp_path / "whole.h5") as b:
        assert a.attrs["complete"]
        for k in ("ism", "attr", "y_ref", "seqs", "index", "done"):
            np.testing.assert_array_equal(a[k][...], b[k][...], err_msg=k)
    for ext in (".ohe.npz", ".attr.npz"):
        np.testing.assert_array_equal(np.load(str(tmp_path / "killed") + ext)["arr_0"],
                                      np.load(str(tmp_path / "whole") + ext)["arr_0"])


def test_python_dash_m_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "ism" in r.stdout and "plot" in r.stdout
    r = run_cli("ism", "--help")
    assert "--n-policy" in r.stdout and "--rc-average" in r.stdout


def test_onnx_model_matches_pytorch_factory(tmp_path):
    """The same model as an .onnx file (via fastism_torch.from_onnx) gives the same scores."""
    pytest.importorskip("fastism_torch.importers.onnx")
    pytest.importorskip("onnx")
    import importlib.util
    import torch
    spec = importlib.util.spec_from_file_location("example_model_onnx", EXAMPLE_MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    onnx_path = str(tmp_path / "example.onnx")
    try:
        torch.onnx.export(mod.make_model(), torch.zeros(1, 4, 300), onnx_path, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    except Exception as e:  # pragma: no cover - exporter unavailable
        pytest.skip(f"torch.onnx.export failed: {e}")
    assert main(["ism", "-m", onnx_path, "-s", EXAMPLE_FA, "-o", str(tmp_path / "onnx"), "--device", "cpu",
                 "--window-start", "100", "--window-end", "160"]) == 0
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", str(tmp_path / "pt"),
                 "--device", "cpu", "--window-start", "100", "--window-end", "160"]) == 0
    a = np.load(tmp_path / "onnx.attr.npz")["arr_0"]
    b = np.load(tmp_path / "pt.attr.npz")["arr_0"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("given, active, want", [("cuda", False, "cuda:0"), ("auto", False, "cuda:0"),
                                                 (None, False, "cuda:0"), ("cuda", True, "cuda:1"),
                                                 ("cuda:1", False, "cuda:1"), ("cpu", False, "cpu")])
def test_device_resolution_with_a_mocked_gpu(monkeypatch, given, active, want):
    """``--device cuda`` once called ``torch.cuda.set_device(torch.device("cuda"))``, which raises (no index)."""
    import torch
    from fastism_torch import cli, distributed
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.cuda._get_device_index(d)))
    ctx = distributed.Context(1, 2, 1) if active else distributed.Context()
    assert cli.resolve_device(given, ctx) == want
    assert calls == ([int(want[-1])] if want.startswith("cuda") else [])


def test_device_resolution_errors(monkeypatch):
    import torch
    from fastism_torch import cli, distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(cli.UserError, match="has 1 CUDA device"):
        cli.resolve_device("cuda:3", distributed.Context())
    with pytest.raises(cli.UserError, match="not a device torch knows"):
        cli.resolve_device("gpu0", distributed.Context())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(cli.UserError, match="CUDA is not available"):
        cli.resolve_device("cuda", distributed.Context())


def test_bed_regions_to_chrombpnet_h5_and_bigwig(tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    rng = np.random.default_rng(0)
    genome = {"chr1": "".join(rng.choice(list("ACGT"), 2000)), "chr2": "".join(rng.choice(list("ACGT"), 900))}
    fa = write_fasta(tmp_path / "genome.fa", list(genome.values()), names=list(genome))
    bed = tmp_path / "peaks.narrowPeak"
    bed.write_text("chr1\t400\t800\tp1\t0\t.\t1\t1\t1\t150\n"     # summit 550: window 400-700
                   "chr1\t500\t900\tp2\t0\t.\t1\t1\t1\t200\n"     # summit 700: overlaps the first
                   "chr2\t100\t500\tp3\t0\t.\t1\t1\t1\t-1\n")     # midpoint 300
    prefix = str(tmp_path / "peaks")
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", str(bed), "--genome", fa, "-o", prefix,
                 "--format", "chrombpnet", "--engine", "naive", "--start", "100", "--end", "200"]) == 0
    with h5py.File(prefix + ".h5") as f:
        assert [n.decode() for n in f["names"][...]] == ["p1", "p2", "p3"]            # narrowPeak column 4
        assert [c.decode() for c in f["chrom"][...]] == ["chr1", "chr1", "chr2"]
        assert list(f["start"][...]) == [400, 550, 150]
        proj, attr, seqs = f["proj"][...], f["attr"][...], f["seqs"][...]
    decoded = "".join("ACGT"[i] for i in seqs[2].argmax(0))
    assert decoded == genome["chr2"][150:450]
    assert open(prefix + ".regions.bed").read().splitlines()[0].split("\t") == ["chr1", "500", "600", "p1"]
    with h5py.File(prefix + ".ism_scores.h5") as f:
        np.testing.assert_array_equal(f["raw/seq"][...], seqs[:, :, 100:200])
        np.testing.assert_array_equal(f["shap/seq"][...], attr)
        np.testing.assert_array_equal(f["projected_shap/seq"][...], proj)
    sizes = tmp_path / "chrom.sizes"
    sizes.write_text("chr1\t2000\nchr2\t900\n")
    assert main(["bigwig", prefix + ".h5", "--chrom-sizes", str(sizes)]) == 0
    bw = pyBigWig.open(prefix + ".proj.bw")
    track = proj.sum(1)
    np.testing.assert_allclose(bw.values("chr1", 500, 600), track[0], rtol=1e-6)   # windows do not overlap
    np.testing.assert_allclose(bw.values("chr1", 650, 750), track[1], rtol=1e-6)
    np.testing.assert_allclose(bw.values("chr2", 250, 350), track[2], rtol=1e-6)
    bw.close()


def test_allow_unsafe_reaches_the_loader(tmp_path, monkeypatch):
    from fastism_torch import cli
    seen = []

    def fake_load(spec, options):
        seen.append(options)
        raise cli.UserError("stop here")
    monkeypatch.setattr(cli, "load_model", fake_load)
    assert _ism(tmp_path, "--allow-unsafe", model="m.h5") == 1
    assert _ism(tmp_path, model="m.h5") == 1
    assert [o.allow_unsafe for o in seen] == [True, False]


def test_compile_option_compiles_and_gives_the_same_scores(tmp_path, monkeypatch, caplog):
    import logging
    model = f"{write_model(tmp_path)}:make_model"
    fa = write_fasta(tmp_path / "s.fa", random_seqs(2, 16))
    assert _ism(tmp_path, "--device", "cpu", model=model, fa=fa, prefix="eager") == 0
    caplog.set_level(logging.INFO, logger="fastism_torch")
    assert _ism(tmp_path, "--device", "cpu", "--compile", model=model, fa=fa, prefix="compiled") == 0
    assert any("torch.compile: 1 graph(s)" in r.getMessage() for r in caplog.records)
    with h5py.File(tmp_path / "eager.h5") as a, h5py.File(tmp_path / "compiled.h5") as b:
        want, got = a["ism"][...], b["ism"][...]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()

    from fastism_torch import cli
    seen = []

    def fake_load(spec, options):
        seen.append(options.compile)
        raise cli.UserError("stop here")
    monkeypatch.setattr(cli, "load_model", fake_load)
    for extra in (["--compile", "reduce-overhead"], ["--compile"], []):
        assert _ism(tmp_path, *extra, model=model, fa=fa, prefix="x") == 1
    assert seen == ["reduce-overhead", True, False]
