"""Body blocks of the generator: one ``block_*`` draw per kind (:data:`~fuzz.generator.BODY_WEIGHTS`).

Each draw picks a variant with the seed's random stream and appends it through ``try_add`` (which runs it on
the probe batch and refuses it when the shapes stop making sense); it returns whether the block was added.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import (AttentionPool, BatchCat, Cat, ChannelMix, Crop, FConv, Flip, FPad, FPool, Misc, Mixer,
                     PoolConvBranch, Residual, Scale, Seq, SqueezeExcite, rearrange)


class Body:
    """The body draws, mixed into :class:`~fuzz.generator.Gen` (which supplies ``rnd``, ``c``, ``L``, ``probe``,
    ``ch``, ``conv``, ``act`` and ``try_add``)."""

    def block_conv(self):
        r = self.rnd
        m, desc = self.conv()
        mods, descs = [m], [desc]
        if r.random() < 0.5:
            a, ad = self.act()
            mods.append(a)
            descs.append(ad)
        if r.random() < 0.3:                    # the container real models use (Seq: a ModuleList loop)
            return self.try_add(nn.Sequential(*mods), "nn.Sequential(" + ", ".join(descs) + ")")
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

    # ---------------------------------------------------------------- idioms of ported and larger models
    def block_fconv(self):
        r = self.rnd
        c, out, k, d = self.c, self.ch(), r.randint(1, 9), r.choice([1, 1, 2, 3])
        pad = r.choice(["same", "valid", r.randint(0, (d * (k - 1)) // 2 + 1)])
        rc = r.random() < 0.3
        desc = f"F.conv1d(x, weight ({out}, {c}, {k}), bias, padding={pad!r}, dilation={d})" + \
            (" averaged with its reverse-complement twin" if rc else "")
        return self.try_add(FConv(c, out, k, d, pad, rc), desc)

    def block_sepconv(self):
        r = self.rnd
        c, out, k, d = self.c, self.ch(), r.randint(2, 9), r.choice([1, 1, 2, 4])
        pad = r.choice(["same", "valid"])
        mods = [nn.Conv1d(c, c, k, padding=pad, dilation=d, groups=c), nn.Conv1d(c, out, 1)]
        descs = [f"depthwise Conv1d({c}->{c}, k={k}, d={d}, pad={pad!r}, g={c})", f"pointwise Conv1d({c}->{out}, 1)"]
        if r.random() < 0.5:
            a, ad = self.act()
            mods.insert(1, a)
            descs.insert(1, ad)
        return self.try_add(Seq(*mods), " -> ".join(descs))

    def block_crop(self):
        r = self.rnd
        a, b = r.randint(0, 4), r.randint(0, 4)
        if a + b == 0 or self.L - a - b < 3:
            return False
        how = r.choice(["slice", "neg", "narrow"])
        return self.try_add(Crop(a, b, how), f"crop {a} left, {b} right ({how})")

    def block_se(self):
        hidden = self.rnd.randint(2, 4)
        return self.try_add(SqueezeExcite(self.c, hidden),
                            f"squeeze-excite: x * sigmoid(Linear({hidden}->{self.c}) relu(Linear({self.c}->{hidden}) "
                            "x.mean(-1)))")

    def block_attnpool(self):
        if self.L < 8:
            return False
        return self.try_add(AttentionPool(self.c), f"attention pooling over pairs (conv 1x1 logits, {self.c} channels)")

    def block_upsample(self):
        r = self.rnd
        if self.L > 50:
            return False
        c, out, k = self.c, self.ch(), r.randint(2, 4)
        p = r.randint(0, (k - 1) // 2)
        return self.try_add(nn.ConvTranspose1d(c, out, k, stride=2, padding=p),
                            f"ConvTranspose1d({c}->{out}, k={k}, s=2, p={p})  # upsampling")
