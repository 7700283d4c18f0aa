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


def _profile_net():
    """(N, 4, L) -> profile logits (N, 2, L), log counts (N, 2)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.conv, self.prof = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 2, 3, padding=1)
            self.count = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.prof(h), self.count(h.mean(-1))
    return Net().eval()


def test_resolve_once_window_and_heads(monkeypatch):
    spec = pipeline.resolve(_net(), _x(1), pipeline.ScoreSpec(window=(3, -4), reduction="auto"), target="2,0")
    assert spec.window == (3, 20) and spec.n_bases == 4 and not spec.full and spec.values_per_seq == 3
    assert spec.heads == (pipeline.Head(None, "none", ("2", "0"), (2, 0)),)     # a classifier: every output
    # a resolved spec is used as it is: no second resolution of the window or the targets
    monkeypatch.setattr(pipeline, "check_window", lambda *a: pytest.fail("the window was resolved again"))
    s = pipeline.score(_net(), _x(), spec)
    mut, ref = _by_hand(_net(), _x(), (3, 20))
    d = (mut - ref[:, None, None])[..., [2, 0]]
    np.testing.assert_allclose(s.ism, d - d.mean(1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_auto_scores_a_profile_model_per_head():
    net, x = _profile_net(), _x(2, seed=4)
    spec = pipeline.resolve(net, x, pipeline.ScoreSpec(reduction="auto"))
    assert [(h.name, h.reduction, h.target_names) for h in spec.heads] == [("counts", "counts", ("0", "1")),
                                                                            ("profile", "profile", ("0", "1"))]
    got = pipeline.score_heads(net, x, spec)
    for name in ("counts", "profile"):
        one = pipeline.score(net, x, pipeline.ScoreSpec(reduction=name))
        np.testing.assert_allclose(got[name].ism, one.ism, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[name].hypothetical, one.hypothetical, rtol=1e-6, atol=1e-7)
    with pytest.raises(UserError, match="gives 2 sets of scores \\(counts, profile\\); use score_heads"):
        pipeline.score(net, x, spec)
    with pytest.raises(UserError, match="reduction must be 'auto' or one of"):
        pipeline.resolve(net, x, pipeline.ScoreSpec(reduction="mean"))
