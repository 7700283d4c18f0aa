"""The heatmap + logo picture."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from fastism_torch import plot  # noqa: E402
from fastism_torch.cli import main  # noqa: E402

from _cli_helpers import EXAMPLE_FA, EXAMPLE_MODEL  # noqa: E402


def test_logo_letters_have_the_scores_heights():
    import matplotlib.pyplot as plt
    scores = np.zeros((4, 5))
    scores[0, 0], scores[2, 1], scores[3, 3] = 2.0, -1.0, 0.5
    fig, ax = plt.subplots()
    plot.draw_logo(ax, scores)
    by_color = {tuple(np.round(p.get_facecolor()[:3], 3)): p for p in ax.patches}
    assert len(ax.patches) == 3                              # one compound path per base present
    a = by_color[tuple(np.round(matplotlib.colors.to_rgb(plot.COLORS["A"]), 3))].get_path().vertices
    g = by_color[tuple(np.round(matplotlib.colors.to_rgb(plot.COLORS["G"]), 3))].get_path().vertices
    assert np.isclose(a[:, 1].min(), 0) and np.isclose(a[:, 1].max(), 2.0)
    assert np.isclose(g[:, 1].min(), -1.0) and np.isclose(g[:, 1].max(), 0)
    assert np.isclose(a[:, 0].min(), -0.45) and np.isclose(a[:, 0].max(), 0.45)
    lo, hi = ax.get_ylim()
    assert lo < -1.0 and hi > 2.0
    plt.close(fig)


def test_plot_ism_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    heat = rng.normal(size=(4, 1000))
    onehot = np.eye(4)[rng.integers(0, 4, 1000)].T
    out = plot.plot_ism(heat, onehot, str(tmp_path / "x.png"), start=0, title="t")
    img = matplotlib.image.imread(out)
    assert img.shape[1] > 3000                               # 1000 bp get a wide figure


def test_plot_command(tmp_path, capsys):
    prefix = str(tmp_path / "ex")
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", EXAMPLE_FA, "-o", prefix,
                 "--engine", "naive"]) == 0
    png = str(tmp_path / "ism.png")
    assert main(["plot", prefix + ".h5", "--seq", "chr1:10000-10300", "-o", png, "--start", "150",
                 "--end", "230"]) == 0
    assert matplotlib.image.imread(png).shape[0] > 100
    assert main(["plot", prefix + ".h5", "--seq", "nope", "-o", png]) == 1
    assert "is not in" in capsys.readouterr().err
    assert main(["plot", prefix + ".h5", "--start", "10", "--end", "400", "-o", png]) == 1
