"""Input checks shared by every ISM engine.

Each check raises ``ValueError`` with a message that names the problem and the
offending values; nothing here touches a model.
"""
from __future__ import annotations

import numpy as np
import torch

LAYOUTS = ("NCL", "NLC")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    return layout


def as_tensor(x, name: str = "seqs") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as e:  # pragma: no cover - message only
        raise ValueError(f"{name} must be a numpy array or torch tensor; got {type(x).__name__}") from e


def check_seqs(x: torch.Tensor, seq_len: int, num_chars: int, layout: str) -> torch.Tensor:
    """Check a batch of one-hot-like sequences in ``layout``; return it as float32 tensor."""
    shape_txt = "(N, %d, %d)" % (num_chars, seq_len) if layout == "NCL" else "(N, %d, %d)" % (seq_len, num_chars)
    if x.dim() != 3:
        raise ValueError(
            f"seqs must have 3 dimensions {shape_txt} for layout {layout}; got shape {tuple(x.shape)}")
    c_axis, l_axis = (1, 2) if layout == "NCL" else (2, 1)
    if x.shape[l_axis] != seq_len:
        raise ValueError(
            f"seqs have length {x.shape[l_axis]} (axis {l_axis}) but the model was set up for seq_len={seq_len}; "
            f"expected {shape_txt} for layout {layout}, got {tuple(x.shape)}")
    if x.shape[c_axis] != num_chars:
        raise ValueError(
            f"seqs have alphabet size {x.shape[c_axis]} (axis {c_axis}) but num_chars={num_chars}; "
            f"expected {shape_txt} for layout {layout}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("seqs is empty (N=0)")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32,
                                                 torch.int64, torch.bool)):
        raise ValueError(f"seqs must be numeric; got dtype {x.dtype}")
    x = x.float() if x.dtype != torch.float32 else x
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"seqs contain non-finite values (NaN or inf), first at index {tuple(bad)}")
    return x


def default_ranges(seq_len: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(seq_len)]


def check_change_ranges(change_ranges, seq_len: int) -> tuple[tuple[int, int], ...]:
    """Windows ``(start, end)``, half-open, all of one width, inside ``[0, seq_len)``."""
    if change_ranges is None:
        return tuple(default_ranges(seq_len))
    ranges = []
    for i, r in enumerate(change_ranges):
        try:
            s, e = (int(v) for v in r)
        except Exception as exc:
            raise ValueError(f"change_ranges[{i}] must be a (start, end) pair of ints; got {r!r}") from exc
        if not (0 <= s < e <= seq_len):
            raise ValueError(
                f"change_ranges[{i}] = ({s}, {e}) is out of range: need 0 <= start < end <= seq_len={seq_len}")
        ranges.append((s, e))
    if not ranges:
        raise ValueError("change_ranges is empty")
    widths = sorted({e - s for s, e in ranges})
    if len(widths) > 1:
        raise ValueError(f"change_ranges must all have the same width; got widths {widths}")
    return tuple(ranges)


def check_replace_with(replace_with, width: int, num_chars: int) -> torch.Tensor:
    """Return the replacement as a ``(width, num_chars)`` float tensor."""
    if replace_with is None or (np.isscalar(replace_with) and float(replace_with) == 0):
        return torch.zeros(width, num_chars)
    if np.isscalar(replace_with):
        raise ValueError(
            f"replace_with must be 0, a length-{num_chars} vector or a ({width}, {num_chars}) array; "
            f"got the scalar {replace_with!r}")
    r = as_tensor(replace_with, "replace_with").float()
    if r.dim() == 1 and r.shape[0] == num_chars:
        r = r.unsqueeze(0).expand(width, num_chars)
    elif not (r.dim() == 2 and tuple(r.shape) == (width, num_chars)):
        raise ValueError(
            f"replace_with must be 0, a length-{num_chars} vector or a ({width}, {num_chars}) array "
            f"(width = change-range width {width}); got shape {tuple(r.shape)}")
    if not torch.isfinite(r).all():
        raise ValueError("replace_with contains non-finite values")
    return r.contiguous()

