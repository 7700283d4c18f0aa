"""Kernels of the fast path: gather-and-slice-assign and incremental linear updates (plain torch, any device).

Two forms of each: the CPU eager forms group edits by value (:func:`gather_window`, :func:`inc_linear`;
:mod:`.ops` registers them as ``torch.ops.fastism.*``), the static forms (:func:`gather_window_static`,
:func:`inc_linear_static`) never read tensor values on the host, for GPUs, ``torch.compile`` and CUDA graphs.
"""
from .gather import (assign_shifted, gather_window, gather_window_add, gather_window_static, inc_linear,  # noqa: F401
                     gather_window_delta, gather_window_delta_static, inc_linear_static, inc_mean_prefix,
                     narrow_window, to_cache, to_prefix_sums)
from .dense import linear, onednn_dense  # noqa: F401
