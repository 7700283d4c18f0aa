"""Edits of several windows (``multi_edits``) against an independent naive loop: every window of an edit written
into the one-hot sequence, one plain forward pass of the model per edited sequence (self-check off)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch import models
from fastism_torch.multi import SUM, Job, plan_jobs, parse_edits, width_class

from helpers import NLC, Attention, profile_head, random_onehot, scale_weights, short_field

L = 64
ACGT = "ACGT"


def _pooling():
    """Basset-style: conv, BatchNorm, ReLU, max pooling, conv, pooling, flatten, dense layers."""
    return nn.Sequential(nn.Conv1d(4, 8, 7, padding=3), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                         nn.Linear(8 * L // 4, 16), nn.ReLU(), nn.Linear(16, 3))


FAMILIES = {
    "tiny": lambda: models.tiny(seq_len=L),
    "dilated_residual": lambda: models.dilated_residual(seq_len=L, n_layers=3, filters=8),
    "pooling_dense": lambda: scale_weights(_pooling()),
    "attention": lambda: scale_weights(Attention()),
}


def _model(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def _rows(values) -> torch.Tensor:
    """The oracle's own reading of a window's values: ``(w, 4)`` rows."""
    if isinstance(values, (int, np.integer)):
        return torch.eye(4)[[int(values)]]
    if isinstance(values, str):
        return torch.eye(4)[[ACGT.index(c) for c in values]]
    rows = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return rows[None] if rows.dim() == 1 else rows


def naive_multi(model, x: torch.Tensor, edits, between=None):
    """``(N, E, *out)`` per output by plain forward passes on explicitly edited NCL sequences; ``between``
    (a value): also overwrite the positions between an edit's windows with it (the wrong answer a hull that
    ignored the sequence's own bases there would give)."""
    batch = []
    for n in range(len(x)):
        for edit in edits:
            y = x[n].clone()
            wins = sorted((s, _rows(v)) for s, v in edit) if edit else []
            if between is not None and wins:
                y[:, wins[0][0]:wins[-1][0] + len(wins[-1][1])] = between
            for s, rows in wins:
                y[:, s:s + len(rows)] = rows.T
            batch.append(y)
    with torch.no_grad():
        outs = model(torch.stack(batch))
    outs = outs if isinstance(outs, tuple) else (outs,)
    res = tuple(o.reshape(len(x), len(edits), *o.shape[1:]) for o in outs)
    return res if len(res) > 1 else res[0]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_close(got, want, rtol=1e-5):
    for g, w in zip(_tuple(got), _tuple(want)):
        g, w = torch.as_tensor(g), torch.as_tensor(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        scale = float(w.abs().max())
        diff = float((g - w).abs().max())
        assert diff <= rtol * scale + 1e-6, f"max |got - naive| = {diff:.3g} at scale {scale:.3g}"


def _edits(x: torch.Tensor):
    """Windows at both ends, several windows, 0.25 rows, letters, an empty edit, an own base, and edits that
    share their leading windows (the mutant-sequence form's shared copies)."""
    own = int(x[0, :, 30].argmax())
    return [
        [(0, 2), (5, 1)],                                       # the first position
        [(L - 1, 3), (2, 0)],                                   # the last position (windows in any order)
        [(10, 1), (14, "GA"), (40, np.full((3, 4), 0.25))],     # three windows, letters, an N run
        [(20, np.array([0.1, -0.2, 0.3, 0.5]))],                # one row of any values
        [],                                                     # the reference
        [(30, own)],                                            # sequence 0's own base: its reference
        [(0, np.full((2, 4), 0.25)), (L - 2, "TT")],            # both ends at once: a hull of the whole sequence
        *[[(12, 3), (p, 2)] for p in (13, 25, 50, 63)],         # a shared first window, the second anywhere
        *[[(p, 1), (44, 0)] for p in (3, 30, 43)],              # a shared second window
    ]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("span", [None, 0, L], ids=["auto", "mutant_form", "hull_form"])
def test_multi_edits_match_naive(family, span):
    model, x = _model(family), random_onehot(3, L, seed=2)
    edits = _edits(x)
    want = naive_multi(model, x, edits)
    got = ft.FastISM(model, L, test_correctness=False).multi_edits(x.numpy(), edits, span=span, alphabet=ACGT)
    assert isinstance(_tuple(got)[0], np.ndarray)
    assert_close(got, want)
    assert_close(ft.NaiveISM(model, L).multi_edits(x, edits, span=span, alphabet=ACGT), want)
    spread = max(float((w - w[:, 4:5]).abs().max()) for w in _tuple(want))
    assert spread > 1e-2, "outputs barely move under the edits: the test checks nothing"


def _calls(ism):
    """Record ``(sequences in the call, window width, edits)`` of every engine call of ``ism``."""
    seen, run = [], ism._run_edits

    def spy(inp, ranges, edits, sinks, bar):
        seen.append((len(inp.seq), ranges[0][1] - ranges[0][0], len(edits.seq)))
        return run(inp, ranges, edits, sinks, bar)
    ism._run_edits = spy
    return seen


@pytest.mark.parametrize("engine", [ft.FastISM, ft.NaiveISM])
def test_span_forces_each_form(engine):
    model, x = _model("dilated_residual"), random_onehot(2, L, seed=2)
    edits = [[(12, 3), (p, 2)] for p in (20, 30, 40)]            # hulls of 9, 19 and 29 positions
    kw = {"test_correctness": False} if engine is ft.FastISM else {}
    ism = engine(model, L, **kw)
    seen = _calls(ism)
    got = ism.multi_edits(x, edits, span=L)
    assert sorted(w for _, w, _ in seen) == [width_class(h, L) for h in (9, 19, 29)]   # one call per width class
    assert all(n == 2 and e == 2 for n, _, e in seen)
    seen.clear()
    assert_close(ism.multi_edits(x, edits, span=0), got)
    assert seen == [(2, 1, 6)]           # one copy per sequence (the shared window 12), its three single edits
    seen.clear()
    ism.multi_edits(x, edits, span=19)
    assert sorted(seen) == [(2, 1, 2), (2, 10, 2), (2, 20, 2)]
    assert_close(got, naive_multi(model, x, edits))


def test_width_classes():
    got = [width_class(w, 1000) for w in (1, 2, 7, 8, 9, 11, 16, 17, 100, 200, 999)]
    assert got == [1, 2, 7, 8, 10, 12, 16, 20, 112, 224, 1000]
    assert [width_class(w, 1000, 1) for w in (1, 3, 5, 9, 100, 600)] == [1, 4, 8, 16, 128, 1000]
    assert all(w <= width_class(w, 1000) < 1.25 * w + 1 for w in range(1, 1001))


def test_plan_costs_choose_the_form(monkeypatch):
    """Default: a hull while its planned MACs per edit are at most the run window's plus its share of the copy's
    reference pass: close pairs run as hulls, many far pairs sharing one window run on that window's copy.  With
    the sum form allowed (this tower adds from 25 positions apart) the far pairs run as sums instead."""
    import fastism_torch.multi as multi
    monkeypatch.setattr(multi, "_reach", lambda ism, split: None)          # hulls and copies alone first
    model = _model("dilated_residual")
    ism = ft.FastISM(model, L, test_correctness=False)
    shared = [[(2, 1), (p, 0)] for p in range(30, 60)]
    edits = [[(20, 1), (22, 3)], [(5, 0), (60, 1)]] + shared
    jobs, leads = plan_jobs(ism, parse_edits(edits, 4, L), None)
    m = {w: ism.window_macs(w)[0] for w in (1, width_class(3, L), width_class(56, L))}
    full = ism.window_macs(1)[1]
    assert m[1] < m[width_class(3, L)] < m[width_class(56, L)] and m[width_class(56, L)] > m[1] + full / 30
    assert m[width_class(56, L)] < m[1] + full                          # (so the lone far pair is a hull)
    assert jobs[0] == Job(-1, jobs[0].run, 20, 3) and jobs[1].lead == -1
    assert {j.lead for j in jobs[2:]} == {0} and [w.start for w in leads[0]] == [2]
    assert [j.run[0].start for j in jobs[2:]] == list(range(30, 60))
    x = random_onehot(2, L, seed=4)
    assert_close(ism.multi_edits(x, edits), naive_multi(model, x, edits))
    assert all(j.lead == -1 for j in plan_jobs(ft.NaiveISM(model, L), parse_edits(edits, 4, L), None)[0])
    monkeypatch.undo()
    assert ism.plan_for(multi.every_window(1, L)).additive_from == 25
    jobs, leads = plan_jobs(ism, parse_edits(edits, 4, L), None)
    assert jobs[0].lead == -1 and {j.lead for j in jobs[1:]} == {SUM} and not leads
    assert_close(ism.multi_edits(x, edits), naive_multi(model, x, edits))


def test_hull_keeps_the_bases_between_windows():
    """The hull's values are the sequence's own rows with the windows written over them: writing anything else
    between the windows (here zeros or Ns) gives other outputs, which the result must not match."""
    model, x = _model("tiny"), random_onehot(2, L, seed=5)
    edits = [[(10, 0), (18, 3)], [(30, 2), (33, 1), (40, "AC")]]
    got = ft.FastISM(model, L, test_correctness=False).multi_edits(x, edits, span=L, alphabet=ACGT)
    want = naive_multi(model, x, edits)
    assert_close(got, want)
    for wrong in (0.0, 0.25):
        bad = naive_multi(model, x, edits, between=wrong)
        assert float((bad - want).abs().max()) > 1e-2 * float(want.abs().max())


def test_nlc_layout_static_kernels_and_tensor_output(kernel_form):
    base = _model("pooling_dense")
    x = random_onehot(2, L, seed=6)
    edits = _edits(x)
    ism = ft.FastISM(NLC(base), L, layout="NLC", test_correctness=False)
    for span in (0, L):
        got = ism.multi_edits(x.transpose(1, 2).contiguous(), edits, span=span, alphabet=ACGT)
        assert isinstance(got, torch.Tensor) and got.shape == (2, len(edits), 3)
        assert_close(got, naive_multi(base, x, edits))


def test_several_outputs_target_and_reduce():
    class TwoHeads(nn.Module):                  # a profile head and a counts head, like BPNet
        def __init__(self):
            super().__init__()
            self.conv, self.dil = nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=2, dilation=2)
            self.profile, self.counts = nn.Conv1d(8, 2, 5, padding=2), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            h = h + torch.relu(self.dil(h))
            return self.profile(h), self.counts(h.mean(-1))
    torch.manual_seed(0)
    model, x = scale_weights(TwoHeads()), random_onehot(2, L, seed=7)
    edits = _edits(x)
    ism = ft.FastISM(model, L, test_correctness=False)
    full = ism.multi_edits(x, edits, alphabet=ACGT, span=8)
    assert isinstance(full, tuple) and full[0].shape == (2, len(edits), 2, L) and full[1].shape == (2, len(edits), 2)
    assert_close(full, naive_multi(model, x, edits))
    flat = torch.cat([f.flatten(2) for f in full], -1)
    assert_close(ism.multi_edits(x, edits, alphabet=ACGT, target=slice(3, 7)), flat[..., 3:7])
    assert_close(ism.multi_edits(x, edits, alphabet=ACGT, target=-1), flat[..., -1])
    delta = ism.multi_edits(x, edits, alphabet=ACGT, span=0, reduce=lambda outs, refs: outs[1] - refs[1])
    assert_close(delta, full[1] - full[1][:, 4:5])             # edit 4 is the reference


def test_other_model_inputs_follow_their_sequence():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = _model("tiny")

        def forward(self, x, s):
            return self.m(x) * s[:, None]
    model, x, s = Scaled(), random_onehot(3, L, seed=8), torch.tensor([1.0, -2.0, 3.0])
    edits = _edits(x)
    ism = ft.FastISM(model, L, test_correctness=False)
    want = naive_multi(lambda y: model(y, s.repeat_interleave(len(edits))), x, edits)
    for span in (None, 0, L):
        assert_close(ism.multi_edits([x, s], edits, span=span, alphabet=ACGT), want)


def test_bad_edits_raise_one_line_errors():
    model, x = _model("tiny"), random_onehot(1, L)
    ism = ft.NaiveISM(model, L)
    bad = [
        ([[(3, 1)], [(10, "AC"), (11, 2)]], ACGT, r"edit 1: windows 0 \[10, 12\) and 1 \[11, 12\) overlap"),
        ([[(5, 1), (3, np.zeros((3, 4)))]], None, r"edit 0: windows 1 \[3, 6\) and 0 \[5, 6\) overlap"),
        ([[(L - 1, "AC")]], ACGT, rf"edit 0, window 0 \[{L - 1}, {L + 1}\) is out of range \[0, {L}\)"),
        ([[(1, 0)], [(-1, 0)]], None, r"edit 1, window 0 \[-1, 0\) is out of range"),
        ([[(3, np.zeros((2, 5)))]], None, r"edit 0, window 0 \(start 3\): values must be .* \(w, 4\) array; got "
                                          r"shape \(2, 5\)"),
        ([[(3, np.zeros((0, 4)))]], None, r"got shape \(0, 4\)"),
        ([[(3, 4)]], None, r"edit 0, window 0 \(start 3\): base index 4 is out of range 0..3"),
        ([[(3, "A")]], None, r"letters 'A' need an alphabet"),
        ([[(3, "AN")]], ACGT, r"'AN' has letters outside the alphabet 'ACGT'"),
        ([[(3, [np.nan] * 4)]], None, r"non-finite"),
        ([[(3.0, 1)]], None, r"edit 0, window 0: start must be an int; got 3.0"),
        ([(3, 1), (5, 2)], None, r"edit 0, window 0: a window is a \(start, values\) pair; got 3"),   # no outer list
        ([[(3, 1)], 7], None, r"edit 1 must be a list of \(start, values\) windows; got int"),
        ([[(3, 1, 2)]], None, r"edit 0, window 0: a window is a \(start, values\) pair"),
        ([], None, r"edits must be a non-empty list"),
        ([[(3, 1)]], "ACG", r"alphabet must be a string of num_chars=4 letters"),
    ]
    for edits, alphabet, msg in bad:
        with pytest.raises(ValueError, match=msg) as err:
            ism.multi_edits(x, edits, alphabet=alphabet)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="span must be None or an int >= 0; got -1"):
        ism.multi_edits(x, [[(3, 1)]], span=-1)
    with pytest.raises(ValueError, match="FastISM or NaiveISM"):
        ft.multi_edits(model, x, [[(3, 1)]])
    with pytest.raises(ValueError, match=r"GiB.*target="):
        ism.multi_edits(x, [[(3, 1)]], max_bytes=4)


def test_readme_example_motif_pair(monkeypatch):
    """The README's example on the bundled example model, against the naive loop."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.syspath_prepend(os.path.join(root, "examples"))
    from example_model import make_model

    from fastism_torch import inputs
    x = inputs.load_sequences(os.path.join(root, "examples", "example.fa")).onehot[:1].astype("float32")
    model = make_model()
    edits = [[], [(60, "GATAAG")], [(120, "CACGTG")], [(60, "GATAAG"), (120, "CACGTG")], [(182, 1), (184, 2)],
             [(180, np.full((6, 4), 0.25))]]
    y = ft.FastISM(model, seq_len=300).multi_edits(x, edits, alphabet="ACGT")
    assert isinstance(y, np.ndarray) and y.shape == (1, 6, 3)
    assert_close(y, naive_multi(model, torch.from_numpy(x), edits))
    assert float(np.abs(y[0, 3] - y[0, 0]).max()) > 0.5           # the motifs move the outputs


def test_window_macs_builds_a_lazy_engine(monkeypatch):
    """``FastISM.window_macs`` (the form choice's costs) on an engine that has not been built yet (the default
    without the self-check): it builds, and gives the built engine's numbers; wider windows cost more."""
    model = _model("dilated_residual")
    built = ft.FastISM(model, L, test_correctness=False)
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    lazy = ft.FastISM(model, L, test_correctness=False)
    assert lazy.gm is None
    assert lazy.window_macs(3) == built.window_macs(3)
    assert built.window_macs(1)[0] < built.window_macs(8)[0] < built.window_macs(8)[1]


@pytest.mark.parametrize("engine", [ft.FastISM, ft.NaiveISM])
def test_chunks_of_sequences_blocks_of_copies_and_progress(engine, monkeypatch):
    """Sequences in chunks of one and copies in blocks of two (several engine calls per form), against the
    naive loop; the progress bar counts every (sequence, edit) once."""
    import fastism_torch.multi as multi
    bars = []

    def progress(ism, total, verbose, desc):
        bars.append(multi_progress(ism, total, True, desc))
        return bars[-1]
    multi_progress = multi.progress
    monkeypatch.setattr(multi, "progress", progress)
    monkeypatch.setattr(multi, "_chunk_size", lambda *a: 1)
    model, x = _model("pooling_dense"), random_onehot(3, L, seed=9)
    edits = _edits(x)
    kw = {"test_correctness": False} if engine is ft.FastISM else {}
    ism = engine(model, L, **kw)
    monkeypatch.setattr(ism, "_seq_chunk", lambda: 2)
    want = naive_multi(model, x, edits)
    for span in (0, L):
        assert_close(ism.multi_edits(x, edits, span=span, alphabet=ACGT), want)
        assert bars[-1].n == bars[-1].total == 3 * len(edits)


def test_a_lazy_engine_builds_when_many_edits_share_a_copy(monkeypatch):
    """An engine not built yet (no self-check, the cost model on) runs every edit as a hull, unless enough edits
    share one copy (a motif pair scan) for the mutant form to matter: then it builds and chooses by the plan."""
    import fastism_torch.multi as multi
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    model = _model("dilated_residual")
    scan = [[(2, "GATA"), (p, "CA")] for p in range(8, L - 2)]                 # 54 edits share (2, GATA)
    windows = parse_edits(scan, 4, L, ACGT)
    few = ft.FastISM(model, L, test_correctness=False)
    jobs, _ = plan_jobs(few, windows, None, n_seqs=1)                           # 54 < SHARED_BUILD: hulls
    assert few.gm is None and all(j.lead == -1 for j in jobs)
    many = ft.FastISM(model, L, test_correctness=False)
    jobs, leads = plan_jobs(many, windows, None, n_seqs=2)                      # 108 >= SHARED_BUILD: built
    assert multi.SHARED_BUILD == 64 and many.gm is not None
    assert [w.start for w in leads[0]] == [2] and sum(j.lead == 0 for j in jobs) > 10    # the far ones share it
    assert all(j.lead == SUM for j in jobs if j.run[-1].start >= 30)    # (or add, from 25 positions apart)
    x = random_onehot(2, L, seed=10)
    assert_close(many.multi_edits(x, scan, alphabet=ACGT), naive_multi(model, x, scan))


# ------------------------------------------------------------------------------------ sum form
FAR_EDITS = [[(5, 1), (30, 2)],                       # apart: a sum (both models' additive_from <= 7)
             [(5, 1), (40, 3)],                       # shares window (5, C) with the first
             [(5, "AC"), (40, 3), (60, 0)],           # three windows, one of two positions
             [(0, 3), (63, 1)],                       # both ends
             [(20, np.full((3, 4), 0.25)), (50, 2)],  # an N window
             [(5, 1), (8, 2)],                        # closer than additive_from: they interact, a hull
             []]


@pytest.mark.parametrize("make", [short_field, profile_head])
def test_sum_form_equals_naive_and_runs_each_window_once(make):
    """Edits whose windows lie at least the plan's additive_from apart run as sums of single-window changes:
    equal to the naive loop (raw outputs, a target, and a nonlinear reduce, which must apply after the sum);
    each distinct window runs once per sequence; a pair closer than additive_from still runs whole."""
    model, x = make(), random_onehot(3, L, seed=3)
    ism = ft.FastISM(model, L, test_correctness=False)
    jobs, _ = plan_jobs(ism, parse_edits(FAR_EDITS, 4, L, ACGT), None, n_seqs=3)
    assert [j.lead for j in jobs] == [SUM] * 5 + [-1, -1]
    seen = _calls(ism)
    got = ism.multi_edits(x, FAR_EDITS, alphabet=ACGT)
    want = naive_multi(model, x, FAR_EDITS)
    assert_close(got, want)
    distinct = {(s, tuple(_rows(v).flatten().tolist())) for edit in FAR_EDITS[:5] for s, v in edit}
    assert len(distinct) == 9                                # of 11 windows in the sum-form edits

    def changes(start, rows):                                # sequences a window changes (the others: reference)
        return sum(bool((x[n, :, start:start + len(rows)] != rows.T).any()) for n in range(len(x)))
    runs = sum(changes(s, torch.tensor(v).view(-1, 4)) for s, v in distinct)
    runs += sum(bool((x[n, :, 5] != torch.eye(4)[1]).any() or (x[n, :, 8] != torch.eye(4)[2]).any())
                for n in range(len(x)))                      # the close pair's hull
    assert sum(e for _, _, e in seen) == runs               # each distinct window once per sequence it changes
    flat = [w.flatten(0, 1) for w in _tuple(want)]
    refs = [w[:, -1:].expand_as(w).flatten(0, 1) for w in _tuple(want)]

    def reduce(outs, refs):                                  # a nonlinear reduction of every output
        return torch.cat([(o - r).abs().flatten(1).sum(1, keepdim=True) for o, r in zip(outs, refs)], 1)
    assert_close(ism.multi_edits(x, FAR_EDITS, alphabet=ACGT, reduce=reduce),
                 reduce(flat, refs).view(3, len(FAR_EDITS), -1))
    assert_close(ism.multi_edits(x, FAR_EDITS, alphabet=ACGT, target=1), flat_target(want, 1))
    spread = max(float((w - w[:, -1:]).abs().max()) for w in _tuple(want))
    assert spread > 1e-2, "outputs barely move under the edits: the test checks nothing"


def flat_target(want, t: int) -> torch.Tensor:
    """Output ``t`` of each row's outputs flattened and concatenated: ``(N, E)``."""
    return torch.cat([w.flatten(2) for w in _tuple(want)], 2)[..., t]


@pytest.mark.parametrize("make", [profile_head, lambda: short_field(head_relu=True), lambda: _model("pooling_dense")],
                         ids=["outputs", "relu_head", "basset_like"])
def test_sum_form_in_blocks_and_through_a_nonlinear_tail(make, monkeypatch):
    """Where a nonlinear op runs in full (a dense head with a ReLU, Basset-style flatten + dense layers) the sums
    run through the model's head and its tail, ``tail(h(ref) + sum_k dh_k)``; distinct windows beyond the block
    budget run in several blocks (same results, every edit counted once by the progress bar)."""
    import fastism_torch.multi as multi
    model, x = make(), random_onehot(2, L, seed=4)
    ism = ft.FastISM(model, L, test_correctness=False)
    edits = FAR_EDITS + [[(2, 0), (34, 3)], [(2, 0), (34, 3), (62, 1)]]       # wider apart (pooling_dense)
    jobs, _ = plan_jobs(ism, parse_edits(edits, 4, L, ACGT), None, n_seqs=2)
    assert [j.lead for j in jobs][-2:] == [SUM, SUM] and jobs[5].lead == -1
    monkeypatch.setattr(multi, "SUM_BYTES", 1)                    # one edit per block
    bars = []
    real_progress = multi.progress
    monkeypatch.setattr(multi, "progress", lambda *a: bars.append(real_progress(a[0], a[1], True, a[3])) or bars[-1])
    want = naive_multi(model, x, edits)
    assert_close(ism.multi_edits(x, edits, alphabet=ACGT), want)
    assert bars[-1].n == bars[-1].total == 2 * len(edits)
    assert_close(ism.multi_edits(x, edits, alphabet=ACGT, span=L), want)         # (hulls: the same values)
    spread = max(float((w[:, -1] - w[:, 6]).abs().max()) for w in _tuple(want))     # (edit 6: the reference)
    assert spread > 1e-3, "the far edit barely moves the outputs: the test checks nothing"


def test_no_sum_through_a_head_that_stacks_the_reverse_complement_on_the_batch():
    """A head that stacks each sequence and its flip along the batch axis has two rows per sequence where the
    model would split: no head and tail there, edits run whole (the fuzzer's seeds 549 and 1317 summed them)."""
    from fastism_torch import far_pairs

    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.out = nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            h = self.c1(x)
            h = torch.nn.functional.elu(self.c2(torch.cat([h, h.flip(-1)], 0)))
            a, b = h.chunk(2, 0)
            return self.out((a + b.flip(-1)).mean(-1))
    torch.manual_seed(0)
    model, x = scale_weights(Stacked()).eval(), random_onehot(2, L, seed=5)
    ism = ft.FastISM(model, L, test_correctness=False)
    ism(x)
    assert far_pairs.head_and_tail(ism) is None
    edits = [[(0, 2), (L - 1, 0)], [(3, 1), (40, 2)]]
    assert_close(ism.multi_edits(x, edits), naive_multi(model, x, edits))


def test_a_lazy_engine_builds_for_many_edits_of_several_windows(monkeypatch):
    """Many edits of several windows (MULTI_BUILD over all sequences) build a lazy engine for the form choice even
    where none share a copy, so that far windows can run as sums; fewer run as hulls, unbuilt."""
    import fastism_torch.multi as multi
    monkeypatch.setattr(ft.FastISM, "naive_when_cheaper", True)
    monkeypatch.setattr(multi, "MULTI_BUILD", 40)
    model = _model("dilated_residual")
    pairs = [[(p, 1), (p + 30, 2)] for p in range(0, 30)]                      # 30 far pairs, none shared
    windows = parse_edits(pairs, 4, L, ACGT)
    few = ft.FastISM(model, L, test_correctness=False)
    assert all(j.lead == -1 for j in plan_jobs(few, windows, None, n_seqs=1)[0]) and few.gm is None
    many = ft.FastISM(model, L, test_correctness=False)
    jobs, _ = plan_jobs(many, windows, None, n_seqs=2)
    assert many.gm is not None and all(j.lead == SUM for j in jobs)
    x = random_onehot(2, L, seed=11)
    assert_close(many.multi_edits(x, pairs), naive_multi(model, x, pairs))


def test_sums_are_planned_again_when_the_first_pass_finds_the_trace_wrong():
    """A trace that differs from the model is found on the first reference pass and the model becomes one op:
    edits planned as sums on the wrong trace must be planned again (they summed changes that interact)."""
    from test_setup import ViewAliasedInPlace
    model, x = scale_weights(ViewAliasedInPlace()), random_onehot(2, 20)
    ism = ft.FastISM(model, 20, test_correctness=False)
    edits = [[(0, 1), (19, 2)], [(1, 3), (18, 0)]]
    assert {j.lead for j in plan_jobs(ism, parse_edits(edits, 4, 20), None, 2)[0]} == {SUM}     # on the trace
    with pytest.warns(UserWarning, match="outputs differ from the model's"):
        got = ism.multi_edits(x, edits)
    assert_close(got, naive_multi(model, x, edits))
