"""The original fastISM's test matrix rebuilt as PyTorch models, plus what it could not do.

Every test asserts FastISM == NaiveISM (float32, relative to output scale) on random one-hot input.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastism_torch as ft
from helpers import Lambda, check_model, random_onehot, scale_weights

pytestmark = pytest.mark.usefixtures("kernel_form")   # every test with the CPU eager and the static kernels


def seq(*layers, seed=0):
    return scale_weights(nn.Sequential(*layers), seed)


def head(c, length, out=3):
    return [nn.Flatten(), nn.Linear(c * length, out)]


# ------------------------------------------------------------------ single input / output stacks
@pytest.mark.parametrize("k,dil,pad", [(5, 1, "same"), (4, 1, "same"), (6, 2, "same"), (3, 4, "same"),
                                       (7, 1, "valid"), (4, 1, 0), (5, 1, 2), (3, 1, (1,)), (2, 3, "valid")])
def test_conv_variants(k, dil, pad):
    L = 40
    conv = nn.Conv1d(4, 6, k, dilation=dil, padding=pad)
    lout = F.conv1d(torch.zeros(1, 4, L), conv.weight, None, 1, pad, dil).shape[-1]
    check_model(seq(conv, nn.ReLU(), *head(6, lout)), L)


def test_two_convs_dilated_bias_free_and_activation_first():
    check_model(seq(nn.ReLU(), nn.Conv1d(4, 8, 5, padding=2, bias=False), nn.ELU(),
                    nn.Conv1d(8, 8, 3, padding=4, dilation=4), nn.GELU(), nn.Dropout(0.3), *head(8, 50)), 50)


@pytest.mark.parametrize("pool", [nn.MaxPool1d(3), nn.MaxPool1d(4, 2), nn.MaxPool1d(3, 2, padding=1),
                                  nn.AvgPool1d(2), nn.AvgPool1d(3, 2), nn.MaxPool1d(2, ceil_mode=True),
                                  nn.AvgPool1d(3, 1, padding=1)])
def test_pooling(pool):
    L = 45
    lout = pool(torch.zeros(1, 8, L)).shape[-1]
    check_model(seq(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), pool, nn.Conv1d(8, 8, 3), nn.Softplus(),
                    *head(8, lout - 2)), L)


def test_asymmetric_padding_and_crop():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(4, 6, 4)
            self.c2 = nn.Conv1d(6, 6, 3, padding=1)
            self.fc = nn.Linear(6 * 30, 2)

        def forward(self, x):
            x = F.relu(self.c1(F.pad(x, (1, 2))))      # asymmetric 'same' for an even kernel
            x = self.c2(x)[:, :, 5:-5]                  # Cropping1D
            return self.fc(torch.flatten(x, 1))
    check_model(scale_weights(M()), 40)


class CroppedTower(nn.Module):
    """bpnet-lite's shape in miniature: dilated residual tower, then a profile conv and a mean over a middle
    crop only, so the last layers' changes near the edges reach no output (the plan's needed ranges)."""

    def __init__(self, trim=12, n=3):
        super().__init__()
        self.trim = trim
        self.iconv = nn.Conv1d(4, 8, 5, padding=2)
        self.rconvs = nn.ModuleList(nn.Conv1d(8, 8, 3, padding=2 ** i, dilation=2 ** i) for i in range(1, n + 1))
        self.fconv = nn.Conv1d(8, 2, 7, padding=3)
        self.linear = nn.Linear(8, 1)

    def forward(self, x):
        start, end = self.trim, x.shape[2] - self.trim
        x = torch.relu(self.iconv(x))
        for conv in self.rconvs:
            x = torch.add(x, torch.relu(conv(x)))
        profile = self.fconv(x)[:, :, start:end]
        return profile, self.linear(torch.mean(x[:, :, max(start - 3, 0):end + 3], dim=2))


@pytest.mark.parametrize("trim", [4, 12, 20])
def test_needed_ranges_after_a_crop(trim):
    fast = check_model(scale_weights(CroppedTower(trim)), 60)
    needed = {r.name: r.bounds for r in fast.plan.nodes.values()}
    assert needed["fconv"] == (trim, 60 - trim), needed            # only the cropped outputs are recomputed
    last = [r for r in fast.plan.nodes.values() if r.name.startswith("add")][-1]
    assert last.bounds == (trim - 3, 60 - trim + 3), needed       # the fconv's reads and the mean's crop
    assert all(lo >= last.bounds[0] and hi <= last.bounds[1] for lo, hi in zip(last.lo, last.hi))


def test_10bp_windows_and_replace_with():
    m = seq(nn.Conv1d(4, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 4, 3), *head(4, 48))
    ranges = [(i, i + 10) for i in range(0, 100, 5)][:-1]
    fast = ft.FastISM(m, 100, change_ranges=ranges)
    naive = ft.NaiveISM(m, 100, change_ranges=ranges)
    x = random_onehot(3, 100)
    from helpers import assert_close_to_naive
    for rep in (0, [0.25, 0.25, 0.25, 0.25], torch.eye(4)[torch.arange(10) % 4]):
        out = fast(x, replace_with=rep)
        assert out.shape == (3, len(ranges), 3)
        assert_close_to_naive(out, naive(x, replace_with=rep))


# ------------------------------------------------------------------ skip connections and aggregates
class Skip(nn.Module):
    def __init__(self, kind, L=40):
        super().__init__()
        self.kind = kind
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.c3 = nn.Conv1d(8, 8, 7, padding=3)
        self.pool = nn.MaxPool1d(2)
        ch = 16 if kind == "cat" else 8
        self.fc = nn.Linear(ch * (L // 2 if kind == "pool" else L), 2)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = self.c2(a)
        k = self.kind
        if k == "add":
            y = a + b
        elif k == "self":
            y = b + b
        elif k == "three":
            y = a + b + self.c3(a)
        elif k == "sub":
            y = torch.sub(a, self.c3(b))
        elif k == "max":                     # DenseNet-like with Maximum
            y = torch.maximum(torch.maximum(a, b), self.c3(b))
        elif k == "min":
            y = torch.minimum(a, self.c3(a))
        elif k == "mul":
            y = a * torch.sigmoid(self.c3(b))
        elif k == "cat":
            y = torch.cat([a, self.c3(b)], dim=1)
        elif k == "pool":                    # skip, then pool, then dense
            y = self.pool(a + self.c3(b))
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("kind", ["add", "self", "three", "sub", "max", "min", "mul", "cat", "pool"])
def test_skip_connections(kind):
    check_model(scale_weights(Skip(kind)), 40)


# ------------------------------------------------------------------ outputs, inputs, nesting
class TwoHeads(nn.Module):
    def __init__(self, L=60):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, 8, 9, padding=4), nn.ReLU(),
                                  nn.Sequential(nn.Conv1d(8, 8, 5, padding=4, dilation=2), nn.ReLU()))
        self.profile = nn.Conv1d(8, 2, 7, padding=3)             # a per-position head: never stops
        self.counts = nn.Linear(8, 2)

    def forward(self, x):
        h = self.body(x)
        return self.profile(h), self.counts(h.mean(dim=-1))     # global average pool: incremental


def test_multi_output_nested_profile_and_global_average():
    fast = check_model(scale_weights(TwoHeads()), 60)
    assert any(g.kind == "sum" for g in fast.plan.gathers)       # the mean was updated incrementally
    out = fast(random_onehot(2, 60))
    assert isinstance(out, tuple) and out[0].shape == (2, 60, 2, 60) and out[1].shape == (2, 60, 2)


class ExtraInput(nn.Module):
    """A control track joins the sequence branch before the stop; an optional bias may be None."""

    def __init__(self, L=50):
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 5, padding=2)
        self.ctrl = nn.Conv1d(2, 6, 3, padding=1)
        self.fc = nn.Linear(6 * L, 3)
        self.dense_extra = nn.Linear(5, 3)

    def forward(self, x, control, extra=None):
        h = F.relu(self.c1(x)) + self.ctrl(control)
        y = self.fc(h.flatten(1))
        if extra is not None:
            y = y + self.dense_extra(extra)
        return y


@pytest.mark.parametrize("with_extra", [True, False])
def test_extra_inputs(with_extra):
    m = scale_weights(ExtraInput())
    x = random_onehot(3, 50)
    g = torch.Generator().manual_seed(3)
    control = torch.randn(3, 2, 50, generator=g)
    extra = torch.randn(3, 5, generator=g) if with_extra else None
    fast = ft.FastISM(m, 50)
    naive = ft.NaiveISM(m, 50)
    from helpers import assert_close_to_naive
    assert_close_to_naive(fast([x, control, extra]), naive([x, control, extra]))
    assert_close_to_naive(fast.saturation_mutagenesis([x, control, extra]),
                          naive.saturation_mutagenesis([x, control, extra]))


def test_sequence_not_first_input():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 30 + 2, 2)

        def forward(self, z, x):
            return self.fc(torch.cat([F.relu(self.c(x)).flatten(1), z], 1))
    m = scale_weights(M())
    x, z = random_onehot(2, 30), torch.randn(2, 2)
    fast, naive = ft.FastISM(m, 30, seq_input_idx=1), ft.NaiveISM(m, 30, seq_input_idx=1)
    from helpers import assert_close_to_naive
    assert_close_to_naive(fast([z, x]), naive([z, x]))


# ------------------------------------------------------------------ layouts and other op families
class ChannelsLast(nn.Module):
    """(N, L, C) input like Keras: position-wise Dense, LayerNorm over channels, conv via transposes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.ln = nn.LayerNorm(8)
        self.dense = nn.Linear(8, 8)
        self.out = nn.Linear(8 * 40, 2)

    def forward(self, x):
        h = self.conv(x.permute(0, 2, 1)).transpose(1, 2)          # (N, L, 8)
        h = F.gelu(self.dense(self.ln(h)))
        return self.out(h.reshape(h.shape[0], -1))


def test_channels_last_layernorm_gelu():
    check_model(scale_weights(ChannelsLast()), 40, layout="NLC")


class Conv2dView(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 6, (5, 1), padding=(2, 0))
        self.p = nn.MaxPool2d((2, 1))
        self.t = nn.ConvTranspose1d(6, 3, 4, padding=1)
        self.fc = nn.Linear(3 * 21, 2)

    def forward(self, x):
        h = self.p(F.relu(self.c(x.unsqueeze(-1)))).squeeze(-1)     # Keras-style (k, 1) conv on (N, C, L, 1)
        return self.fc(self.t(h).flatten(1))


def test_conv2d_k1_and_conv_transpose():
    check_model(scale_weights(Conv2dView()), 40)


def test_strided_conv_and_reshape_keeping_length():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 8, 4, stride=2, padding=1)
            self.fc = nn.Linear(8 * 20, 2)

        def forward(self, x):
            h = self.c(x).view(x.size(0), 2, 4, 20)       # splits channels, keeps the length axis
            h = torch.softmax(h, dim=1).reshape(x.shape[0], 8, 20)
            return self.fc(h.flatten(1))
    check_model(scale_weights(M()), 40)


# ------------------------------------------------------------------ stops
def test_early_stop_layers_each_kind():
    m = seq(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 3, padding=1),
            nn.BatchNorm1d(8), *head(8, 25))
    for name in ["0", "1", "2", "3", "4"]:
        fast = check_model(m, 50, saturation=False, early_stop_layers=[name])
        assert fast.plan.stops[0] == (f"_{name}", "early_stop_layers"), fast.plan.stops
    fast = check_model(m, 50, saturation=False, early_stop_layers=["6"])    # the dense: no incremental update
    assert not any(g.kind == "ref" and g.consumer not in fast.plan.nodes for g in fast.plan.gathers)   # (delta ops' refs)
    with pytest.raises(ValueError, match="early_stop_layers not found"):
        ft.FastISM(m, 50, early_stop_layers=["nope"])


class Unknown(nn.Module):
    def forward(self, x):
        return torch.cumprod(x, dim=1)      # no rule: must become a stop point


def test_unknown_op_becomes_stop_with_warning_and_strict_raises():
    m = seq(nn.Conv1d(4, 6, 3, padding=1), nn.Tanh(), Lambda(lambda x: torch.special.expit(x) + 0.1),
            nn.Conv1d(6, 6, 3, padding=1), *head(6, 30))
    m[2] = Unknown()
    with pytest.warns(UserWarning, match="cumprod"):
        fast = check_model(m, 30, saturation=False)
    assert "no change-range rule" in str(fast.plan)
    with pytest.raises(ValueError, match="cumprod"):
        ft.FastISM(m, 30, strict=True)


def test_attention_stop():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 8, 5, padding=2)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            h = F.relu(self.c(x)).transpose(1, 2)
            a, _ = self.att(h, h, h)
            return self.fc(a.mean(1))
    check_model(scale_weights(M()), 30, saturation=False)


def test_model_left_unchanged():
    m = seq(nn.Conv1d(4, 4, 3), nn.Dropout(0.5), *head(4, 18))
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ft.FastISM(m, 20)(random_onehot(1, 20))
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_positional_term_without_batch_axis_is_a_stop():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 30, 2)

        def forward(self, x):
            h = self.c(x)
            h = h + torch.arange(h.size(2), dtype=h.dtype) / 30.0      # (L,) broadcast along the length
            return self.fc(F.relu(h).flatten(1))
    with pytest.warns(UserWarning, match="length axis"):
        check_model(scale_weights(M()), 30, saturation=False)


class RCAverage(nn.Module):
    """Reverse-complement averaging, as many genomics models wrap their body: a profile and a scalar head."""

    def __init__(self, L=40):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.c2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.prof = nn.Conv1d(8, 1, 7, padding=3)
        self.fc = nn.Linear(8 * L, 2)

    def body(self, x):
        return F.relu(self.c2(F.relu(self.c1(x))))

    def forward(self, x):
        fwd, rev = self.body(x), self.body(torch.flip(x, dims=(1, 2)))
        profile = (self.prof(fwd) + self.prof(rev).flip(-1)) / 2
        scalar = (self.fc(fwd.flatten(1)) + self.fc(rev.flatten(1))) / 2
        return profile, scalar


def test_reverse_complement_averaging():
    fast = check_model(scale_weights(RCAverage()), 40)
    assert not fast.plan.stops or all("flip" not in s for s, _ in fast.plan.stops)


# ------------------------------------------------------------------ delta propagation
@pytest.mark.parametrize("delta", [True, "always", False])
def test_long_chains_of_delta_layers_stay_exact(delta):
    """A 20-layer dilated residual tower (22 convolutions) and a Basenji-style tower (convolutions + BatchNorm +
    GELU + pooling): with every convolution by delta propagation (``"always"``), by the plan's choice, or
    recomputed, FastISM equals naive ISM (self-check off)."""
    from fastism_torch import models
    fast = check_model(models.dilated_residual(seq_len=96, n_layers=20, filters=8), 96, delta=delta)
    n_delta = sum(bool(r.delta_from) for r in fast.plan.nodes.values())
    assert (n_delta == 22) if delta == "always" else (n_delta == 0) if delta is False else n_delta >= 1
    check_model(models.basenji_tower(seq_len=128, n_blocks=3), 128, delta=delta)


def test_delta_handles_windows_replacements_n_columns_and_edges():
    """Delta convolutions for windows of 3 bases, a replacement vector, all-zero (N) columns and the first and
    last positions, against naive ISM."""
    from fastism_torch import models
    m = models.dilated_residual(seq_len=40, n_layers=4, filters=8)
    x = random_onehot(2, 40)
    x[0, :, 5] = 0                                                         # an N column
    ranges = [(0, 3), (10, 13), (37, 40)]
    fast = ft.FastISM(m, 40, change_ranges=ranges, test_correctness=False, delta="always")
    naive = ft.NaiveISM(m, 40, change_ranges=ranges)
    for rw in (0, torch.tensor([0.25, 0.25, 0.25, 0.25]), torch.eye(4)[[2, 0, 3]]):
        for a, b in zip(fast(x, replace_with=rw), naive(x, replace_with=rw)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_delta_switch_is_checked():
    with pytest.raises(ValueError, match="delta must be"):
        ft.FastISM(nn.Conv1d(4, 2, 3), 10, delta="sometimes")
