"""The picture of a pairwise map: the W x W map of the largest |epistasis| over base pairs, with the sequence
logo of the window (single-mutant ISM scores projected onto the observed bases) along the same positions."""
from __future__ import annotations

import numpy as np

from .plot import draw_logo, finish_logo_figure


def max_abs_epistasis(epistasis: np.ndarray) -> np.ndarray:
    """``(W, W)``: the largest ``|epistasis[i, a, j, b]|`` over the bases ``a, b`` (NaN on the diagonal)."""
    e = np.abs(np.asarray(epistasis, dtype=float))
    if e.ndim != 4 or e.shape[0] != e.shape[2] or e.shape[1] != e.shape[3]:
        raise ValueError(f"epistasis of one sequence has shape (W, C, W, C); got {e.shape}")
    with np.errstate(all="ignore"):
        m = np.nanmax(np.where(np.isnan(e), -np.inf, e), axis=(1, 3))
    m[~np.isfinite(m)] = np.nan
    return m


def plot_pairwise(epistasis: np.ndarray, ism: np.ndarray, onehot: np.ndarray, path: str, start: int = 0,
                  title: str | None = None, dpi: int = 150, cmap: str = "magma_r"):
    """Save the picture of one sequence's pairwise map to ``path``.

    Parameters
    ----------
    epistasis : ``(W, 4, W, 4)`` one value per double mutant (e.g. averaged over targets)
    ism : ``(4, W)`` single-mutant ISM scores of the window
    onehot : ``(4, W)`` the window's sequence
    path : image file (.png, .pdf, .svg)
    start : sequence position of the window's first column (the axes' labels)
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heat = max_abs_epistasis(epistasis)
    W = heat.shape[0]
    ism, onehot = np.asarray(ism, dtype=float), np.asarray(onehot, dtype=float)
    if ism.shape != (4, W) or onehot.shape != (4, W):
        raise ValueError(f"ism and onehot must be (4, W={W}); got {ism.shape}, {onehot.shape}")
    size = float(np.clip(W * 0.12, 5, 14))
    fig, (ax_h, ax_l) = plt.subplots(2, 1, figsize=(size * 1.1, size * 1.3), sharex=True,
                                     gridspec_kw=dict(height_ratios=[1, 0.25], hspace=0.05))
    ext = (start - 0.5, start + W - 0.5, start + W - 0.5, start - 0.5)
    vmax = float(np.nanmax(heat)) if np.isfinite(heat).any() else 1.0
    im = ax_h.imshow(heat, cmap=cmap, vmin=0, vmax=vmax or 1.0, extent=ext, interpolation="nearest",
                     aspect="equal")
    ax_h.set_ylabel("position i")
    cb = fig.colorbar(im, ax=[ax_h, ax_l], fraction=0.03, pad=0.02)
    cb.set_label("max |epistasis| over base pairs")
    draw_logo(ax_l, ism * onehot, start=start)
    return finish_logo_figure(fig, ax_h, ax_l, (ext[0], ext[1]), "ISM", "position j", title, path, dpi)
