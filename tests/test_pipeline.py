"""The scoring pipeline from Python, against ISM computed by hand with plain forward passes."""
import numpy as np
import pytest
import torch
from torch import nn

from fastism_torch import pipeline
from fastism_torch.errors import UserError
from fastism_torch.loading import EngineOptions, Model

L = 24


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(4, 6, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * L, 3)).eval()


def _x(n=2, seed=0):
    return np.eye(4, dtype=np.float32)[np.random.default_rng(seed).integers(0, 4, (n, L))].transpose(0, 2, 1).copy()


def _by_hand(net, x, window, replace=None):
    """(N, K, Lw, T) predictions with each base (or ``replace``) at each window position, and (N, T) refs."""
    with torch.no_grad():
        f = lambda a: net(torch.from_numpy(a)).numpy()        # noqa: E731
        ref = f(x)
        rows = [np.eye(4, dtype=np.float32)[b] for b in range(4)] if replace is None else [replace]
        out = np.zeros((x.shape[0], len(rows), window[1] - window[0], ref.shape[1]), np.float32)
        for k, r in enumerate(rows):
            for j, i in enumerate(range(*window)):
                y = x.copy()
                y[:, :, i] = r
                out[:, k, j] = f(y)
    return out, ref


def test_score_equals_ism_by_hand():
    net, x = _net(), _x()
    s = pipeline.score(net, x)
    mut, ref = _by_hand(net, x, (0, L))
    d = mut - ref[:, None, None]
    want = d - d.mean(1, keepdims=True)
    np.testing.assert_allclose(s.ism, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.hypothetical, want.mean(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.projected, want.mean(-1) * x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.y_ref, ref, rtol=1e-5, atol=1e-6)
    assert s.raw is None


def test_window_replacement_targets_and_raw():
    net, x = _net(), _x(3, seed=2)
    spec = pipeline.ScoreSpec(window=(5, 15), replace_with=pipeline.parse_replace("N"), targets=(2, 0), raw=True)
    s = pipeline.score(net, x, spec)
    mut, ref = _by_hand(net, x, (5, 15), np.zeros(4, np.float32))
    np.testing.assert_allclose(s.raw, mut[..., [2, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.ism, (mut - ref[:, None, None])[..., [2, 0]], rtol=1e-4, atol=1e-5)
    assert s.hypothetical.shape == (3, 4, 10)


def test_rc_average_is_the_mean_of_both_strands():
    net, x = _net(), _x()
    fwd = pipeline.score(net, x, pipeline.ScoreSpec(raw=True)).raw
    rc = x[:, ::-1, ::-1].copy()
    rev = pipeline.score(net, rc, pipeline.ScoreSpec(raw=True)).raw[:, ::-1, ::-1]
    both = pipeline.score(net, x, pipeline.ScoreSpec(raw=True, rc_average=True)).raw
    np.testing.assert_allclose(both, (fwd + rev) / 2, rtol=1e-5, atol=1e-6)


def test_model_engines_are_reused_across_calls(monkeypatch):
    m = Model.from_module(_net(), L, EngineOptions(engine="naive"))
    built = []
    build = m.build
    m.build = lambda r: built.append(r) or build(r)
    for _ in range(2):
        pipeline.score(m, _x(), pipeline.ScoreSpec(window=(3, 6)))
    assert len(built) == 1


def test_target_names_and_parsing():
    m = Model.from_module(_net(), L, target_names=["a", "b", "c"])
    names = pipeline.target_names(m, _x(1))
    assert names == ["a", "b", "c"]
    assert pipeline.parse_targets("c,0,-2", names) == [2, 0, 1]
    with pytest.raises(UserError, match="target 'd' does not exist; the model has 3 target"):
        pipeline.parse_targets("d", names)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 5, L)), r"one-hot \(N, 4, L\)"),
    (np.zeros((4, L)), r"one-hot \(N, 4, L\)"),
])
def test_bad_input_names_the_shape(bad, match):
    with pytest.raises(UserError, match=match):
        pipeline.score(_net(), bad)


def test_bad_window_and_replacement():
    with pytest.raises(UserError, match=r"0 <= start < end <= 24; got 10, 30"):
        pipeline.score(_net(), _x(), pipeline.ScoreSpec(window=(10, 30)))
    with pytest.raises(UserError, match="--replace-with must be"):
        pipeline.parse_replace("1,2")
