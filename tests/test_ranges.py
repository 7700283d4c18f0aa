"""ranges.py: window arithmetic (hull, window starts at the edges, forward maps)."""
from __future__ import annotations

import numpy as np

from fastism_torch.ranges import Window, hull, window_starts


def test_range_helpers():
    lo, hi = hull([(np.array([1, 5]), np.array([3, 6])), (np.array([2, 4]), np.array([4, 9]))])
    assert lo.tolist() == [1, 4] and hi.tolist() == [4, 9]
    s = window_starts(np.array([0, 5, 9]), np.array([2, 7, 10]), 4, 10)
    assert s.tolist() == [0, 5, 6]          # shifted inward at the right edge
    w = Window(5, 1, 2)
    assert [a.tolist() for a in w.forward(np.array([0, 10]), np.array([1, 11]), 12)] == [[0, 8], [3, 12]]
