"""The generator: one seeded random architecture per seed (:func:`build`), deterministic.

A model starts with a convolution on the one-hot input, draws 1-6 body blocks by :data:`BODY_WEIGHTS`
(checking each on a probe batch, so that shapes stay valid), sometimes a sequence mixer (LSTM / GRU /
attention), and ends in a head.  Weights are Kaiming-scaled with non-trivial BatchNorm statistics
(``helpers.scale_weights``), so outputs move under mutation.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from helpers import random_onehot, scale_weights

from .blocks import (BatchCat, Cat, ChannelMix, Flip, FnAct, FPad, FPool, FuzzNet, FuzzNetCtl, Head, Misc, Mixer,
                     PoolConvBranch, Residual, Scale, Seq, rearrange)

ACT_MODULES = [("ReLU", lambda: nn.ReLU()), ("ReLU(inplace)", lambda: nn.ReLU(inplace=True)),
               ("GELU", lambda: nn.GELU()), ("ELU", lambda: nn.ELU()), ("ELU(inplace)", lambda: nn.ELU(inplace=True)),
               ("SiLU", lambda: nn.SiLU()), ("SiLU(inplace)", lambda: nn.SiLU(inplace=True)),
               ("Softplus", lambda: nn.Softplus()), ("Tanh", lambda: nn.Tanh()), ("Sigmoid", lambda: nn.Sigmoid())]
FN_ACTS = ["F.relu_", "F.relu(inplace)", "x.relu_()", "torch.relu", "F.gelu", "x.sigmoid()*x", "F.leaky_relu",
           "F.elu_"]


class Gen:
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

    def block_conv(self):
        r = self.rnd
        m, desc = self.conv()
        mods, descs = [m], [desc]
        if r.random() < 0.5:
            a, ad = self.act()
            mods.append(a)
            descs.append(ad)
        return self.try_add(Seq(*mods), " -> ".join(descs))

    def block_padconv(self):
        r = self.rnd
        a, b = r.randint(0, 5), r.randint(0, 5)
        u = r.random()
        if u < 0.45:
            pad = nn.ConstantPad1d((a, b), r.choice([0.0, 0.0, 0.5, -1.0]))
            pd = f"ConstantPad1d(({a}, {b}), {pad.value})"
        elif u < 0.85:
            v = r.choice([0.0, 0.0, 0.25])
            pad, pd = FPad((a, b), value=v), f"F.pad(({a}, {b}), value={v})"
        elif u < 0.93:
            mode = r.choice(["reflect", "replicate", "circular"])
            a, b = min(a, 3), min(b, 3)
            pad, pd = FPad((a, b), mode), f"F.pad(({a}, {b}), mode={mode!r})"
        else:
            a, b = -r.randint(1, 3), r.randint(-2, 2)
            pad, pd = FPad((a, b)), f"F.pad(({a}, {b}))  # negative = crop"
        m, desc = self.conv(valid=True)
        return self.try_add(Seq(pad, m), f"{pd} -> {desc}")

    # ---------------------------------------------------------------- pooling, norms, pointwise
    def block_pool(self):
        r = self.rnd
        k = r.randint(2, 4)
        s = r.choice([k, k, 1])
        p = r.randint(0, k // 2)
        ceil = r.random() < 0.1
        u = r.random()
        if u < 0.45:
            m, desc = nn.MaxPool1d(k, s, p, ceil_mode=ceil), f"MaxPool1d({k}, {s}, {p}, ceil_mode={ceil})"
        elif u < 0.85:
            cip = r.random() < 0.7
            m = nn.AvgPool1d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
            desc = f"AvgPool1d({k}, {s}, {p}, ceil_mode={ceil}, count_include_pad={cip})"
        else:
            kind = r.choice(["max", "avg"])
            m, desc = FPool(kind, k, s, p), f"F.{kind}_pool1d(x, {k}, {s}, {p})"
        return self.try_add(m, desc)

    def block_poolconv_branch(self):
        r = self.rnd
        combine = r.choice(["cat", "add", "add", "mul"])
        out = self.c if combine != "cat" else self.ch()
        conv, cd = self.conv(out=out, same=True)
        if r.random() < 0.7:
            pool, pdesc = nn.MaxPool1d(3, 1, 1), "MaxPool1d(3, 1, 1)"
        else:
            cip = r.random() < 0.5
            pool, pdesc = nn.AvgPool1d(3, 1, 1, count_include_pad=cip), f"AvgPool1d(3, 1, 1, count_include_pad={cip})"
        return self.try_add(PoolConvBranch(pool, conv, combine), f"branch[{pdesc} | {cd}] combine={combine}")

    def block_bn(self):
        r = self.rnd
        if r.random() < 0.1:
            return self.try_add(nn.BatchNorm1d(self.c, track_running_stats=False),
                                f"BatchNorm1d({self.c}, track_running_stats=False)  # batch statistics")
        return self.try_add(nn.BatchNorm1d(self.c), f"BatchNorm1d({self.c})")

    def block_act(self):
        a, desc = self.act()
        return self.try_add(a, desc)

    def block_scale(self):
        kind = self.rnd.choice(["(c,1)", "(c)[None,:,None]"])
        return self.try_add(Scale(self.c, kind), f"x * learned per-channel scale {kind}")

    def block_chanmix(self):
        r = self.rnd
        how = r.choice(["transpose", "permute", "torch.transpose", "einops"])
        if how == "einops" and rearrange is None:       # same draws with or without einops
            how = "transpose"
        c = self.c
        u = r.random()
        if u < 0.4:
            out = self.ch()
            mods, desc = [nn.Linear(c, out)], f"Linear({c}->{out})"
        elif u < 0.7:
            mods, desc = [nn.LayerNorm(c)], f"LayerNorm({c})"
        else:
            out = self.ch()
            mods, desc = [nn.LayerNorm(c), nn.Linear(c, out), nn.GELU()], f"LayerNorm({c}) -> Linear({c}->{out}) -> GELU"
        return self.try_add(ChannelMix(how, mods), f"{how} to NLC -> {desc} -> back")

    # ---------------------------------------------------------------- residuals, concatenations, flips
    def block_residual(self):
        r = self.rnd
        mode = r.choice(["add", "add", "iadd", "iadd", "preact_inplace", "iadd_into_y", "alias_iadd"])
        crop = r.choice([None, None, "const", "shape", "narrow"])
        if crop is None:
            conv, cd = self.conv(out=self.c, same=True)
        else:
            conv, cd = self.conv(out=self.c, valid=True, odd=crop == "const")
        mods, descs = [conv], [cd]
        if r.random() < 0.6:
            a, ad = self.act()
            mods.append(a)
            descs.append(ad)
        if r.random() < 0.2:
            m2, d2 = self.conv(out=self.c, same=True)
            mods.append(m2)
            descs.append(d2)
        f = Seq(*mods)
        d = 0
        if crop == "const":
            with torch.no_grad():
                try:
                    d = (self.L - f(self.probe.clone()).shape[-1]) // 2
                except Exception:
                    return False
            if d <= 0:
                crop = "shape"
        act, pre = None, ""
        if mode == "preact_inplace":
            name, make = r.choice([("ReLU(inplace)", lambda: nn.ReLU(inplace=True)),
                                   ("SiLU(inplace)", lambda: nn.SiLU(inplace=True)),
                                   ("ELU(inplace)", lambda: nn.ELU(inplace=True))])
            act, pre = make(), f"{name} on the skip's tensor -> "
        sym = {"add": "x = x + f(x)", "iadd": "x += f(x)", "preact_inplace": "x = x + f(act_(x))",
               "iadd_into_y": "y = f(x); y += x", "alias_iadd": "h = x; x += f(x); x = x + h"}[mode]
        return self.try_add(Residual(f, mode, crop, d, act),
                            f"residual {sym} crop={crop}{f' d={d}' if crop == 'const' else ''}: "
                            f"f = {pre}{' -> '.join(descs)}")

    def block_cat(self):
        r = self.rnd
        if self.c > 12:
            return False
        f, fd = self.conv(same=r.random() < 0.5)
        g, gd = (None, "x") if r.random() < 0.6 else self.conv()
        with torch.no_grad():
            try:
                la = self.L if g is None else g(self.probe.clone()).shape[-1]
                lb = f(self.probe.clone()).shape[-1]
            except Exception:
                return False
        crop = "min" if r.random() < 0.1 else ("a" if la >= lb else "b")
        return self.try_add(Cat(f, g, crop), f"cat([{gd}, {fd}], 1), the longer cropped (crop={crop!r})")

    def block_flip(self):
        r = self.rnd
        kind = r.choice(["avg", "torch.flip", "rc_f", "rc_f", "flip_f_flip"])
        if kind in ("rc_f", "flip_f_flip"):
            f, fd = self.conv(valid=r.random() < 0.5)
            return self.try_add(Flip(kind, f), f"flip {kind} with f = {fd}")
        return self.try_add(Flip(kind), f"flip {kind}: (x + x.flip(-1)) / 2")

    def block_batchcat(self):
        r = self.rnd
        f, fd = self.conv()
        mods, descs = [f], [fd]
        if r.random() < 0.5:
            a, ad = self.act()
            mods.append(a)
            descs.append(ad)
        split = r.choice(["chunk", "slice"])
        return self.try_add(BatchCat(Seq(*mods), split),
                            f"batch cat([x, x.flip(-1)], 0) -> {' -> '.join(descs)} -> split ({split}) -> a + b.flip(-1)")

    def block_misc(self):
        r = self.rnd
        kind = r.choice(["dropout", "convT", "conv2d(k,1)", "softmax_c", "upsample2", "reshape", "view_size",
                         "gate", "glu", "clamp", "chan_center", "len_center", "where", "square"])
        c = self.c
        if kind == "dropout":
            return self.try_add(nn.Dropout(0.3), "Dropout(0.3)")
        if kind == "convT":
            k = r.randint(1, 5)
            p = r.randint(0, k - 1)
            out = self.ch()
            return self.try_add(nn.ConvTranspose1d(c, out, k, stride=1, padding=p),
                                f"ConvTranspose1d({c}->{out}, k={k}, s=1, p={p})")
        if kind == "conv2d(k,1)":
            k = r.randint(1, 7)
            p = r.randint(0, k // 2)
            out = self.ch()
            return self.try_add(Misc(kind, nn.Conv2d(c, out, (k, 1), padding=(p, 0))),
                                f"Conv2d({c}->{out}, ({k}, 1), padding=({p}, 0)) on x.unsqueeze(-1), squeeze(-1)")
        if kind in ("gate", "glu"):
            m, md = self.conv(out=c, same=True)
            return self.try_add(Misc(kind, m), f"{kind} with {md}")
        if kind == "upsample2" and self.L > 60:
            return False
        return self.try_add(Misc(kind), kind)

    def block_mixer(self):
        r = self.rnd
        c = self.c
        kind = r.choice(["lstm", "gru", "mha", "mha"])
        residual = False
        if kind == "mha":
            heads = r.choice([h for h in (1, 2) if c % h == 0])
            m, desc = nn.MultiheadAttention(c, heads, batch_first=True), f"MultiheadAttention({c}, {heads})"
            residual = r.random() < 0.5
        else:
            bi = r.random() < 0.5
            hidden = r.randint(2, 6)
            cls = nn.LSTM if kind == "lstm" else nn.GRU
            m = cls(c, hidden, batch_first=True, bidirectional=bi)
            desc = f"{cls.__name__}({c}, {hidden}, bidirectional={bi})"
        return self.try_add(Mixer(kind, m, residual), f"{desc} on (N, L, C){' + residual' if residual else ''}")

    # ---------------------------------------------------------------- heads
    def head(self):
        r = self.rnd
        c, L = self.c, self.L
        T = r.randint(1, 3)
        kind = r.choice(["dense", "dense", "pool", "pool", "profile", "dict", "tuple", "dense+pool"])
        mods, post = {}, None
        dense_how = r.choice(["flatten(1)", "torch.flatten", "view", "reshape", "nn.Flatten"])
        pool_how = r.choice(["mean", "mean", "sum", "amax", "max[0]", "adaptive_avg", "adaptive_max",
                             "mean_relu_inplace", "torch.mean"])
        if kind in ("dense", "dense+pool"):
            mods["lin"] = nn.Linear(c * L, T)
            if dense_how == "nn.Flatten":
                mods["flatten"] = nn.Flatten()
        if kind in ("pool", "dict", "tuple", "dense+pool"):
            mods["lin_p"] = nn.Linear(c, T)
            if pool_how == "adaptive_avg":
                mods["pool"] = nn.AdaptiveAvgPool1d(1)
            elif pool_how == "adaptive_max":
                mods["pool"] = nn.AdaptiveMaxPool1d(1)
            elif pool_how == "mean_relu_inplace":
                mods["relu"] = nn.ReLU(inplace=True)
        if kind in ("profile", "dict", "tuple"):
            if r.random() < 0.5 or L < 10:
                mods["prof"] = nn.Conv1d(c, T, r.choice([1, 3, 5]), padding="same")
            else:
                mods["prof"] = nn.Conv1d(c, T, r.randint(1, 9), dilation=r.choice([1, 2]))
        if kind in ("dense", "pool", "profile") and r.random() < 0.3:
            post = r.choice(["relu_inplace", "relu_inplace", "F.relu_", "softplus"])
            if post == "relu_inplace":
                mods["post"] = nn.ReLU(inplace=True)
        head = Head(kind, mods, dense_how, pool_how, post)
        desc = {"dense": f"{dense_how} -> Linear({c}*{L}->{T})", "pool": f"{pool_how} -> Linear({c}->{T})",
                "profile": f"profile conv ({c}->{T}) per position",
                "dict": f"dict(profile=conv({c}->{T}), counts={pool_how} -> Linear)",
                "tuple": f"tuple(profile conv({c}->{T}), {pool_how} -> Linear)",
                "dense+pool": f"tuple({dense_how} -> Linear, {pool_how} -> Linear)"}[kind]
        if post:
            desc += f" -> {post}"
        return head, desc


BODY_WEIGHTS = [("conv", 30), ("padconv", 6), ("pool", 10), ("poolconv_branch", 4), ("bn", 7), ("act", 10),
                ("scale", 3), ("chanmix", 5), ("residual", 12), ("cat", 5), ("flip", 4), ("batchcat", 3),
                ("misc", 6)]


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
    settings = dict(n=r.choice([1, 2, 2]), saturation=seed % 4 == 0, static=r.random() < 0.5)
    return model, g.L0, layout, ops, settings

