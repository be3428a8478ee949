"""Plots are written as 256-colour palette PNGs (``swa_recipe/figures.py``): they look as
Matplotlib drew them and take about a third of its RGBA file, which keeps the committed study
under the tree's 6 MB (tests/test_tree_size.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from swa_recipe.figures import compact_png, save_png

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def a_plot():
    """A figure with what the project's plots hold: lines, markers, a shaded band, text."""
    fig, ax = plt.subplots(figsize=(4, 3))
    x = np.linspace(0, 1, 50)
    ax.plot(x, np.sin(6 * x), marker="o", ms=3, label="SWA")
    ax.plot(x, np.cos(6 * x), marker="s", ms=3, label="SGD")
    ax.fill_between(x, -0.2, 0.2, alpha=0.2, color="tab:green")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("test accuracy (%)")
    return fig


def rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_saved_plot_is_a_palette_png_that_looks_like_matplotlibs(tmp_path):
    fig = a_plot()
    try:
        rendered = io.BytesIO()
        fig.savefig(rendered, dpi=100, format="png")
        save_png(fig, str(tmp_path / "plot.png"), dpi=100)
    finally:
        plt.close(fig)
    original, compact = rendered.getvalue(), (tmp_path / "plot.png").read_bytes()
    with Image.open(io.BytesIO(compact)) as image:
        assert image.format == "PNG" and image.mode == "P"
    assert len(compact) < 0.6 * len(original), (len(compact), len(original))
    error = np.abs(rgb(compact) - rgb(original))
    assert error.shape == rgb(original).shape
    assert error.mean() < 1.0 and np.percentile(error, 99) <= 16, (error.mean(), error.max())


def test_few_colours_survive_exactly():
    """A picture with fewer colours than the palette comes back pixel for pixel."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, 10:] = (31, 119, 180)
    pixels[5:8] = (255, 255, 255)
    source = io.BytesIO()
    Image.fromarray(pixels).convert("RGBA").save(source, format="PNG")
    assert np.array_equal(rgb(compact_png(source.getvalue())), pixels.astype(np.int16))
