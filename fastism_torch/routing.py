"""When a :class:`~fastism_torch.fast.FastISM` call runs as naive ISM instead: the lazy engine (nothing is
built until a call's naive ISM would cost more than a build) and a built engine's cost model (few edits, or
little to reuse).  A mixin of FastISM: it reads the engine's state and methods (``gm``, ``infos``,
``_build_on_example``, ``_build``, ``_chunks``, ``_reference``, ``_run_edits``, ``_auto_batch``) and its class
switch ``naive_when_cheaper``; the costs themselves are :mod:`.costs`."""
from __future__ import annotations

import time

import numpy as np
import torch

from . import costs
from .base import log


class NaiveRouting:
    """Routing of calls to naive ISM (see the module docstring)."""

    def _init_routing(self, lazy: bool) -> None:
        """State of a new engine; ``lazy``: build at the first call that pays for it (with ``naive_when_cheaper``)."""
        self._lazy = lazy and self.naive_when_cheaper
        self._costs: dict = {}            # executor -> costs.PlanCosts: the cost model's inputs, once per engine
        self._naive = None                # the naive engine sharing this model (cost model, deterministic mode)
        self._told: set = set()           # reasons for running naive ISM already logged
        self._naive_ranges: set = set()   # ranges whose last call ran as naive ISM (their reference: a plain pass)
        self._naive_spent = 0.0           # seconds of naive ISM a lazy engine ran instead of building (timed warm)
        self._naive_edits = 0             # edits in _naive_spent
        self._ref_s_per_seq = 0.0         # a lazy engine's last plain reference pass, seconds per sequence
        self._warm = False                # a lazy engine's naive ISM has run once (first uses paid)
        self._setup_s = None              # costs.setup_estimate of the model, once (a walk over its modules)

    @property
    def _deferred(self) -> bool:
        """Not built, and building waits for a call that pays for it (:meth:`_run_lazy`)."""
        return self.gm is None and self._lazy and self.naive_when_cheaper

    def _run_naive(self, inp, ranges, edits, sinks, bar, why: str) -> None:
        """``edits`` by naive ISM (the model's own ops, sharing this engine's model), saying why once."""
        from .naive import NaiveISM
        if why not in self._told:
            self._told.add(why)
            log.warning("FastISM: %s; %d edits run by naive ISM instead (said once per engine)", why, len(edits.seq))
        if self._naive is None:
            self._naive = NaiveISM(self.model, self.seq_len, copy_model=False, batch_size=self.batch_size,
                                   **self.settings())
        self._naive._run_edits(inp, ranges, edits, sinks, bar)

    def _run_lazy(self, inp, ranges, edits, sinks, bar) -> None:
        """A call before the graph is built.  Where even the naive probe batches cannot fit the budget
        (:data:`.costs.LAZY_MARGIN` times the estimated set-up, :func:`.costs.setup_estimate`, less the naive ISM
        run so far) at :data:`.costs.NAIVE_BATCH_GAIN` of the reference pass's time per sequence per edit, build
        at once (a large model); so too where the whole call would cost :data:`.costs.LAZY_SURE` budgets even at
        that rate (a saturation of a large model).
        Until naive ISM has been timed warm, a call runs two batches of half :data:`.costs.LAZY_PROBE` edits by
        naive ISM, the second timed (the first pays the shapes' first-use costs, which a build would pay too), and
        the rest by naive ISM too if it fits; once timed, a call that fits runs by naive ISM whole, in naive ISM's
        own batches.  A build runs the rest in chunks of the engine's own size."""
        n = len(edits.seq)
        if self._setup_s is None:
            self._setup_s = costs.setup_estimate(self.model)
        budget = costs.LAZY_MARGIN * self._setup_s
        at_best = self._ref_s_per_seq * costs.NAIVE_BATCH_GAIN      # naive ISM's time per edit, at best
        if self._naive_edits:
            fits = self._naive_spent * (1 + n / self._naive_edits) < budget
            parts = [(0, n)] if fits else []
        elif self._naive_spent + at_best * n >= costs.LAZY_SURE * budget:
            parts = []                            # sure not to fit: build without probing
        elif self._naive_spent + at_best * min(n, costs.LAZY_PROBE) < budget:
            half = costs.LAZY_PROBE // 2
            parts = [(0, min(n, half)), (min(n, half), min(n, 2 * half)), (min(n, 2 * half), n)]
        else:
            parts = []
        done = 0
        for lo, hi in parts:
            if hi == lo:
                continue
            t0 = time.perf_counter()
            self._run_naive(inp, ranges, edits.subset(np.arange(lo, hi)), sinks, bar,
                            "naive ISM is cheaper for this call than building the fast engine (few edits or a "
                            "small model)")
            spent = time.perf_counter() - t0
            if self._warm:                             # (the engine's first batch pays for first uses)
                self._naive_spent += spent
                self._naive_edits += hi - lo
            self._warm, done = True, hi
            if hi < n and lo > 0 and self._naive_spent + spent / (hi - lo) * (n - hi) >= budget:
                break
        if done == n:
            return
        self._build_on_example()                  # as the constructor would have (two random sequences)
        if self.gm is None:                       # (a model that needs its other inputs: built on this call's)
            self._pattern = tuple(a is None for a in inp.args)
            self._build(inp)
        edits = edits.subset(np.arange(done, n))
        for lo, hi, chunk in self._chunks(inp):
            mine = np.flatnonzero((edits.seq >= lo) & (edits.seq < hi))
            if len(mine):
                part = edits.subset(mine)
                self._reference(chunk, ranges)           # the engine's caches (and the trace check)
                self._run_edits(chunk, ranges, part._replace(seq=part.seq - lo), sinks, bar)

    def _naive_is_cheaper(self, ex, n_edits: int) -> bool:
        """The cost model (CPU eager only, :func:`.costs.naive_is_cheaper`)."""
        if self.device.type != "cpu" or self.compile or ex.edit.static:
            return False
        if ex not in self._costs:
            from .macs import mac_summary
            macs = mac_summary(self.gm, self.infos, ex.plan)
            nodes = sum(len(m.graph.nodes) for m in ex.edit.module.modules() if isinstance(m, torch.fx.GraphModule))
            self._costs[ex] = costs.PlanCosts(macs["planned_macs_per_mutation"], macs["full_macs"], nodes,
                                              len(self.gm.graph.nodes), self._auto_batch(ex))
        return costs.naive_is_cheaper(self._costs[ex], n_edits, self.default_batch_size, torch.get_num_threads())
