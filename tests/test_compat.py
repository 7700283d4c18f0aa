"""``fastism_torch.saturation_mutagenesis`` against tangermeme 1.6's own ``saturation_mutagenesis``.

The oracle is tangermeme with ``fast=False`` (one forward pass per edit); ours runs FastISM with the self-check off
(the engine cache builds with ``test_correctness=False``).  Three model families: a classifier (conv, BatchNorm,
pooling, flatten + dense, 3 outputs), a profile model (BPNet-like, one ``(N, 2, L)`` output for ``target``; and
with its counts head, two outputs for ``raw_outputs``), and a model with extra inputs through ``args``.
"""
from __future__ import annotations

import gc
import itertools
import warnings

import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch import compat, models
from fastism_torch.errors import InputWarning

tm = pytest.importorskip("tangermeme.saturation_mutagenesis")

L = 32
WINDOWS = [(0, -1), (5, 20), (3, -4), (31, 32)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread is faster and steadier (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ProfileOnly(nn.Module):
    """BPNet's profile head alone: one ``(N, 2, L)`` tensor, what ``target`` indexes (strands)."""

    def __init__(self, bpnet):
        super().__init__()
        self.bpnet = bpnet

    def forward(self, x):
        return self.bpnet(x)[0]


class WithControl(nn.Module):
    """Sequence + control track ``(N, 2, L)`` + a per-sequence covariate ``(N, 3)``: ``model(X, ctl, cov)``."""

    def __init__(self, length=L):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.ctl = nn.Conv1d(2, 8, 1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.dense = nn.Linear(8 * (length // 2), 3)
        self.cov = nn.Linear(3, 3)

    def forward(self, x, ctl, cov):
        h = torch.relu(self.conv(x) + self.ctl(ctl))
        h = self.pool(torch.relu(self.conv2(h)) + h)
        return self.dense(torch.flatten(h, 1)) + self.cov(cov)


def _kaiming(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def family(name, n=3):
    """``(model, X, args, targets)`` for one model family."""
    X = models.random_onehot(n, L, seed=7)
    if name == "classifier":
        return models.tiny(seq_len=L, num_outputs=3), X, None, [None, 1, slice(0, 2)]
    if name == "profile":
        bp = models.bpnet(seq_len=L, num_tasks=2, n_dilated=2, filters=8, profile_head="conv")
        return ProfileOnly(bp).eval(), X, None, [None, 0, slice(0, 2)]
    g = torch.Generator().manual_seed(3)
    args = (torch.randn(n, 2, L, generator=g), torch.randint(-2, 3, (n, 3), generator=g))   # int: cast to float
    return _kaiming(WithControl()), X, args, [None, 2, slice(1, 3)]


def assert_matches(ours, theirs, scale, rtol=1e-5):
    """Same type, shape and dtype; values within ``rtol`` of ``scale`` (the outputs' magnitude)."""
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_matches(a, b, scale, rtol)
        return
    assert isinstance(ours, torch.Tensor) and ours.device.type == "cpu"
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape, ours.dtype,
                                                                        theirs.dtype)
    diff = float((ours.double() - theirs.double()).abs().max())
    assert diff <= rtol * scale + 1e-7, f"max |ours - tangermeme| = {diff:.3g} at output scale {scale:.3g}"


def both(model, X, **kw):
    return ft.saturation_mutagenesis(model, X, **kw), tm.saturation_mutagenesis(model, X, fast=False, **kw)


def _scale(raw):
    ys = [raw.y0] if isinstance(raw.y0, torch.Tensor) else raw.y0
    return max(float(y.abs().max()) for y in ys)


# ------------------------------------------------------------------ every argument, three families
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}:{w[1]}")
@pytest.mark.parametrize("name", ["classifier", "profile", "args"])
def test_equals_tangermeme(name, window):
    model, X, args, targets = family(name)
    start, end = window
    ours, theirs = both(model, X, args=args, start=start, end=end, raw_outputs=True)
    scale = _scale(theirs)
    assert isinstance(ours, compat.SaturationMutagenesisRawResult)
    assert_matches(list(ours), list(theirs), scale)
    spread = float((theirs.y_hat - theirs.y0[:, None, None]).abs().max())
    assert spread > 1e-3 * scale, "outputs barely move under mutation: the test would check nothing"
    for target, hypothetical in itertools.product(targets, (False, True)):
        a, b = both(model, X, args=args, start=start, end=end, target=target, hypothetical=hypothetical)
        assert_matches(a, b, scale)
        assert float(b.abs().max()) > 1e-4 * scale


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 4 * 12 * 3 * 2])
def test_chunks_of_sequences(monkeypatch, chunk_bytes):
    """Several chunks (1 and 2 sequences each), with ``args`` sliced along: the same as one chunk."""
    monkeypatch.setattr(compat, "CHUNK_BYTES", chunk_bytes)
    model, X, args, _ = family("args", n=5)
    ours, theirs = both(model, X, args=args, start=10, end=22, raw_outputs=True)
    assert_matches(list(ours), list(theirs), _scale(theirs))


def test_multi_output_raw_outputs():
    """BPNet's two heads: lists of ``y0`` and ``y_hat``; without ``raw_outputs`` both refuse alike."""
    model = models.bpnet(seq_len=L, num_tasks=2, n_dilated=2, filters=8)
    X = models.random_onehot(2, L, seed=4)
    for start, end in [(0, -1), (4, 11)]:
        ours, theirs = both(model, X, start=start, end=end, raw_outputs=True)
        assert isinstance(ours.y0, list) and isinstance(ours.y_hat, list) and len(ours.y_hat) == 2
        assert ours.y_hat[0].shape == (2, 4, (L if end < 0 else end) - start, 2, L)
        assert_matches(list(ours), list(theirs), _scale(theirs))
    with pytest.raises(ValueError, match="raw_outputs=True is required") as e:
        tm.saturation_mutagenesis(model, X, fast=False)
    with pytest.raises(ValueError, match=str(e.value).split(";")[0]):
        ft.saturation_mutagenesis(model, X)


def test_identity_n_columns_and_input_types():
    """N (all-zero) and multi-hot columns get every character; ints, bools, float64, numpy and a PackedSequence
    all read as tangermeme reads them; soft values are truncated to int8 with a warning, as there."""
    model = models.tiny(seq_len=L, num_outputs=3)
    X = models.random_onehot(3, L, seed=9)
    X[0, :, 4] = 0                    # N
    X[1, :, 10] = 0
    X[1, 0:2, 10] = 1                 # multi-hot
    X[2, :, 0] = 0                    # N at the first position
    ref = tm.saturation_mutagenesis(model, X, fast=False, raw_outputs=True)
    scale = _scale(ref)
    for Xv in (X, X.to(torch.int8), X.bool(), X.double(), X.numpy()):
        assert_matches(list(ft.saturation_mutagenesis(model, Xv, raw_outputs=True)), list(ref), scale)
    # the N column's 4 predictions all differ from y0 (none was filled in as an identity)
    assert (ref.y_hat[0, :, 4] - ref.y0[0]).abs().amin(-1).gt(0).all()
    a, b = both(model, X, hypothetical=True, start=2, end=12)
    assert_matches(a, b, scale)
    from tangermeme.utils import PackedSequence
    Xp = models.random_onehot(2, L, seed=10)
    Xp[0, :, 3:6] = 0
    packed = PackedSequence.from_one_hot(Xp.to(torch.int8))
    assert_matches(ft.saturation_mutagenesis(model, packed), tm.saturation_mutagenesis(model, packed, fast=False),
                   scale)
    soft = X * 0.9 + 0.1 * X.roll(1, dims=1)
    with pytest.warns(InputWarning, match="truncated toward zero"):
        a = ft.saturation_mutagenesis(model, soft, raw_outputs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = tm.saturation_mutagenesis(model, soft, fast=False, raw_outputs=True)
    assert_matches(list(a), list(b), scale)


@pytest.mark.parametrize("kw", [dict(batch_size=7), dict(batch_size=1000, verbose=True), dict(device="cpu"),
                                dict(dtype="float32"), dict(dtype=torch.float32, device=torch.device("cpu"))],
                         ids=["batch7", "batch1000-verbose", "device", "dtype-str", "dtype-torch"])
@pytest.mark.parametrize("fast", [True, False])
def test_settings_that_do_not_change_results(kw, fast):
    model, X, args, _ = family("args")
    a, b = both(model, X, args=args, raw_outputs=True, **kw) if fast else (
        ft.saturation_mutagenesis(model, X, args=args, raw_outputs=True, fast=False, **kw),
        tm.saturation_mutagenesis(model, X, args=args, raw_outputs=True, fast=False, **kw))
    assert_matches(list(a), list(b), _scale(b))


@pytest.mark.parametrize("dtype,rtol", [(torch.bfloat16, 5e-2), ("float16", 5e-3)])
def test_reduced_precision_dtype_and_values(dtype, rtol):
    """Under autocast both return the dtype the model's last op gives (a Linear: 16-bit) and close values."""
    model = models.tiny(seq_len=L, num_outputs=3)
    X = models.random_onehot(2, L, seed=5)
    a, b = both(model, X, dtype=dtype, raw_outputs=True)
    assert a.y_hat.dtype == b.y_hat.dtype != torch.float32
    assert_matches(list(a), list(b), _scale(b), rtol=rtol)


def test_model_left_as_it_was():
    model = models.tiny(seq_len=L, num_outputs=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = models.random_onehot(2, L)
    a, b = both(model, X)                       # both run the model in eval mode
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert_matches(a, b, 1.0)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw,match", [
    (dict(func=lambda y: y[:, 0]), "func is not supported"),
    (dict(start=10, end=5), "start=10, end=5 for length 32"),
    (dict(start=-1), "start=-1"),
    (dict(end=40), "end=40"),
    (dict(dtype=torch.float64), "dtype=torch.float64"),
    (dict(dtype="int8"), "dtype must be"),
    (dict(batch_size=0), "batch_size must be a positive int; got 0"),
    (dict(args=(torch.zeros(5, 2),)), r"args\[0\] must be a tensor with the same first dimension as X \(3\)"),
])
def test_bad_arguments_raise_naming_them(kw, match):
    model = models.tiny(seq_len=L, num_outputs=3)
    with pytest.raises(ValueError, match=match):
        ft.saturation_mutagenesis(model, models.random_onehot(3, L), **kw)


def test_float64_model_refused():
    model = models.tiny(seq_len=L, num_outputs=3).double()
    with pytest.raises(ValueError, match=r"parameters are \['torch.float64'\].*model.float\(\)"):
        ft.saturation_mutagenesis(model, models.random_onehot(2, L))


# ------------------------------------------------------------------ the engine cache
def _builds():
    return compat.cache_info()["builds"]


def test_set_up_paid_once_across_calls():
    model = models.tiny(seq_len=L, num_outputs=3)
    compat.clear_cache(model)
    n0 = _builds()
    for seed in range(4):                       # a loop over batches of sequences, of different sizes
        X = models.random_onehot(1 + seed, L, seed=seed)
        assert_matches(ft.saturation_mutagenesis(model, X), tm.saturation_mutagenesis(model, X, fast=False), 1.0)
    assert _builds() == n0 + 1
    e1 = compat.cached_engine(model, L, n_inputs=1, num_chars=4, change_ranges=tuple((p, p + 1) for p in range(L)),
                              device=torch.device("cpu"), dtype=None)
    assert _builds() == n0 + 1 and e1 is compat.cached_engine(
        model, L, num_chars=4, change_ranges=tuple((p, p + 1) for p in range(L)), device=torch.device("cpu"),
        dtype=None)
    ft.saturation_mutagenesis(model, X, start=3, end=9)          # another window: another engine
    ft.saturation_mutagenesis(model, X, start=3, end=9, hypothetical=True, target=1)
    assert _builds() == n0 + 2


def _perturb_in_place(model):
    with torch.no_grad():
        model.conv1.weight.add_(0.3 * torch.randn_like(model.conv1.weight))     # as optimizer.step() does


def _perturb_data(model):
    model.dense.weight.data.copy_(model.dense.weight.data.flip(0))             # bumps no _version counter


def _perturb_load(model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["conv2.bias"] += 0.5
    model.load_state_dict(sd)


def _perturb_replace(model):
    model.conv2.weight = nn.Parameter(model.conv2.weight.detach() * -1.0)


def _perturb_buffer(model):
    model.bn1.running_mean.data += 0.7                                        # a buffer, through .data


@pytest.mark.parametrize("perturb", [_perturb_in_place, _perturb_data, _perturb_load, _perturb_replace,
                                     _perturb_buffer], ids=lambda f: f.__name__[9:])
def test_weight_change_is_seen(perturb):
    model = models.tiny(seq_len=L, num_outputs=3)
    X = models.random_onehot(2, L, seed=11)
    before = ft.saturation_mutagenesis(model, X, raw_outputs=True)
    n0 = _builds()
    perturb(model)
    after, want = both(model, X, raw_outputs=True)
    assert_matches(list(after), list(want), _scale(want))
    assert float((after.y_hat - before.y_hat).abs().max()) > 1e-3 * _scale(want), "the change moved nothing"
    assert _builds() == n0 + 1
    ft.saturation_mutagenesis(model, X)
    assert _builds() == n0 + 1                  # and the new engine is reused


def test_same_values_reloaded_reuse_the_engine_and_deleted_models_free_it():
    model = models.tiny(seq_len=L, num_outputs=3)
    X = models.random_onehot(2, L)
    ft.saturation_mutagenesis(model, X)
    n0 = _builds()
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})   # new _versions, same values
    ft.saturation_mutagenesis(model, X)
    assert _builds() == n0
    model.register_buffer("unused", torch.tensor([float("nan"), 1.0]))    # a new buffer: rebuilt once
    ft.saturation_mutagenesis(model, X)
    ft.saturation_mutagenesis(model, X)
    assert _builds() == n0 + 1                  # NaN == NaN here: not rebuilt on every call
    models_before = compat.cache_info()["models"]
    del model
    gc.collect()
    assert compat.cache_info()["models"] == models_before - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_tangermeme_on_cpu():
    model, X, args, _ = family("args")
    ours = ft.saturation_mutagenesis(model, X, args=args, device="cuda", raw_outputs=True)
    theirs = tm.saturation_mutagenesis(model, X, args=args, device="cpu", fast=False, raw_outputs=True)
    assert_matches(list(ours), list(theirs), _scale(theirs), rtol=5e-5)
