"""Kernels of the fast path: gather-and-slice-assign and incremental linear updates (plain torch, any device);
:mod:`.ops` registers them as ``torch.ops.fastism.*`` custom ops for ``torch.compile``."""
from .gather import (assign_shifted, gather_window, inc_linear, inc_mean, narrow_window,  # noqa: F401
                     to_cache)
