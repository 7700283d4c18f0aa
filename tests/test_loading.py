"""Models from files: formats, factories, digests that cover weights, the NaiveISM fallback."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from fastism_torch import loading
from fastism_torch.errors import UserError
from fastism_torch import FastISM, NaiveISM
from fastism_torch.loading import EngineOptions, Model, load_model

from _cli_helpers import write_model


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 3, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 20, 2))


def test_module_digest_covers_weights():
    a = _net()
    b = copy.deepcopy(a)
    assert loading.module_digest(a) == loading.module_digest(b)
    with torch.no_grad():
        b[3].weight[0, 0] += 1e-3
    assert loading.module_digest(a) != loading.module_digest(b)


def test_path_digest_covers_every_file_of_a_folder(tmp_path):
    d = tmp_path / "saved_model"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"graph")
    (d / "variables" / "variables.data").write_bytes(b"\x00\x01")
    before = loading.path_digest(str(d))
    (d / "variables" / "variables.data").write_bytes(b"\x00\x02")
    assert loading.path_digest(str(d)) != before
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    assert loading.path_digest(str(f)) != loading.path_digest(str(d))


def test_factory_model_binds_length_and_digests_weights(tmp_path):
    path = write_model(tmp_path)
    m = load_model(f"{path}:make_model", EngineOptions(engine="naive"))
    assert m.kind == "torch" and m.seq_len is None and m.target_names == ["t0", "t1"]
    with pytest.raises(RuntimeError, match="bind"):
        m.engine((0, 16))
    m.bind(16)
    eng = m.engine((0, 16))
    assert isinstance(eng, NaiveISM) and m.engine((0, 16)) is eng          # built once per window
    assert list(m.engine((2, 5)).change_ranges) == [(2, 3), (3, 4), (4, 5)]
    assert m.digest.count(":") == 1
    with pytest.raises(UserError, match="built for length 16, not 20"):
        m.bind(20)


@pytest.mark.parametrize("spec,match", [
    ("nope.h5", "no such file"),
    ("model.py", "name the factory function"),
    ("{tmp}/m.txt", "unknown model format"),
    ("{tmp}/tiny_model.py:missing", "has no function 'missing'"),
    ("{tmp}/bad.py:make_model", "does not load: ZeroDivisionError"),
])
def test_load_errors_name_the_problem(tmp_path, spec, match):
    write_model(tmp_path)
    (tmp_path / "m.txt").write_text("x")
    (tmp_path / "bad.py").write_text("1 / 0\n")
    with pytest.raises(UserError, match=match):
        load_model(spec.format(tmp=tmp_path))


def test_factory_returning_something_else(tmp_path):
    (tmp_path / "f.py").write_text("def make_model():\n    return 3\n")
    m = load_model(f"{tmp_path}/f.py:make_model")
    with pytest.raises(UserError, match="returned int, not a torch.nn.Module"):
        m.bind(10)


def test_fast_engine_falls_back_to_naive_with_a_warning(monkeypatch):
    def broken(*a, **k):
        raise NotImplementedError("no rule for op frobnicate")
    import fastism_torch.fast as fast_mod
    monkeypatch.setattr(fast_mod, "FastISM", broken)
    with pytest.warns(UserWarning, match="FastISM cannot run this model .*frobnicate.*; using NaiveISM"):
        m = Model.from_module(_net(), 20)
        assert isinstance(m.engine((0, 20)), NaiveISM)


def test_from_module_gives_fastism_equal_to_naive():
    net = _net()
    m = Model.from_module(net, 20, EngineOptions(check=False))
    eng = m.engine((0, 20))
    assert isinstance(eng, FastISM)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (2, 20))].transpose(0, 2, 1).copy()
    np.testing.assert_allclose(eng.saturation_mutagenesis(x), NaiveISM(net, 20).saturation_mutagenesis(x),
                               rtol=1e-5, atol=1e-6)


def test_other_models_check_the_length(tmp_path):
    m = Model("onnx", 30, "NLC", None, "d", build=lambda r: None)
    m.bind(30)
    with pytest.raises(UserError, match="takes length 30 but the sequences have length 31"):
        m.bind(31)
