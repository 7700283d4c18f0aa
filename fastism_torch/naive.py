"""Naive ISM: one full forward pass per edit, batched (the oracle for :mod:`.fast`)."""
from __future__ import annotations

import time

import torch

from .base import ISMBase, log
from .common import check_output_shape, to_device


class NaiveISM(ISMBase):
    """Naive ISM: one full forward pass per edit, batched. The oracle for :class:`FastISM`.

    Same parameters and call API as :class:`FastISM` (``early_stop_layers`` and ``test_correctness`` do not
    apply).  On the CPU with ``batch_size=None`` the batch size is measured, not guessed: the first call with
    enough edits times real batches of each of :attr:`tune_sizes` (two in a row, the second timed: a new
    shape's first batch pays its set-ups; their outputs are kept) and goes on with the fastest per edit.
    Measured on a 2-core Zen 4, BPNet is fastest at 8-16 edits per batch (its activations then stay in cache;
    15-20% faster than 128) and Basset at 64-128.
    """

    #: batch sizes timed on the CPU when ``batch_size`` is None (two batches each, the second timed)
    tune_sizes = (8, 16, 32, 64, 128)

    def _run_edits(self, inp, ranges, edits, sinks, bar):
        E = len(edits.seq)
        width = ranges[0][1] - ranges[0][0]
        starts = torch.tensor([s for s, _ in ranges], device=self.device)
        offsets = torch.arange(width, device=self.device)
        idx = to_device({"seq": edits.seq, "window": edits.window, "dest": edits.dest}, self.device)
        bs = self._batch_size(tuple(inp.seq.shape[1:]))
        if bs is None and E < 2 * sum(self.tune_sizes):
            bs = self.default_batch_size          # too few edits to time every candidate: not worth tuning
        buf = torch.empty((min(bs or max(self.tune_sizes), max(E, 1)), *inp.seq.shape[1:]),
                          device=self.device)                                  # reused per batch

        def run(lo: int, hi: int) -> None:
            n = hi - lo
            s_idx = idx["seq"][lo:hi]
            x = torch.index_select(inp.seq, 0, s_idx, out=buf[:n])
            pos = starts[idx["window"][lo:hi]][:, None] + offsets
            self.rows(x)[torch.arange(n, device=self.device)[:, None], pos] = edits.values[lo:hi]
            args = [x if i == self.seq_input_idx else (a.index_select(0, s_idx) if isinstance(a, torch.Tensor) else a)
                    for i, a in enumerate(inp.args)]
            for sink, o in zip(sinks, self._forward(args)):
                check_output_shape(o, sink)
                sink.index_copy_(0, idx["dest"][lo:hi], o.to(sink.dtype))
            if bar is not None:
                bar.update(n)

        lo = 0
        if bs is None:                       # CPU, no batch size given: time each candidate on real edits
            per_edit = {}
            for size in self.tune_sizes:
                for _ in range(2):
                    hi = min(E, lo + size)
                    t0 = time.perf_counter()
                    run(lo, hi)
                    per_edit[size] = (time.perf_counter() - t0) / size     # the second, in-shape batch counts
                    lo = hi
            bs = min(per_edit, key=per_edit.get)
            self.__dict__.setdefault("_tuned", {})[tuple(inp.seq.shape[1:])] = bs
            log.info("NaiveISM: batch size %d (seconds per edit by batch size: %s)", bs,
                     {k: f"{v:.2e}" for k, v in per_edit.items()})
        for b0 in range(lo, E, bs):
            run(b0, min(E, b0 + bs))

    def _batch_size(self, shape: tuple) -> int | None:
        """The batch size to use, or None to measure it now (CPU, enough edits to time every candidate)."""
        if self.batch_size:
            return self.batch_size
        if self.device.type != "cpu":
            return self.default_batch_size
        return self.__dict__.setdefault("_tuned", {}).get(shape)
