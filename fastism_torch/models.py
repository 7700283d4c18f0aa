"""PyTorch versions of the fastISM paper's reference models, channels-first: input ``(N, 4, L)``.

Each mirrors the Keras definition in the original package (``fastism.models``) layer for layer:

- :func:`basset`: three conv blocks ``conv (300x19, 200x11, 200x7) -> ReLU -> BatchNorm -> MaxPool (3, 4, 4)``,
  flatten, two ``dense 1000 -> ReLU -> BatchNorm (-> Dropout)`` blocks, dense ``num_outputs``.
- :func:`factorized_basset`: the factorized stacks ``conv -> BatchNorm -> ReLU`` (48x3, 64x3, 100x3, 150x7,
  300x7 | pool 3 | 200x7, 200x3, 200x3 | pool 4 | 200x7 | pool 4), then the same dense head as Basset.
- :func:`bpnet`: conv 64x25 + ReLU, ``n_dilated`` residual blocks ``x = x + ReLU(conv 64x3, dilation 2**i)``,
  a profile head (the original's ``Conv2DTranspose(1, (25, 1), 'same')`` per task, here one
  ``ConvTranspose1d(64, num_tasks, 25)`` giving ``(N, num_tasks, L)``) and a counts head (global average pool
  -> dense, ``(N, num_tasks)``).  Returns the tuple ``(profile, counts)``.
- :func:`tiny`: a small, fast convolutional model for examples and tests.

Differences from the Keras originals that do not change what is computed: channels-first layout (so the
first dense layer sees the flattened features in ``(C, L)`` rather than ``(L, C)`` order, a permutation of
its weights), one profile convolution with ``num_tasks`` channels instead of one per task, and the paper's
Dropout (0.3) after the dense blocks of the Basset models (identity in evaluation mode; ``dropout=0`` drops
the module).

Initialisation
--------------
With PyTorch's default initialisation the outputs of these models barely move under a single-base mutation,
so a comparison of two ISM implementations on them checks little.  ``init="kaiming"`` (the default) draws
He-normal weights (std ``sqrt(2 / fan_in)``), small random biases and random BatchNorm affine parameters from
``seed``, then sets every BatchNorm's running mean and variance to the statistics of its input on random
one-hot sequences (with a small random jitter, and floored at a quarter of the median variance), so activations stay well scaled through the depth and the
running statistics are non-trivial (BPNet's dilated convolutions are scaled by 0.5 more, so the residual
tower does not grow 2x in variance per block).  ``init="default"`` keeps PyTorch's initialisation.  Every model is
returned in evaluation mode, on the CPU, and is traceable by ``torch.fx.symbolic_trace``.

Example::

    from fastism_torch import FastISM, models
    model = models.basset(seq_len=1000, num_outputs=1, seed=0)
    sat = FastISM(model, seq_len=1000).saturation_mutagenesis(seqs)     # (N, 4, 1000, 1)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Basset", "FactorizedBasset", "BPNet", "Tiny", "basset", "factorized_basset", "bpnet", "tiny",
           "init_weights", "random_onehot"]

INITS = ("kaiming", "default")


# ------------------------------------------------------------------ building blocks
def _conv_block(c_in: int, c_out: int, k: int, order: str) -> list[nn.Module]:
    """``conv -> ReLU -> BN`` (Keras ``Conv1D(activation='relu')`` then BN) or ``conv -> BN -> ReLU``."""
    conv = nn.Conv1d(c_in, c_out, k, padding=k // 2)
    bn = nn.BatchNorm1d(c_out)
    return [conv, nn.ReLU(), bn] if order == "relu_bn" else [conv, bn, nn.ReLU()]


def _dense_head(n_in: int, num_outputs: int, hidden: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in in (n_in, hidden):
        layers += [nn.Linear(width_in, hidden), nn.ReLU(), nn.BatchNorm1d(hidden)]
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_outputs))
    return layers


def _pooled_length(seq_len: int, pools) -> int:
    for p in pools:
        seq_len //= p
    if seq_len < 1:
        raise ValueError(f"seq_len is too short for pooling by {list(pools)}: the flattened length would be 0")
    return seq_len


class Basset(nn.Sequential):
    """Basset (Kelley et al. 2016) as in ``fastism.models.basset``: ``(N, 4, L) -> (N, num_outputs)``."""

    def __init__(self, seq_len: int = 1000, num_outputs: int = 1, num_chars: int = 4, dropout: float = 0.3):
        pools = (3, 4, 4)
        layers: list[nn.Module] = []
        for (c_in, c_out, k), pool in zip([(num_chars, 300, 19), (300, 200, 11), (200, 200, 7)], pools):
            layers += _conv_block(c_in, c_out, k, "relu_bn") + [nn.MaxPool1d(pool)]
        layers += _dense_head(200 * _pooled_length(seq_len, pools), num_outputs, 1000, dropout)
        super().__init__(*layers)
        self.seq_len = seq_len


class FactorizedBasset(nn.Sequential):
    """Factorized Basset as in ``fastism.models.factorized_basset``: ``(N, 4, L) -> (N, num_outputs)``."""

    STAGES = ([(48, 3), (64, 3), (100, 3), (150, 7), (300, 7)], [(200, 7), (200, 3), (200, 3)], [(200, 7)])
    POOLS = (3, 4, 4)

    def __init__(self, seq_len: int = 1000, num_outputs: int = 1, num_chars: int = 4, dropout: float = 0.3):
        layers: list[nn.Module] = []
        c_in = num_chars
        for stage, pool in zip(self.STAGES, self.POOLS):
            for c_out, k in stage:
                layers += _conv_block(c_in, c_out, k, "bn_relu")
                c_in = c_out
            layers.append(nn.MaxPool1d(pool))
        layers += _dense_head(c_in * _pooled_length(seq_len, self.POOLS), num_outputs, 1000, dropout)
        super().__init__(*layers)
        self.seq_len = seq_len


class BPNet(nn.Module):
    """BPNet (Avsec et al. 2021) as in ``fastism.models.bpnet``.

    ``(N, 4, L) -> (profile (N, num_tasks, L), counts (N, num_tasks))``.  ``profile_head="conv_transpose"``
    mirrors the original's ``Conv2DTranspose``; ``"conv"`` uses a ``Conv1d`` of the same size (the same
    function up to flipping the kernel).
    """

    def __init__(self, seq_len: int = 1000, num_tasks: int = 1, n_dilated: int = 9, filters: int = 64,
                 num_chars: int = 4, profile_head: str = "conv_transpose"):
        super().__init__()
        if profile_head not in ("conv_transpose", "conv"):
            raise ValueError(f"profile_head must be 'conv_transpose' or 'conv', got {profile_head!r}")
        self.seq_len = seq_len
        self.conv = nn.Conv1d(num_chars, filters, 25, padding=12)
        self.relu = nn.ReLU()
        self.dilated = nn.ModuleList(nn.Conv1d(filters, filters, 3, padding=2 ** i, dilation=2 ** i)
                                     for i in range(n_dilated))
        if profile_head == "conv_transpose":
            self.profile = nn.ConvTranspose1d(filters, num_tasks, 25, padding=12)
        else:
            self.profile = nn.Conv1d(filters, num_tasks, 25, padding=12)
        self.counts = nn.Linear(filters, num_tasks)

    def forward(self, x):
        x = self.relu(self.conv(x))
        for conv in self.dilated:
            x = x + self.relu(conv(x))
        return self.profile(x), self.counts(x.mean(dim=-1))


class DilatedResidual(nn.Module):
    """A deep dilated residual tower (a long chain of convolutions: delta propagation's error growth):
    a stem, ``n_layers`` blocks ``x + relu(conv_d(x))`` with dilations ``2 ** (i % cycle)``, BPNet's heads."""

    def __init__(self, seq_len: int = 1000, n_layers: int = 20, filters: int = 32, cycle: int = 6,
                 num_chars: int = 4):
        super().__init__()
        self.seq_len = seq_len
        self.stem = nn.Conv1d(num_chars, filters, 11, padding=5)
        self.blocks = nn.ModuleList(nn.Conv1d(filters, filters, 3, padding=2 ** (i % cycle), dilation=2 ** (i % cycle))
                                    for i in range(n_layers))
        self.profile = nn.Conv1d(filters, 1, 25, padding=12)
        self.counts = nn.Linear(filters, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for conv in self.blocks:
            x = x + torch.relu(conv(x))
        return self.profile(x), self.counts(x.mean(dim=-1))


class BasenjiTower(nn.Module):
    """A Basenji-style convolution tower: a stem, ``n_blocks`` of conv(k=5) + BatchNorm + GELU + max pool 2
    with channels growing by ``growth``, then a 1x1 convolution to ``num_outputs`` tracks per pooled bin."""

    def __init__(self, seq_len: int = 1024, n_blocks: int = 5, filters: int = 64, growth: float = 1.25,
                 num_outputs: int = 8, num_chars: int = 4):
        super().__init__()
        self.seq_len = seq_len
        layers, c = [nn.Conv1d(num_chars, filters, 15, padding=7), nn.BatchNorm1d(filters), nn.GELU(),
                     nn.MaxPool1d(2)], filters
        for _ in range(n_blocks):
            c_out = int(round(c * growth))
            layers += [nn.Conv1d(c, c_out, 5, padding=2), nn.BatchNorm1d(c_out), nn.GELU(), nn.MaxPool1d(2)]
            c = c_out
        layers.append(nn.Conv1d(c, num_outputs, 1))
        self.tower = nn.Sequential(*layers)

    def forward(self, x):
        return self.tower(x)


class Tiny(nn.Module):
    """A small, fast model: conv+BN+ReLU, pool 2, a dilated residual conv, flatten -> dense ``num_outputs``."""

    def __init__(self, seq_len: int = 100, num_outputs: int = 2, num_chars: int = 4, filters: int = 16):
        super().__init__()
        self.seq_len = seq_len
        self.conv1 = nn.Conv1d(num_chars, filters, 7, padding=3)
        self.bn1 = nn.BatchNorm1d(filters)
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(filters, filters, 3, padding=2, dilation=2)
        self.relu = nn.ReLU()
        self.dense = nn.Linear(filters * _pooled_length(seq_len, (2,)), num_outputs)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = x + self.relu(self.conv2(x))
        return self.dense(torch.flatten(x, 1))


# ------------------------------------------------------------------ initialisation
def random_onehot(n: int, seq_len: int, num_chars: int = 4, seed: int = 0) -> torch.Tensor:
    """``n`` random one-hot sequences, ``(n, num_chars, seq_len)`` float32."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, num_chars, (n, seq_len), generator=g)
    return nn.functional.one_hot(idx, num_chars).float().transpose(1, 2).contiguous()


def _fan_in(m: nn.Module) -> int:
    w = m.weight
    if isinstance(m, nn.ConvTranspose1d):       # weight (C_in, C_out / groups, k): each output sums C_in * k
        return w.shape[0] * w.shape[2]
    return w[0].numel()


@torch.no_grad()
def init_weights(model: nn.Module, seq_len: int, seed: int = 0, num_chars: int = 4,
                 n_calibration: int = 16) -> nn.Module:
    """He-normal weights, random biases and BatchNorm affines, BatchNorm running statistics from data.

    The running mean/variance of every BatchNorm are the statistics of its input on ``n_calibration`` random
    one-hot sequences of length ``seq_len`` (floored at a quarter of the median, so a unit silent on every
    calibration sequence does not blow up, then times a random jitter of 10% at most), so the activations are
    well scaled in evaluation mode and the statistics are far from the trivial (0, 1).  Deterministic in
    ``seed``.  Returns the model in evaluation mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / _fan_in(m)) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm1d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            bns.append(m)
    model.eval()
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None               # cumulative average: one batch gives exactly its statistics
            m.train()
        model(random_onehot(n_calibration, seq_len, num_chars, seed=seed + 1))
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.05
                                * m.running_var.sqrt())
            # a unit that was silent (after a ReLU) on every calibration sequence has variance ~0: floor it
            m.running_var.clamp_(min=0.25 * float(m.running_var.median()) + m.eps)
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.9, 1.1, generator=g))
            m.num_batches_tracked.fill_(1)
    return model.eval()


def _make(build, seq_len: int, init: str, seed: int, num_chars: int) -> nn.Module:
    """``build()`` under ``seed`` (without touching the global RNG), initialised, in evaluation mode."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    if init == "kaiming":
        init_weights(model, seq_len, seed, num_chars)
    return model.eval()


# ------------------------------------------------------------------ factories
def basset(seq_len: int = 1000, num_outputs: int = 1, init: str = "kaiming", seed: int = 0,
           num_chars: int = 4, dropout: float = 0.3) -> Basset:
    """Basset, ``(N, num_chars, seq_len) -> (N, num_outputs)``, in evaluation mode."""
    return _make(lambda: Basset(seq_len, num_outputs, num_chars, dropout), seq_len, init, seed, num_chars)


def factorized_basset(seq_len: int = 1000, num_outputs: int = 1, init: str = "kaiming", seed: int = 0,
                      num_chars: int = 4, dropout: float = 0.3) -> FactorizedBasset:
    """Factorized Basset, ``(N, num_chars, seq_len) -> (N, num_outputs)``, in evaluation mode."""
    return _make(lambda: FactorizedBasset(seq_len, num_outputs, num_chars, dropout), seq_len, init, seed, num_chars)


def bpnet(seq_len: int = 1000, num_tasks: int = 1, n_dilated: int = 9, init: str = "kaiming", seed: int = 0,
          num_chars: int = 4, filters: int = 64, profile_head: str = "conv_transpose") -> BPNet:
    """BPNet, ``(N, num_chars, seq_len) -> ((N, num_tasks, seq_len), (N, num_tasks))``, in evaluation mode."""
    model = _make(lambda: BPNet(seq_len, num_tasks, n_dilated, filters, num_chars, profile_head), seq_len, init,
                  seed, num_chars)
    if init == "kaiming":       # each residual block adds to the variance: keep the tower's growth ~1.25x per block
        with torch.no_grad():
            for conv in model.dilated:
                conv.weight.mul_(0.5)
    return model


def tiny(seq_len: int = 100, num_outputs: int = 2, init: str = "kaiming", seed: int = 0,
         num_chars: int = 4) -> Tiny:
    """A small fast model, ``(N, num_chars, seq_len) -> (N, num_outputs)``, in evaluation mode."""
    return _make(lambda: Tiny(seq_len, num_outputs, num_chars), seq_len, init, seed, num_chars)


def dilated_residual(seq_len: int = 1000, n_layers: int = 20, filters: int = 32, init: str = "kaiming",
                     seed: int = 0, num_chars: int = 4) -> DilatedResidual:
    """A deep dilated residual tower, ``(N, num_chars, L) -> ((N, 1, L), (N, 1))``, in evaluation mode."""
    model = _make(lambda: DilatedResidual(seq_len, n_layers, filters, num_chars=num_chars), seq_len, init, seed,
                  num_chars)
    if init == "kaiming":       # as for BPNet: keep the residual sum's growth per block small
        with torch.no_grad():
            for conv in model.blocks:
                conv.weight.mul_(0.3)
    return model


def basenji_tower(seq_len: int = 1024, n_blocks: int = 5, init: str = "kaiming", seed: int = 0,
                  num_chars: int = 4, num_outputs: int = 8) -> BasenjiTower:
    """A Basenji-style tower, ``(N, num_chars, L) -> (N, num_outputs, L / 2 ** (n_blocks + 1))``."""
    return _make(lambda: BasenjiTower(seq_len, n_blocks, num_outputs=num_outputs, num_chars=num_chars), seq_len,
                 init, seed, num_chars)


MODELS = {"basset": basset, "factorized_basset": factorized_basset, "bpnet": bpnet, "tiny": tiny,
          "dilated_residual": dilated_residual, "basenji_tower": basenji_tower}
