"""Pictures of one sequence's ISM map: an A/C/G/T x position heatmap above a sequence logo.

The heatmap shows the score of every base at every position (diverging colour map, limits symmetric about
zero, the reference base marked with a dot); the logo shows the scores projected onto the observed bases,
letters above the axis for positive and below for negative scores.  Letters are drawn as filled glyph
outlines (matplotlib ``TextPath``), one compound path per base, so 1000 bp draw quickly.
"""
from __future__ import annotations

import numpy as np

ALPHABET = "ACGT"
COLORS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}   # green, blue, orange, red

_GLYPHS = {}


def _glyph(letter: str):
    """The letter's outline scaled to the unit square (cached)."""
    if letter not in _GLYPHS:
        from matplotlib.font_manager import FontProperties
        from matplotlib.path import Path
        from matplotlib.textpath import TextPath
        tp = TextPath((0, 0), letter, size=1, prop=FontProperties(family="DejaVu Sans", weight="bold"))
        v = tp.vertices.copy()
        lo, hi = v.min(0), v.max(0)
        v = (v - lo) / (hi - lo)
        _GLYPHS[letter] = Path(v, tp.codes)
    return _GLYPHS[letter]


def draw_logo(ax, scores: np.ndarray, start: int = 0, width: float = 0.9) -> None:
    """Draw a logo of ``scores`` (4, L) on ``ax``: each non-zero entry is a letter of that height.

    Positive scores stack upwards from 0 and negative ones downwards (tallest nearest the axis last).
    """
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path
    scores = np.asarray(scores, dtype=float)
    L = scores.shape[1]
    parts = {b: [] for b in ALPHABET}
    for sign in (1, -1):
        s = np.where(sign * scores > 0, np.abs(scores), 0.0)
        order = np.argsort(s, axis=0)                       # smallest first, stacked outward
        base = np.zeros(L)
        for k in range(4):
            idx = order[k]
            h = s[idx, np.arange(L)]
            for j in np.flatnonzero(h > 0):
                g = _glyph(ALPHABET[idx[j]])
                x0 = start + j - width / 2
                y0 = base[j] if sign > 0 else -base[j] - h[j]
                parts[ALPHABET[idx[j]]].append(Path(g.vertices * [width, h[j]] + [x0, y0], g.codes))
            base += h
    for b, paths in parts.items():
        if paths:
            ax.add_patch(PathPatch(Path.make_compound_path(*paths), facecolor=COLORS[b], edgecolor="none",
                                   linewidth=0))
    hi = np.clip(scores, 0, None).sum(0).max(initial=0)
    lo = np.clip(-scores, 0, None).sum(0).max(initial=0)
    pad = 0.08 * max(hi, lo) or 1.0
    ax.set_ylim(-lo - pad if lo > 0 else 0, hi + pad)
    ax.axhline(0, color="0.3", lw=0.5)


def plot_ism(heat: np.ndarray, onehot: np.ndarray, path: str, start: int = 0, title: str | None = None,
             dpi: int = 150, cmap: str = "RdBu_r"):
    """Heatmap of ``heat`` (4 or 1, L) above a logo of ``heat`` projected on ``onehot`` (4, L); save to ``path``.

    ``start`` is the sequence position of column 0 (for the x axis).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heat = np.asarray(heat, dtype=float)
    onehot = np.asarray(onehot, dtype=float)
    K, L = heat.shape
    proj = (heat if K == 4 else np.broadcast_to(heat, (4, L))) * onehot
    lim = float(np.abs(heat).max()) or 1.0
    width = float(np.clip(L * 0.05, 8, 30))
    fig, (ax_h, ax_l) = plt.subplots(2, 1, figsize=(width, 4.2), sharex=True,
                                     gridspec_kw=dict(height_ratios=[1, 1.3], hspace=0.08))
    x0, x1 = start - 0.5, start + L - 0.5
    im = ax_h.imshow(heat, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest",
                     extent=(x0, x1, K - 0.5, -0.5))
    ax_h.set_yticks(range(K))
    ax_h.set_yticklabels(list(ALPHABET) if K == 4 else ["Δ"])
    if K == 4:
        for i, b in enumerate(ALPHABET):
            ax_h.get_yticklabels()[i].set_color(COLORS[b])
            ax_h.get_yticklabels()[i].set_fontweight("bold")
        pos, base = np.nonzero(onehot.T)
        ms = float(np.clip(600.0 / L, 0.6, 5))
        ax_h.plot(start + pos, base, linestyle="none", marker="o", markersize=ms, color="black",
                  markeredgewidth=0, alpha=0.55, label="reference base")
    ax_h.set_ylabel("base")
    cb = fig.colorbar(im, ax=[ax_h, ax_l], fraction=0.012, pad=0.01, aspect=18)
    cb.set_label("ISM score")
    draw_logo(ax_l, proj, start=start)
    return finish_logo_figure(fig, ax_h, ax_l, (x0, x1), "score at\nreference base", "position", title, path, dpi)


def finish_logo_figure(fig, ax_h, ax_l, xlim, ylabel: str, xlabel: str, title, path, dpi: int):
    """Label the logo axes ``ax_l`` under the map ``ax_h``, title the figure, save it to ``path`` and close it."""
    ax_l.set_xlim(*xlim)
    ax_l.set_ylabel(ylabel)
    ax_l.set_xlabel(xlabel)
    for side in ("top", "right"):
        ax_l.spines[side].set_visible(False)
    if title:
        ax_h.set_title(title, loc="left", fontsize=11)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
