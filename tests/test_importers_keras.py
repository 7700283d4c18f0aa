"""from_keras: the original fastISM test matrix and the paper's reference models, as Keras 3 ``.keras`` and
Keras 2 ``.h5`` (tf-keras) files, each checked against naive ISM run by Keras itself.

TensorFlow never enters this process: models are built, converted and run by Keras in worker subprocesses,
batched so that each step starts TensorFlow once per Keras flavour (module-scoped fixtures).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.keras

_NEEDED = ("tensorflow", "tf2onnx", "onnx2torch", "onnx", "h5py")
if not all(importlib.util.find_spec(m) for m in _NEEDED):
    pytest.skip("needs the keras extra (tensorflow, tf2onnx, onnx2torch)", allow_module_level=True)

from fastism_torch.importers import keras as fk  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS_PY = str(HERE / "_keras_models.py")
CUSTOM = {"Scale": "tests._keras_models:Scale"}
OPTS = dict(custom_objects=CUSTOM, allow_unsafe=True)
HAS_FASTISM = importlib.util.find_spec("fastism") is not None

# name -> (source, kwargs); every model is saved as .keras (Keras 3) and .h5 (tf-keras)
MATRIX = {
    "conv_seq": (f"{MODELS_PY}:conv_seq", {}),
    "skip": (f"{MODELS_PY}:skip", {}),
    "multi_output": (f"{MODELS_PY}:multi_output", {}),
    "nested": (f"{MODELS_PY}:nested", {}),
    "extra_input": (f"{MODELS_PY}:extra_input", {}),
    "cropping": (f"{MODELS_PY}:cropping", {}),
    "custom_layer": (f"{MODELS_PY}:custom_layer", {}),
    "zoo": (f"{MODELS_PY}:zoo", {}),
    "gelu_pool": (f"{MODELS_PY}:gelu_pool", {}),
    "recurrent": (f"{MODELS_PY}:recurrent", {}),
}
REFERENCE = {
    "basset": ("fastism:basset.basset_model", {"seqlen": 200, "num_outputs": 3}),
    "factorized_basset": ("fastism:factorized_basset.factorized_basset_model", {"seqlen": 200}),
    "bpnet": ("fastism:bpnet.bpnet_model", {"seqlen": 200, "num_dilated_convs": 4}),
    "bpnet_dense": ("fastism:bpnet_dense.bpnet_dense_model", {"inlen": 546, "outlen": 200, "filters": 16,
                                                              "ndl": 6}),
}
EXTRA = {  # Keras 3 only
    "lambda_model": (f"{MODELS_PY}:lambda_model", {}),
    "no_sequence": (f"{MODELS_PY}:no_sequence", {}),
    "rnn": (f"{MODELS_PY}:rnn", {}),
    "grouped_conv": (f"{MODELS_PY}:grouped_conv", {}),      # tf-keras cannot run grouped convs on CPU
    "keras3_layers": (f"{MODELS_PY}:keras3_layers", {}),
}
FLAVOURS = {"keras3": (False, ".keras"), "tf-keras": (True, ".h5")}
# configurations: (id, model, flavour, from_keras keywords)
CONFIGS = [(f"{m}-{f}", m, f, {}) for m in MATRIX for f in FLAVOURS]
CONFIGS += [
    ("skip-savedmodel", "skip", "savedmodel", {}),
    ("skip-early_stop", "skip", "keras3", {"early_stop_layers": ["c2"]}),
    ("conv_seq-10bp", "conv_seq", "tf-keras", {"change_ranges": [(i, i + 10) for i in range(0, 91, 10)]}),
    ("multi_output-10bp-overlap", "multi_output", "keras3",
     {"change_ranges": [(i, i + 10) for i in range(0, 91, 3)]}),
    ("cropping-early_stop", "cropping", "tf-keras", {"early_stop_layers": ["crop2"]}),
    ("rnn-keras3", "rnn", "keras3", {}),
    ("grouped_conv-keras3", "grouped_conv", "keras3", {}),
    ("keras3_layers-keras3", "keras3_layers", "keras3", {}),
]
if HAS_FASTISM:
    CONFIGS += [(f"{m}-{f}", m, f, {}) for m in REFERENCE for f in FLAVOURS]


def _build(jobs_by_flavour):
    for legacy, jobs in jobs_by_flavour.items():
        for r, job in zip(fk.run_jobs(jobs, legacy), jobs):
            assert r["ok"], f"building {job} failed: {r}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Built model files, their exports (one TF start-up per flavour) and the caches."""
    d = tmp_path_factory.mktemp("keras")
    cache = d / "cache"
    paths = {}
    jobs = {False: [], True: []}
    for name, (src, kw) in {**MATRIX, **(REFERENCE if HAS_FASTISM else {})}.items():
        for flav, (legacy, ext) in FLAVOURS.items():
            p = d / f"{name}{ext}"
            paths[name, flav] = p
            jobs[legacy].append(["build", "--source", src, "--kwargs", json.dumps(kw), "--out", str(p)])
    for name, (src, kw) in EXTRA.items():
        p = d / f"{name}.keras"
        paths[name, "keras3"] = p
        jobs[False].append(["build", "--source", src, "--kwargs", json.dumps(kw), "--out", str(p)])
    paths["skip", "savedmodel"] = d / "skip_savedmodel"          # tf-keras SavedModel folder
    jobs[True].append(["build", "--source", MATRIX["skip"][0], "--out", str(d / "skip_savedmodel")])
    marker = json.dumps({"marker": str(d / "lambda_ran")})
    for flav, ext in (("keras3", ".keras"), ("tf-keras", ".h5"), ("savedmodel", "")):
        for name in ("lambda_model", "lambda_marker"):           # Lambda layers in every format
            if (name, flav) not in paths:
                paths[name, flav] = d / f"{name}_{flav}{ext}"
                jobs[flav != "keras3"].append(["build", "--source", f"{MODELS_PY}:{name}", "--out",
                                               str(paths[name, flav])] +
                                              (["--kwargs", marker] if name == "lambda_marker" else []))
    _build(jobs)
    keys = list(paths)
    exports = fk.export_keras_many([paths[k] for k in keys], cache_dir=cache, **OPTS)
    return {"dir": d, "cache": cache, "paths": paths, "exports": dict(zip(keys, exports))}


def full_request(ism, ex, n_seqs=2, seed=0):
    """Every window of ism.change_ranges on ``n_seqs`` random sequences, random one-hot replacements."""
    ex_, inputs, idx, _, _, _ = fk.check_request(ism, ex, n_seqs=n_seqs, seed=seed)
    rng = np.random.default_rng(seed + 1)
    R = len(ism.change_ranges)
    width = ism.change_ranges[0][1] - ism.change_ranges[0][0]
    s_idx = np.repeat(np.arange(n_seqs), R)
    starts = np.tile([s for s, _ in ism.change_ranges], n_seqs)
    values = np.eye(ism.num_chars, dtype=np.float32)[rng.integers(0, ism.num_chars, (len(s_idx), width))]
    return ex_, inputs, idx, s_idx, starts, values


@pytest.fixture(scope="module")
def checked(env):
    """from_keras for every configuration, and Keras naive ISM for all of them (one run per flavour)."""
    isms, reqs, warns = {}, [], {}
    for cid, name, flav, kw in CONFIGS:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ism = fk.from_keras(env["paths"][name, flav], cache_dir=env["cache"], test_correctness=False, **OPTS,
                                **kw)
        warns[cid] = [str(x.message) for x in w]
        isms[cid] = ism
        reqs.append(full_request(ism, ism.keras_export))
    results = fk.keras_naive_ism_many(reqs)
    return {cid: (isms[cid], req, res, warns[cid]) for (cid, *_), req, res in zip(CONFIGS, reqs, results)}


@pytest.mark.parametrize("cid", [c[0] for c in CONFIGS])
def test_matches_keras_naive_ism(checked, cid):
    ism, req, res, _ = checked[cid]
    fk.compare_with_keras(ism, req, res, rtol=1e-4)
    outs = res[0]
    spread = max(float(np.abs(o - o.mean(0)).max()) for o in outs)
    assert spread > 1e-4, "outputs barely move under mutation: the check checks nothing"


def test_matrix_exercises_the_keras3_exports(env):
    """The Keras 3 forms that used to fail are really in the matrix: GELU as Erfc, grouped Conv1D as a grouped
    Conv (not an XLA call)."""
    import onnx
    ops = {n.op_type for n in onnx.load(env["exports"]["gelu_pool", "keras3"].onnx_path).graph.node}
    assert "Erfc" in ops and "MaxPool" in ops, ops
    convs = [n for n in onnx.load(env["exports"]["grouped_conv", "keras3"].onnx_path).graph.node if n.op_type == "Conv"]
    groups = sorted(a.i for n in convs for a in n.attribute if a.name == "group")
    assert groups == [1, 4, 8], groups


def test_flavours_load_with_the_right_keras(env):
    for (name, flav), ex in env["exports"].items():
        if name in MATRIX and not isinstance(ex, Exception):
            assert ex.meta["keras"] in ("keras3", "tf-keras")


def test_output_shapes_like_fastism(checked):
    ism, req, _, _ = checked["multi_output-keras3"]
    x = req[1][0]
    out = ism(x, replace_with=[0, 0, 0, 1])
    assert isinstance(out, tuple) and out[0].shape == (2, 100, 100, 2) and out[1].shape == (2, 100, 1)
    sat = ism.saturation_mutagenesis(x)
    assert sat[0].shape == (2, 100, 4, 100, 2) and sat[1].shape == (2, 100, 4, 1)
    assert ism.output_names == ["profile", "count"]
    ism, req, _, _ = checked["conv_seq-10bp"]
    assert ism(req[1][0]).shape == (2, 10, 3)
    ism, req, _, _ = checked["extra_input-keras3"]
    assert ism.seq_input_idx == 1
    out = ism(req[1])
    assert out.shape == (2, 100, 2)


def test_saturation_matches_keras(checked):
    """Full saturation mutagenesis (every base at every position) against Keras on one sequence."""
    ism, req, _, _ = checked["skip-keras3"]
    x = req[1][0][:1]
    sat = ism.saturation_mutagenesis(x)                                 # (1, L, 4, 2)
    L = ism.seq_len
    s_idx = np.zeros(L * 4, int)
    starts = np.repeat(np.arange(L), 4)
    values = np.tile(np.eye(4, dtype=np.float32), (L, 1))[:, None, :]
    outs, _ = fk.keras_naive_ism(ism.keras_export, [x], 0, s_idx, starts, values)
    k = outs[0].reshape(L, 4, -1)
    assert np.abs(sat[0] - k).max() <= 1e-4 * np.abs(k).max() + 1e-6


def test_early_stop_layers_by_keras_name(checked):
    ism, _, _, _ = checked["skip-early_stop"]
    stops = set(ism.early_stop_layers)
    nodes = [n for n in ism.gm.graph.nodes if n.name in stops]
    assert nodes and all("/c2" in (n.meta.get("onnx_name") or "") for n in nodes), stops
    assert all(ism.infos[n].state == "full" for n in nodes)


def test_custom_layer_of_supported_ops_runs_windowed(checked):
    """A custom layer is analysed op by op like any other (the rules decide, no list of Keras classes): Scale's
    multiply is pointwise, so nothing stops before the flatten and no warning names it; the result matches Keras's
    naive ISM (test_matches_keras_naive_ism)."""
    ism, _, _, warns = checked["custom_layer-keras3"]
    assert not any("'scale'" in w for w in warns), warns
    scale = [n for n in ism.gm.graph.nodes if "/scale" in (n.meta.get("onnx_name") or "")]
    assert scale and all(ism.infos[n].state == "window" for n in scale)


def test_second_load_is_cached(env, monkeypatch):
    """Once converted and checked, a model loads from the cache: neither export nor Keras check starts a worker."""
    ism = fk.from_keras(env["paths"]["conv_seq", "keras3"], cache_dir=env["cache"], test_correctness=True, **OPTS)
    from fastism_torch.importers.keras import export, oracle

    def no_worker(*a, **k):
        raise AssertionError(f"a worker was started for a cached model: {a}")
    monkeypatch.setattr(export, "run_jobs", no_worker)
    monkeypatch.setattr(oracle, "run_jobs", no_worker)
    again = fk.from_keras(env["paths"]["conv_seq", "keras3"], cache_dir=env["cache"], test_correctness=True, **OPTS)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (2, 100))]
    assert np.array_equal(np.asarray(again.predict(x)), np.asarray(ism.predict(x)))


def test_test_correctness_detects_a_wrong_model(env, monkeypatch):
    """Corrupt the converted weights: the Keras check must raise with the largest difference."""
    from fastism_torch.importers.keras import api
    orig = api.onnx_to_torch

    def broken(*a, **k):
        gm = orig(*a, **k)
        for p in gm.parameters():
            p.data.mul_(1.5)
            break
        return gm
    monkeypatch.setattr(api, "onnx_to_torch", broken)
    with pytest.raises(ValueError, match="disagrees with Keras"):
        fk.from_keras(env["paths"]["conv_seq", "keras3"], cache_dir=env["cache"], **OPTS)


# --------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such Keras model file: .*nope.h5"):
        fk.from_keras(tmp_path / "nope.h5")


@pytest.mark.parametrize("kind", ["garbage_h5", "weights_only", "text_keras", "folder", "bad_zip"])
def test_not_a_keras_model(tmp_path, kind):
    import h5py
    if kind == "garbage_h5":
        p = tmp_path / "m.h5"
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(200))
    elif kind == "weights_only":
        p = tmp_path / "w.h5"
        with h5py.File(p, "w") as f:
            f["layer/kernel"] = np.zeros((3, 3))
    elif kind == "text_keras":
        p = tmp_path / "m.keras"
        p.write_text("not a model")
    elif kind == "bad_zip":
        import zipfile
        p = tmp_path / "m.keras"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("other.txt", "x")
    else:
        p = tmp_path / "folder"
        p.mkdir()
    why = {"garbage_h5": "is not a readable HDF5 file", "weights_only": "without a Keras model config",
           "text_keras": "is not a Keras model file", "bad_zip": "is not a readable .keras archive",
           "folder": "is a folder but not a SavedModel"}[kind]
    with pytest.raises(ValueError, match=why):
        fk.from_keras(p, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("flav", ["keras3", "tf-keras", "savedmodel"])
def test_lambda_needs_opt_in(env, flav):
    """Every format is scanned for Lambda layers before anything loads it; allow_unsafe=True lets it through."""
    path = env["paths"]["lambda_model", flav]
    with pytest.raises(ValueError, match=r"Lambda layer\(s\) \['double'\].*allow_unsafe=True"):
        fk.from_keras(path, cache_dir=env["cache"])
    ism = fk.from_keras(path, cache_dir=env["cache"], test_correctness=flav == "keras3", **OPTS)
    assert ism(np.eye(4, dtype=np.float32)[np.zeros((1, 50), int)]).shape == (1, 50, 1)


def test_no_code_runs_without_allow_unsafe(env, tmp_path):
    """Behind the pre-scan, the worker itself loads every format in safe mode (tf-keras applies safe_mode to
    .keras files only; for .h5 and SavedModel folders it is set around the load): the Lambda's code, which
    leaves a file behind, runs only with --allow-unsafe."""
    marker = env["dir"] / "lambda_ran"
    for flav, legacy in (("keras3", False), ("tf-keras", True), ("savedmodel", True)):
        path = str(env["paths"]["lambda_marker", flav])
        for unsafe in (False, True):
            marker.unlink(missing_ok=True)
            job = ["export", "--model", path, "--out-dir", str(tmp_path / f"{flav}-{unsafe}")]
            (r,) = fk.run_jobs([job + ["--allow-unsafe"] * unsafe], legacy)
            assert marker.exists() == unsafe, (flav, unsafe, r)
            if flav != "savedmodel":      # (tf-keras revives a SavedModel's Lambda from its graph instead)
                assert r["ok"] == unsafe and (unsafe or "safe_mode" in r["message"]), r


def test_no_sequence_input(env):
    with pytest.raises(ValueError, match="no sequence-shaped input"):
        fk.from_keras(env["paths"]["no_sequence", "keras3"], cache_dir=env["cache"], **OPTS)


@pytest.mark.parametrize("cid", ["rnn-keras3", "recurrent-keras3", "recurrent-tf-keras"])
def test_recurrent_layers_are_stop_points(checked, cid):
    """LSTM, GRU and Bidirectional convert (unrolled) and become a stop point named in a warning; the model
    matches Keras's naive ISM (test_matches_keras_naive_ism) and everything from the first of them runs in full."""
    ism, _, _, warns = checked[cid]
    first = "lstm" if cid.startswith("rnn") else "bilstm"
    assert any(f"Keras layer '{first}'" in w and "run in full" in w for w in warns), warns
    out = next(n for n in ism.gm.graph.nodes if n.op == "output").args[0]
    assert ism.infos[out if isinstance(out, torch.fx.Node) else out[0]].state == "full"


def test_unconvertible_layer_is_named(env, monkeypatch):
    """An ONNX operator no converter handles: one ValueError naming the Keras layer it came from."""
    import onnx
    from fastism_torch.importers.keras import api
    from fastism_torch.importers.onnx import UnsupportedOnnxOps
    ex = env["exports"]["rnn", "keras3"]
    node = next(n.name for n in onnx.load(ex.onnx_path).graph.node if "/lstm" in n.name)

    def refuse(*a, **k):
        raise UnsupportedOnnxOps([("Frobnicate", node)])
    monkeypatch.setattr(api, "onnx_to_torch", refuse)
    with pytest.raises(ValueError, match=r"Keras layer\(s\) \['lstm \(LSTM\)'\] cannot be converted.*Frobnicate"):
        fk.from_keras(env["paths"]["rnn", "keras3"], cache_dir=env["cache"], **OPTS)


def test_unloadable_model_is_an_error_not_a_crash(env, tmp_path):
    """A custom layer without custom_objects: both Keras flavours fail to load; one ValueError with both."""
    with pytest.raises(ValueError, match="could not convert"):
        fk.from_keras(env["paths"]["custom_layer", "keras3"], cache_dir=tmp_path / "c")


def test_torch_input_and_device(checked):
    ism, req, _, _ = checked["conv_seq-keras3"]
    x = torch.as_tensor(req[1][0])
    out = ism(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 100, 3)


def test_in_memory_keras_model(tmp_path):
    """A keras.Model object (TensorFlow imported by the user): saved to a temporary file and converted."""
    code = f"""
import sys; sys.path.insert(0, {str(HERE.parent)!r})
import tensorflow as tf
sys.path.insert(0, {str(HERE)!r})
import _keras_models as km
import numpy as np
import fastism_torch
m = km.conv_seq(60)
ism = fastism_torch.from_keras(m, cache_dir={str(tmp_path)!r})
x = np.eye(4, dtype=np.float32)[np.random.randint(0, 4, (2, 60))]
assert ism(x).shape == (2, 60, 3)
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FASTISM, reason="needs the fastism package")
def test_bench_keras_runs(tmp_path):
    """benchmarks/bench_keras end to end on tiny settings (from_keras and Keras naive ISM only)."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_keras", "--models", "basset", "--length", "60",
                        "--methods", "fast,naive", "--out", str(tmp_path / "r.md")], cwd=str(HERE.parent),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| basset | 60 |" in (tmp_path / "r.md").read_text()
