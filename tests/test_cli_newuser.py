"""What a new user hits first: messages on success and re-runs, -o naming a folder, no empty folder after an
early error, plot's file name, SIGTERM, -h, and a removed flag that still works for a release."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np

from fastism_torch.cli import build_parser, main

from _cli_helpers import REPO, random_seqs, run_cli, write_fasta, write_model


def _setup(tmp_path, n=3, sleep=0.0):
    model = write_model(tmp_path, sleep=sleep)
    fa = write_fasta(tmp_path / "s.fa", random_seqs(n, 16))
    return ["-m", f"{model}:make_model", "-s", fa, "--engine", "naive"]


def test_one_line_on_success_and_only_already_complete_on_a_rerun(tmp_path, capsys):
    argv = ["ism", *_setup(tmp_path), "-o", str(tmp_path / "run")]
    assert main(argv) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines          # the size of the outputs before the run, the summary after it
    assert re.match(r"fastism-torch: 3 sequences: the outputs take up to [\d.]+ kB before compression", lines[0])
    assert re.match(rf"fastism-torch: wrote {re.escape(str(tmp_path / 'run.h5'))} \(and .ohe.npz, .attr.npz, "
                    r".proj.npz, .regions.bed, .args.json\) for 3 sequences in [\d.]+s$", lines[1]), lines[1]
    assert main(argv) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"fastism-torch: {tmp_path / 'run.h5'} is already complete with these settings; nothing to do"]
    assert main(argv + ["-v"]) == 0
    err = capsys.readouterr().err
    assert "already complete" in err and "wrote" not in err


def test_output_naming_a_folder_is_refused_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "out2"
    folder.mkdir()
    for o in (str(folder), str(tmp_path / "new") + "/"):
        assert main(["ism", *_setup(tmp_path), "-o", o]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a folder; -o takes a prefix" in err and "run.h5" in err, err
    assert os.listdir(folder) == [] and not os.path.exists(tmp_path / "out2.h5")
    assert not os.path.exists(tmp_path / "new")


def test_an_early_error_leaves_no_empty_folder(tmp_path, capsys):
    argv = _setup(tmp_path)
    (tmp_path / "bad.fa").write_text("not fasta\n")
    argv[argv.index("-s") + 1] = str(tmp_path / "bad.fa")
    assert main(["ism", *argv, "-o", str(tmp_path / "a" / "b" / "run")]) == 1
    assert "not a FASTA" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "a")


def test_plot_file_names(tmp_path, capsys):
    assert main(["ism", *_setup(tmp_path), "-o", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "run.h5"), "-o", str(tmp_path / "x.jpgg")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown image format 'jpgg'" in err and ".png" in err, err
    assert not os.path.exists(tmp_path / "x.jpgg")
    assert main(["plot", str(tmp_path / "run.h5"), "--seq", "1"]) == 0          # default: beside the result
    want = tmp_path / "run.chr1_1100-1116.png"
    assert capsys.readouterr().err.strip() == f"fastism-torch: wrote {want}"
    assert open(want, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_help_states_each_default_once():
    p = build_parser()
    for name in ("ism", "plot", "bigwig"):
        text = p._subparsers._group_actions[0].choices[name].format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
        entries = re.split(r"\n  (?=-)", text.split("\noptions:", 1)[1])
        for e in entries:
            assert len(re.findall(r"default", e)) <= 1, e
    ism = p._subparsers._group_actions[0].choices["ism"].format_help()
    assert "(default: zero)" in " ".join(ism.split()) and "--hypothetical" not in ism


def test_hypothetical_flag_still_works_with_a_deprecation_warning(tmp_path, capsys):
    argv = ["ism", *_setup(tmp_path)]
    assert main(argv + ["-o", str(tmp_path / "a"), "--hypothetical"]) == 0
    err = capsys.readouterr().err
    assert "warning: --hypothetical is deprecated and does nothing" in err
    assert main(argv + ["-o", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.attr.npz")["arr_0"], np.load(tmp_path / "b.attr.npz")["arr_0"])
    r = run_cli(*argv, "-o", tmp_path / "c", "--hypothetical")                 # a script calling the command
    assert r.returncode == 0 and "deprecated" in r.stderr


def test_sigterm_keeps_what_is_computed_and_says_so(tmp_path):
    """SIGTERM (what schedulers and torchrun send) stops a run like Ctrl-C: the message, status 143, and the
    same command resumes."""
    argv = ["ism", *_setup(tmp_path, n=16, sleep=0.05), "-o", str(tmp_path / "t"), "--chunk-size", "2",
            "--batch-size", "32", "-v"]
    proc = subprocess.Popen([sys.executable, "-m", "fastism_torch", *argv], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    buf = []
    t = threading.Thread(target=lambda: buf.extend(iter(lambda: proc.stderr.read(1), b"")), daemon=True)
    t.start()
    deadline = time.time() + 60
    while not re.search(rb"([4-9]|1\d)/16", b"".join(buf[-40:])) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, b"".join(buf).decode()[-500:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    t.join(5)
    err = b"".join(buf).decode()
    m = re.search(r"interrupted by SIGTERM; (\d+) of 16 sequences are saved in \S+t\.h5\.partial; rerun the same "
                  r"command to resume", err)
    assert m and "Traceback" not in err, err[-800:]
    with h5py.File(tmp_path / "t.h5.partial") as f:
        assert int(f["done"][...].sum()) == int(m[1]) >= 4
    r = run_cli(*argv)
    assert r.returncode == 0 and f"resuming: {m[1]} of 16" in r.stderr, r.stderr


def test_outputs_larger_than_the_free_disk_space_stop_before_the_run(tmp_path, capsys, monkeypatch):
    import collections
    from fastism_torch import runner
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    argv = ["ism", *_setup(tmp_path), "-o", str(tmp_path / "x" / "run")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(rf"fastism-torch: error: the outputs would take up to [\d.]+ kB but {re.escape(str(tmp_path))} "
                    r"has 100 B free; free some space or choose another -o \(or pass --max-output-gb [\d.e-]+", err[-1])
    assert not os.path.exists(tmp_path / "x")
    assert main(argv + ["--max-output-gb", "1"]) == 0          # asked for explicitly: written


def test_overwrite_stopped_by_the_size_guard_keeps_the_old_result(tmp_path, capsys):
    argv = ["ism", *_setup(tmp_path), "-o", str(tmp_path / "run")]
    assert main(argv) == 0
    before = open(tmp_path / "run.h5", "rb").read()
    assert main(argv + ["--target", "t1", "--overwrite", "--max-output-gb", "1e-9"]) == 1
    assert "over the limit" in capsys.readouterr().err
    assert open(tmp_path / "run.h5", "rb").read() == before and os.path.exists(tmp_path / "run.attr.npz")


def test_compression_choice_is_lossless(tmp_path):
    argv = ["ism", *_setup(tmp_path)]
    got = {}
    for c in ("gzip", "lzf", "none"):
        assert main(argv + ["-o", str(tmp_path / c), "--compression", c]) == 0
        with h5py.File(tmp_path / f"{c}.h5") as f:
            assert f["ism"].compression == (None if c == "none" else c) and f["ism"].chunks[0] == 1
            got[c] = f["ism"][...], f["attr"][...], f["seqs"][...]
    for c in ("lzf", "none"):
        for a, b in zip(got["gzip"], got[c]):
            np.testing.assert_array_equal(a, b)
