"""Running seeds: one seed's outcome (:func:`run_seed`), a range of them (:func:`run_seeds`), the report
(:func:`summary`, :func:`reproducer`) and the seeds a run takes from the environment (:func:`planned_seeds`).

Outcomes per seed:
  exact        FastISM equals NaiveISM (rtol 1e-5 of each output's scale, as ``helpers.assert_close_to_naive``)
  flat         equal, but the outputs barely move under mutation (the seed checks little): skipped
  noisy        differ beyond rtol, but no more than float32 NaiveISM differs from float64 NaiveISM (rounding
               in an ill-conditioned model, e.g. LayerNorm over 2 channels): not a failure
  unsupported  FastISM refuses the model (ValueError/NotImplementedError from construction or planning, or a
               RuntimeError from tracing): recorded with the exception's first line, not a failure
  WRONG        results differ: a wrong answer, the worst bug                                       -> FAIL
  INTERNAL     AssertionError/IndexError/KeyError/TypeError/AttributeError/NameError/ZeroDivisionError
               from inside fastism_torch; the captured graph failing to run (ShapeProp) on input the eager
               model runs on; any other exception from planning or running the edits          -> FAIL
  NAIVE_ERROR  NaiveISM fails on a model that runs eagerly                                         -> FAIL
  HARNESS_ERROR  the generator or these checks failed (a bug of tests/fuzz)                       -> FAIL
  known        a failure matching an entry of :data:`KNOWN_BUGS` (a bug found, reported and pinned by a strict
               xfail test that names it): counted and listed, not a failure of the run
"""
from __future__ import annotations

import collections
import copy
import os
import re
import time
import traceback
import warnings

import numpy as np
import torch
from torch import nn

import fastism_torch as ft
from fastism_torch.errors import UnsupportedOpWarning, first_line
from helpers import as_tuple, assert_close_to_naive, random_onehot, spread

from .generator import build

RTOL = 1e-5
MIN_SPREAD = 1e-6            # relative to the output scale: below it a seed is "flat" (skipped)
INTERNAL_TYPES = (AssertionError, IndexError, KeyError, TypeError, AttributeError, NameError, ZeroDivisionError)
FAIL_OUTCOMES = ("WRONG", "INTERNAL", "NAIVE_ERROR", "HARNESS_ERROR")
# Failures already found, reported and pinned by a strict xfail test in tests/test_fuzz.py (which fails once the
# bug is fixed: then delete the entry and the xfail mark).  Key: a pattern of "outcome: where detail".
KNOWN_BUGS: dict = {}         # regex of a failure -> its name (and the strict xfail test that pins it)
DELTA_MODES = (True, "always", True, False)    # FastISM(delta=...) by seed % 4: chosen per layer, everywhere, never
SEEDS_PER_RUN = 2000         # the default run: seeds FASTISM_FUZZ_START .. + FASTISM_FUZZ_SEEDS
REPRO = "FASTISM_FUZZ_SEED={seeds} .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py"


# =============================================================================== which seeds
def parse_seeds(text: str) -> list[int]:
    """``"7"``, ``"7,12"``, ``"100-199"`` or a mix -> the seeds, in order."""
    seeds = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"FASTISM_FUZZ_SEED: {part!r} is not a seed or a range a-b (in {text!r})")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def planned_seeds(env=os.environ) -> tuple[list[int], bool]:
    """The seeds of this run and whether they are a replay (``FASTISM_FUZZ_SEED``: print every architecture).

    ``FASTISM_FUZZ_SEED``  seeds to replay: ``1234``, ``1234,1300-1310`` (``FUZZ_ONLY`` is read too)
    ``FASTISM_FUZZ_START`` first seed of a run (default 0; ``FUZZ_SEED_START`` is read too)
    ``FASTISM_FUZZ_SEEDS`` seeds per run (default :data:`SEEDS_PER_RUN`; ``FUZZ_MAX`` is read too)
    """
    replay = env.get("FASTISM_FUZZ_SEED") or env.get("FUZZ_ONLY")
    if replay:
        return parse_seeds(replay), True
    start = int(env.get("FASTISM_FUZZ_START") or env.get("FUZZ_SEED_START") or 0)
    count = int(env.get("FASTISM_FUZZ_SEEDS") or env.get("FUZZ_MAX") or SEEDS_PER_RUN)
    return list(range(start, start + count)), False


# =============================================================================== running one seed
def _first_line(e: BaseException) -> str:
    return first_line(e)[:300]


def _where(e: BaseException) -> str:
    """Innermost fastism_torch frame of the traceback (file:line function)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "fastism_torch" in f.filename.replace("\\", "/")
              and "/tests/" not in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.split('fastism_torch')[-1].lstrip('/')}:{f.lineno} {f.name}"


def _raised_in_fastism(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and "/fastism_torch/" in frames[-1].filename.replace("\\", "/")


def _norm(msg: str) -> str:
    return re.sub(r"\d+", "#", msg)


def _stop_reasons(caught) -> list[str]:
    out = []
    for w in caught:
        if not issubclass(w.category, UnsupportedOpWarning):
            continue
        m = re.match(r"fastism_torch: .*? \((.*?)\): (.*?); it becomes a stop point", str(w.message))
        out.append(_norm(f"{m.group(1)}: {m.group(2)}" if m else str(w.message).splitlines()[0])[:200])
    return sorted(set(out))


def _compare(fast_out, naive_out):
    """None if equal within RTOL; else a description of the largest difference."""
    try:
        assert_close_to_naive(fast_out, naive_out, RTOL)
        return None
    except AssertionError as e:
        lines = [str(e) or "shape mismatch"]
        for i, (f, s) in enumerate(zip(as_tuple(fast_out), as_tuple(naive_out))):
            f, s = torch.as_tensor(f), torch.as_tensor(s)
            if f.shape != s.shape:
                lines.append(f"output {i}: shape {tuple(f.shape)} vs naive {tuple(s.shape)}")
                continue
            diff = (f - s).abs()
            scale = float(s.abs().max()) or 1.0
            bad = diff > RTOL * scale + 1e-7
            if bad.any():
                idx = bad.nonzero()
                rows = sorted({int(i) for i in idx[:, 1]}) if f.dim() > 1 else []
                lines.append(f"output {i} {tuple(f.shape)}: {int(bad.sum())} entries differ, max {float(diff.max()):.3g} "
                             f"at scale {scale:.3g}; first at index {tuple(idx[0].tolist())}; "
                             f"edit rows (dim 1) differing: {rows[:12]}{' ...' if len(rows) > 12 else ''}")
        return "\n".join(lines)


class _Float64(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = copy.deepcopy(model).double()

    def forward(self, x):
        return self.m(x.double())


def multi_edits_of(seed: int, L: int) -> tuple:
    """``(edits, span)`` for :meth:`FastISM.multi_edits` on seed ``seed``: double mutants near and far apart, both
    sequence ends, an N window, three windows; ``span`` cycles through the plan's choice, all mutant copies and all
    hulls."""
    r = np.random.default_rng(seed)
    base = lambda: int(r.integers(4))              # noqa: E731
    a = int(r.integers(0, max(1, L - 2)))
    edits = [[(a, base()), (min(L - 1, a + 1 + int(r.integers(0, 3))), base())], [(0, base()), (L - 1, base())],
             [(int(r.integers(0, L - 1)), np.full((2, 4), 0.25))]]
    if L >= 6:
        p = sorted(r.choice(L, 3, replace=False).tolist())
        edits.append([(int(q), base()) for q in p])
    return edits, (None, 0, L)[seed % 3]


def _rounding_only(model, L, layout, x, fast_out, saturation) -> bool:
    """A difference that float32 rounding explains: FastISM is no further from float64 naive ISM than float32
    naive ISM is (ill-conditioned models, e.g. a LayerNorm over 2 channels, amplify 1-ulp differences).
    ``saturation``: True (saturation mutagenesis), False (every position zeroed) or ``(edits, span)``
    (:meth:`FastISM.multi_edits`)."""
    if isinstance(saturation, tuple):
        run = lambda e: e.multi_edits(x, saturation[0])                      # noqa: E731
    else:
        run = (lambda e: e.saturation_mutagenesis(x)) if saturation else (lambda e: e(x))
    try:
        naive = run(ft.NaiveISM(model, L, layout=layout))
        exact = run(ft.NaiveISM(_Float64(model), L, layout=layout))
    except Exception:
        return False
    for f, n, t in zip(as_tuple(fast_out), as_tuple(naive), as_tuple(exact)):
        f, n, t = torch.as_tensor(f), torch.as_tensor(n), torch.as_tensor(t)
        if f.shape != t.shape:
            return False
        scale = float(t.abs().max()) or 1.0
        if float((f - t).abs().max()) > max(4 * float((n - t).abs().max()), RTOL * scale) + 1e-7:
            return False
    return True


def _refused(e: BaseException, phase: str) -> bool:
    """FastISM refusing a model is not a failure: a ValueError/NotImplementedError (an ill-defined ISM, an
    unsupported setting) or, at construction, a RuntimeError from tracing; anything else from inside
    fastism_torch, or the captured graph failing to run (ShapeProp) on input the eager model runs on, is."""
    if isinstance(e, INTERNAL_TYPES):
        return False
    if phase != "construction":
        return isinstance(e, (ValueError, NotImplementedError))
    frames = traceback.extract_tb(e.__traceback__)
    ran_graph = any(f.filename.endswith(("shape_prop.py", "interpreter.py")) for f in frames)
    return not ran_graph and not (isinstance(e, RuntimeError) and _raised_in_fastism(e))


def _outcome(model, L, layout, x, st, fast_out, naive_out, multi=None) -> tuple[str, str]:
    """(outcome, detail) of a seed whose engines both ran; ``*_out``: (ism, saturation or None, multi_edits or
    None); ``multi``: the seed's ``(edits, span)`` (:func:`multi_edits_of`)."""
    diff, phase, k = _compare(fast_out[0], naive_out[0]), "ism, zeroed positions", 0
    if diff is None and fast_out[1] is not None:
        diff, phase, k = _compare(fast_out[1], naive_out[1]), "saturation_mutagenesis", 1
    if diff is None and fast_out[2] is not None:
        diff, phase, k = _compare(fast_out[2], naive_out[2]), "multi_edits", 2
    if diff is not None:
        how = (False, True, multi)[k]
        noisy = _rounding_only(model, L, layout, x, fast_out[k], how)
        return ("noisy" if noisy else "WRONG"), f"[{phase}] {diff}"
    moved = spread(naive_out[0], relative=True)
    if moved < MIN_SPREAD:
        return "flat", f"relative spread {moved:.2g}"
    return "exact", ""


def run_seed(seed: int) -> dict:
    """Build seed ``seed``'s model and compare FastISM (self-check off) with NaiveISM on it."""
    t0 = time.perf_counter()
    model, L, layout, ops, st = build(seed)
    res = dict(seed=seed, L=L, layout=layout, ops=ops, model=model, settings=st, stops=[], detail="")
    x = random_onehot(st["n"], L, layout, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        phase = "construction"
        try:
            fast = ft.FastISM(model, L, layout=layout, test_correctness=False, delta=DELTA_MODES[seed % 4])
            fast.static_kernels = st["static"]
            try:           # the oracle runs the model itself: FastISM's private copy leaves it untouched
                naive = ft.NaiveISM(model, L, layout=layout, copy_model=False)
                multi = multi_edits_of(seed, L) if st.get("multi") and L >= 4 else None
                naive_out = (naive(x), naive.saturation_mutagenesis(x) if st["saturation"] else None,
                             naive.multi_edits(x, multi[0]) if multi else None)
            except Exception as e:
                res.update(outcome="NAIVE_ERROR", detail=_first_line(e), where=_where(e), tb=traceback.format_exc(),
                           t=time.perf_counter() - t0)
                return res
            phase = "ism"
            a = fast(x)
            phase = "saturation_mutagenesis"
            b = fast.saturation_mutagenesis(x) if st["saturation"] else None
            phase = "multi_edits"
            fast_out = (a, b, fast.multi_edits(x, multi[0], span=multi[1]) if multi else None)
        except Exception as e:          # construction / capture / analysis, or planning / rewriting / executing
            refused = _refused(e, phase) and phase != "multi_edits"      # (its single-window calls just ran)
            res.update(outcome="unsupported" if refused else "INTERNAL",
                       detail=("" if phase == "construction" else f"[{phase}] ") + _first_line(e), where=_where(e),
                       tb=traceback.format_exc(), stops=_stop_reasons(caught), t=time.perf_counter() - t0)
            return res
        res["stops"] = _stop_reasons(caught)
    outcome, detail = _outcome(model, L, layout, x, st, fast_out, naive_out, multi)
    res.update(outcome=outcome, detail=detail, t=time.perf_counter() - t0)
    return res


def known_bug(res: dict) -> str | None:
    """The :data:`KNOWN_BUGS` entry a failed seed matches, or None."""
    text = f"{res['outcome']}: {res.get('where', '')} {res['detail']}"
    return next((name for pat, name in KNOWN_BUGS.items() if re.search(pat, text)), None)


def run_seeds(seeds) -> list[dict]:
    """:func:`run_seed` for each seed on one thread (restored afterwards); a failure of the generator or of
    these checks is recorded as HARNESS_ERROR and the run goes on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        for seed in seeds:
            try:
                res = run_seed(seed)
                if res["outcome"] in FAIL_OUTCOMES and known_bug(res):
                    res.update(outcome="known", detail=f"known bug: {known_bug(res)}; {res['detail']}")
                results.append(res)
            except Exception as e:
                results.append(dict(seed=seed, L=0, layout="?", ops=[], model=None, settings=dict(
                    n=0, saturation=False, static=False), stops=[], outcome="HARNESS_ERROR", detail=_first_line(e),
                    tb=traceback.format_exc()))
    finally:
        torch.set_num_threads(threads)
    return results


# =============================================================================== the report
def reproducer(res: dict, traceback_too: bool = False) -> str:
    """One seed's outcome, architecture and the command that replays it."""
    st = res["settings"]
    lines = [f"--- seed {res['seed']}: {res['outcome']}  (L={res['L']}, layout={res['layout']}, n={st['n']}, "
             f"saturation={st['saturation']}, static_kernels={st['static']})",
             f"    {res['detail']}".replace("\n", "\n    ")]
    if res.get("where"):
        lines.append(f"    raised at fastism_torch/{res['where']}")
    lines.append("    ops:")
    lines += [f"      {i}. {op}" for i, op in enumerate(res["ops"])]
    if res["stops"]:
        lines.append("    stop points: " + "; ".join(res["stops"]))
    lines.append("    model: " + repr(res["model"]).replace("\n", "\n    "))
    lines.append("    re-run: " + REPRO.format(seeds=res["seed"]))
    if traceback_too and res.get("tb"):
        lines.append("    traceback:\n" + res["tb"])
    return "\n".join(lines)


def summary(results: list, elapsed: float) -> str:
    """Outcome counts, why seeds were refused, the stop points met, failures grouped by kind, the slowest seeds."""
    counts = collections.Counter(r["outcome"] for r in results)
    lines = [f"fuzz: {len(results)} seeds ({results[0]['seed']}..{results[-1]['seed']}) in {elapsed:.1f} s, "
             f"{1000 * elapsed / max(1, len(results)):.0f} ms per seed", "",
             f"  {'outcome':<12} {'seeds':>6}"]
    for k in ("exact", "flat", "noisy", "unsupported", "known", *FAIL_OUTCOMES):
        lines.append(f"  {k:<12} {counts.get(k, 0):>6}")
    uns = collections.Counter(_norm(r["detail"]) for r in results if r["outcome"] == "unsupported")
    if uns:
        lines += ["", "  unsupported reasons (seeds, reason, first seed):"]
        first = {}
        for r in results:
            if r["outcome"] == "unsupported":
                first.setdefault(_norm(r["detail"]), r["seed"])
        lines += [f"  {n:>5}  {k}  [seed {first[k]}]" for k, n in uns.most_common()]
    stops = collections.Counter(s for r in results for s in r["stops"])
    if stops:
        lines += ["", "  stop points (UnsupportedOpWarning) by op and reason (seeds):"]
        lines += [f"  {n:>5}  {k}" for k, n in stops.most_common()]
    known = collections.defaultdict(list)
    for r in results:
        if r["outcome"] == "known":
            known[r["detail"].split(";")[0]].append(r["seed"])
    if known:
        lines += ["", "  known bugs (KNOWN_BUGS; seeds):"]
        lines += [f"  {len(s):>5}  {k}  seeds {s[:10]}" for k, s in known.items()]
    fails = [r for r in results if r["outcome"] in FAIL_OUTCOMES]
    if fails:
        by = collections.defaultdict(list)
        for r in fails:
            first = r["detail"].splitlines()[0]
            if r["outcome"] == "WRONG":
                m = re.search(r"= ([\d.e+-]+) at scale ([\d.e+-]+)", first)
                rel = float(m.group(1)) / max(float(m.group(2)), 1e-30) if m else float("nan")
                key = f"WRONG: {first.split(']')[0]}], relative error {'>' if rel > 1e-3 else '<='} 1e-3"
            else:
                msg = re.sub(r"%\w+|'[^']*'", "…", first)
                key = r["outcome"] + ": " + (r.get("where") or "") + " " + _norm(msg)[:110]
            by[key].append(r["seed"])
        lines += ["", "  failures by kind (seeds):"]
        lines += [f"  {len(s):>5}  {k}  seeds {s[:10]}{' ...' if len(s) > 10 else ''}" for k, s in by.items()]
    slow = sorted(results, key=lambda r: -r.get("t", 0))[:3]
    lines += ["", "  slowest seeds: " + ", ".join(f"{r['seed']} ({r.get('t', 0):.2f} s)" for r in slow)]
    return "\n".join(lines)
