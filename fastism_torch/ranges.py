"""Change-range arithmetic: pure integer maths on numpy arrays, no torch.

Every local op along the length axis is a *sliding window*: output position ``j`` reads input positions
``[j*stride - pad_left, j*stride - pad_left + extent)``.  Convolutions (any dilation, even or odd kernels,
'same'/'valid'/explicit/asymmetric padding), pooling (stride = kernel or not), padding and cropping are all
instances; so is the identity (extent 1, stride 1, pad 0).

A reversal of the length axis (``flip``, as in reverse-complement averaging) is the window of stride -1.

Ranges are half-open ``[lo, hi)``; arrays hold one range per mutation window.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """How a sliding op reads its input along the length axis."""
    extent: int          # receptive field of one output: dilation*(kernel-1)+1
    stride: int = 1
    pad_left: int = 0    # input position of output 0's first tap is -pad_left (negative pad = crop)
    pad_value: float = 0.0

    def forward(self, lo, hi, out_len: int):
        """Output positions whose window overlaps the changed input range ``[lo, hi)`` (clipped)."""
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        if self.reversed:
            return out_len - hi, out_len - lo
        s, e, p = self.stride, self.extent, self.pad_left
        # j*s - p < hi  and  j*s - p + e > lo
        out_lo = np.floor_divide(lo + p - e, s) + 1
        out_hi = -np.floor_divide(-(hi + p), s)          # ceil((hi + p) / s)
        out_lo = np.clip(out_lo, 0, out_len)
        out_hi = np.clip(out_hi, 0, out_len)
        return out_lo, np.maximum(out_hi, out_lo)

    def backward(self, start, width: int):
        """Input window ``(start, width)`` needed for outputs ``[start, start + width)`` (may leave [0, L))."""
        start = np.asarray(start, dtype=np.int64)
        if self.reversed:                     # outputs [c, c+W) read inputs L-c-W .. L-c-1, in reverse
            return -self.pad_left - start - width + 1, width
        return start * self.stride - self.pad_left, (width - 1) * self.stride + self.extent

    @property
    def reversed(self) -> bool:
        """A reversal of the length axis (reverse complement): stride -1, ``pad_left = -(L - 1)``."""
        return self.stride < 0

    @staticmethod
    def reversal(length: int) -> "Window":
        return Window(1, -1, -(length - 1))


IDENTITY = Window(1)


def hull(ranges):
    """Smallest range covering every ``(lo, hi)`` pair (element-wise over mutations)."""
    los = [lo for lo, hi in ranges if lo is not None]
    his = [hi for lo, hi in ranges if hi is not None]
    return np.minimum.reduce(los), np.maximum.reduce(his)


def window_starts(lo, hi, width: int, length: int, bounds: tuple | None = None):
    """Start of a ``width``-wide window that covers ``[lo, hi)`` and stays inside ``[0, length)`` (or inside
    ``bounds = (b0, b1)``, the positions that are needed at all).

    Windows are shifted inward at the edges (as the original fastISM does), so every mutation of a group
    has windows of one shape.
    """
    b0, b1 = bounds if bounds is not None else (0, length)
    width = min(width, b1 - b0)
    return np.clip(np.minimum(lo, b1 - width), b0, None)
