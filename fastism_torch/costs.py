"""When naive ISM is cheaper than the fast path (CPU eager): the cost model :class:`~fastism_torch.FastISM` uses to
run a call as naive ISM, and the set-up estimate that keeps an engine lazy (nothing built) while its calls are
cheaper as naive ISM than a build.

Measured on the 2-core AMD EPYC, 1 thread, 2026-12-06: a small model's call (24 windows x 3 bases) costs the fast
path ~2 ms plus ~30 us per edit-graph node per batch, naive ISM ~15 us per model op per batch; products run at
30-40 GMAC/s per thread in both."""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

CPU_MACS_PER_S = 30e9
FAST_CALL_S = 2e-3
FAST_OP_S = 30e-6
NAIVE_OP_S = 15e-6
#: a lazy engine builds once naive ISM would spend this many times the estimated set-up (:func:`setup_estimate`):
#: calls cheaper than that run as naive ISM and never pay for a build.  At 1.5 a second full-saturation call of
#: gReLU's ConvGRU or Basenji2 (0.04-0.09 s of naive ISM) paid for the build (0.47-0.54x naive); at 3 the loss of a
#: user's many mid-sized calls before the build is at most ~3 set-ups (0.1-0.5 s)
LAZY_MARGIN = 3.0
#: edits of the first, timed naive batch of a lazy engine's call (the naive cost estimate)
LAZY_PROBE = 64
#: a lazy engine builds without probing when its call's naive ISM, at :data:`NAIVE_BATCH_GAIN`, would cost this many
#: times its budget.  The probe's naive edits then are a loss, and a call that starts after them cuts its batches
#: where later calls do not, so the second call paid its shapes' first uses again: bpnet-lite ChromBPNet (L=2114,
#: 2 sequences) took 10.0 s for its first call against 8.0 s for the engine before the lazy one (e0f64e5), of which
#: 0.6 s the probe's 64 edits.  Measured (AMD EPYC, 2 threads, 2026-12-06), a full saturation's estimate is
#: 4.6-22x its budget for Basset, Factorized Basset, BPNet and bpnet-lite ChromBPNet (L=1000-2114), 0.17-0.44x for
#: the third-party models of ``benchmarks/bench_few.py`` (L=200-512), which stay naive or build after the probe
LAZY_SURE = 2.0
#: naive ISM's time per edit is taken to be at least this share of a lone sequence's first forward pass (batching
#: and warm caches gain at most 50x): a lazy engine whose probe batches alone would not fit its budget even so builds
#: without them (64 forward passes of a large model would cost more than the build; gReLU's ConvGRU's cold first
#: pass, 30-50 ms, must not count as large)
NAIVE_BATCH_GAIN = 0.02


class PlanCosts(NamedTuple):
    """What the cost model needs of one engine (ranges), computed once."""
    planned_macs: float      # multiply-adds per edit of the plan's choice
    full_macs: float         # of one full forward pass
    edit_nodes: int          # nodes of the edit graph (its modules included)
    model_nodes: int         # nodes of the captured model
    batch: int               # edits per batch of the fast path


def naive_is_cheaper(c: PlanCosts, n_edits: int, naive_batch: int, threads: int) -> bool:
    """Seconds of the fast path (a fixed cost per call, a cost per edit-graph node per batch, the plan's
    multiply-adds) against naive ISM's (a cost per model op per batch of ``naive_batch``, full passes), both at
    :data:`CPU_MACS_PER_S` per thread."""
    rate = CPU_MACS_PER_S * threads
    fast = FAST_CALL_S + -(-n_edits // c.batch) * c.edit_nodes * FAST_OP_S + n_edits * c.planned_macs / rate
    naive = -(-n_edits // naive_batch) * c.model_nodes * NAIVE_OP_S + n_edits * c.full_macs / rate
    return naive < fast


def setup_estimate(model: nn.Module) -> float:
    """Seconds a build (capture, analysis, plan, edit graph) and its first call's overheads take, estimated from
    the model's leaf modules: 20 ms + 3 ms each, fitted to bpnet-lite BPNet and ChromBPNet, gReLU's dilated-conv
    and ConvGRU models and Basenji2 (12-46 leaves, 0.04-0.15 s; AMD EPYC, 2026-12-06)."""
    return 0.02 + 0.003 * sum(1 for m in model.modules() if next(m.children(), None) is None)
