"""The generator: one seeded random architecture per seed (:func:`build`), deterministic.

A model starts with a convolution on the one-hot input, draws 1-6 body blocks by :data:`BODY_WEIGHTS`
(:class:`~fuzz.body.Body`'s draws, each checked on a probe batch, so that shapes stay valid), sometimes a sequence
mixer (LSTM / GRU / attention), and ends in a head (:class:`~fuzz.heads.Heads`).  Weights are Kaiming-scaled with non-trivial BatchNorm statistics
(``helpers.scale_weights``), so outputs move under mutation.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from helpers import random_onehot, scale_weights

from .blocks import FnAct
from .body import Body
from .heads import Head, Heads

ACT_MODULES = [("ReLU", lambda: nn.ReLU()), ("ReLU(inplace)", lambda: nn.ReLU(inplace=True)),
               ("GELU", lambda: nn.GELU()), ("ELU", lambda: nn.ELU()), ("ELU(inplace)", lambda: nn.ELU(inplace=True)),
               ("SiLU", lambda: nn.SiLU()), ("SiLU(inplace)", lambda: nn.SiLU(inplace=True)),
               ("Softplus", lambda: nn.Softplus()), ("Tanh", lambda: nn.Tanh()), ("Sigmoid", lambda: nn.Sigmoid())]
FN_ACTS = ["F.relu_", "F.relu(inplace)", "x.relu_()", "torch.relu", "F.gelu", "x.sigmoid()*x", "F.leaky_relu",
           "F.elu_"]


class FuzzNet(nn.Module):
    def __init__(self, body, head, nlc=False):
        super().__init__()
        self.body = nn.ModuleList(body)
        self.head = head
        self.nlc = nlc

    def forward(self, x):
        if self.nlc:
            x = x.transpose(1, 2)
        for b in self.body:
            x = b(x)
        return self.head(x)


class FuzzNetCtl(FuzzNet):
    """An extra forward argument with a default (a control track that is usually absent)."""

    def __init__(self, body, head, nlc=False, use_ctl=True):
        super().__init__(body, head, nlc)
        self.use_ctl = use_ctl

    def forward(self, x, ctl=None):
        if self.nlc:
            x = x.transpose(1, 2)
        for b in self.body:
            x = b(x)
        if self.use_ctl and ctl is not None:
            x = x + ctl
        return self.head(x)


class Gen(Body, Heads):
    """Draws blocks for one seed, keeping track of (channels, length) by running a probe through them."""

    def __init__(self, seed: int):
        self.rnd = random.Random(seed)
        self.seed = seed
        self.L0 = self.rnd.randint(20, 80)
        self.c = 4
        self.probe = torch.randn(2, 4, self.L0, generator=torch.Generator().manual_seed(seed))
        self.blocks, self.ops = [], []

    @property
    def L(self):
        return self.probe.shape[-1]

    def ch(self):
        return self.rnd.randint(2, 8)

    def try_add(self, block, desc, min_len=3) -> bool:
        try:
            with torch.no_grad():
                out = block(self.probe.clone())
        except Exception:
            return False
        if out.dim() != 3 or out.shape[0] != self.probe.shape[0] or out.shape[-1] < min_len or out.shape[1] > 24:
            return False
        self.probe, self.c = out, out.shape[1]
        self.blocks.append(block)
        self.ops.append(desc)
        return True

    # ---------------------------------------------------------------- convolutions
    def conv(self, cin=None, out=None, same=False, odd=False, valid=False):
        """A random Conv1d and its description; ``same``: output length = input length."""
        r = self.rnd
        cin = self.c if cin is None else cin
        out = self.ch() if out is None else out
        k = r.randint(1, 9)
        if odd and k % 2 == 0:
            k += 1
        d = r.choice([1, 1, 1, 2, 3, 4])
        stride = 1 if (same or odd) else r.choice([1, 1, 1, 2])
        groups = r.choice([g for g in (1, 2, 3, 4) if cin % g == 0 and out % g == 0]) if r.random() < 0.2 else 1
        bias = r.random() < 0.8
        if same:
            pad = "same"
        elif valid:
            pad = r.choice(["valid", 0])
        elif stride == 1:
            pad = r.choice(["same", "valid", r.randint(0, (d * (k - 1)) // 2 + 1)])
        else:
            pad = r.choice(["valid", r.randint(0, (d * (k - 1)) // 2 + 1)])
        mode = "zeros"
        if r.random() < 0.05 and pad not in ("valid", 0):
            mode = r.choice(["reflect", "replicate", "circular"])
        m = nn.Conv1d(cin, out, k, stride=stride, padding=pad, dilation=d, groups=groups, bias=bias,
                      padding_mode=mode)
        desc = f"Conv1d({cin}->{out}, k={k}, d={d}, s={stride}, pad={pad!r}, g={groups}, bias={bias}" + \
               (f", mode={mode})" if mode != "zeros" else ")")
        return m, desc

    def act(self):
        r = self.rnd
        if r.random() < 0.3:
            kind = r.choice(FN_ACTS)
            return FnAct(kind), kind
        name, make = r.choice(ACT_MODULES)
        return make(), name


BODY_WEIGHTS = [("conv", 30), ("padconv", 6), ("pool", 10), ("poolconv_branch", 4), ("bn", 7), ("act", 10),
                ("scale", 3), ("chanmix", 5), ("residual", 12), ("cat", 5), ("flip", 4), ("batchcat", 3),
                ("misc", 6), ("fconv", 4), ("sepconv", 4), ("crop", 4), ("se", 2), ("attnpool", 2), ("upsample", 2)]


def _runs(model, L, layout) -> bool:
    """The model runs eagerly on batches of 1 and 3 (as NaiveISM will run it)."""
    try:
        with torch.no_grad():
            for n in (1, 3):
                model.eval()(random_onehot(n, L, layout, seed=n))
        return True
    except Exception:
        return False


def build(seed: int):
    """The model, its length, layout and settings for one seed (deterministic)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        g = Gen(seed)
        r = g.rnd
        layout = "NLC" if r.random() < 0.1 else "NCL"
        g.block_conv() or g.try_add(nn.Conv1d(4, 4, 3, padding=1), "Conv1d(4->4, k=3, pad=1)")
        n_ops = r.randint(1, 6)
        names, weights = zip(*BODY_WEIGHTS)
        tries = 0
        while len(g.blocks) < 1 + n_ops and tries < 40:
            tries += 1
            getattr(g, "block_" + r.choices(names, weights)[0])()
        if r.random() < 0.12:
            g.block_mixer()
        head, hdesc = g.head()
        ctl, use = r.random() < 0.08, r.random() < 0.6
        for attempt in range(2):
            model = FuzzNetCtl(g.blocks, head, layout == "NLC", use) if ctl else FuzzNet(g.blocks, head, layout == "NLC")
            if _runs(model, g.L0, layout):
                break                                   # else e.g. a profile kernel longer than the sequence, or
            head = Head("pool", {"lin_p": nn.Linear(g.c, 1)}, pool_how="mean")   # .view of a non-contiguous one
            hdesc = f"mean -> Linear({g.c}->1)"
        else:
            raise AssertionError(f"seed {seed}: the generator built a model that does not run")
        if ctl:
            hdesc = f"forward(self, x, ctl=None){' with x = x + ctl if given' if use else ' (ctl unused)'}; " + hdesc
        model = scale_weights(model, seed)
    ops = ([f"input (N, L={g.L0}, 4) -> transpose"] if layout == "NLC" else [f"input (N, 4, L={g.L0})"]) \
        + g.ops + [f"head: {hdesc}"]
    settings = dict(n=r.choice([1, 2, 2]), saturation=seed % 4 == 0, static=r.random() < 0.5, multi=seed % 8 == 5)
    return model, g.L0, layout, ops, settings
