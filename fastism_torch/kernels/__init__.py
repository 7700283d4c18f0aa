"""Kernels of the fast path: gather-and-slice-assign (``index_copy``) and incremental linear updates."""
from .gather import gather_window, inc_linear, inc_mean, rows_cache, to_rows  # noqa: F401
