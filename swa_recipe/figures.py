"""Plots as small PNG files: the study commits dozens of them (each run's ``curves.png``, every
landscape, ``study.png``) and the tracked tree must stay under 6 MB (``tests/test_tree_size.py``).
Matplotlib writes 4 bytes of RGBA a pixel; a plot holds a few dozen colours and their
anti-aliased edges, so a 256-colour palette keeps every line and label at about a third of the
size."""

from __future__ import annotations

import io
from typing import Any

PALETTE_COLOURS = 256


def compact_png(png: bytes) -> bytes:
    """``png`` (any PNG, usually Matplotlib's RGBA) as a 256-colour palette PNG. A plot's
    background is opaque, so alpha is dropped."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        palette = image.convert("RGB").quantize(colors=PALETTE_COLOURS)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_png(fig: Any, path: str, dpi: int) -> None:
    """Write Matplotlib figure ``fig`` to ``path`` as a compact PNG; ``path`` is normally
    ``atomic_save``'s temporary file, so the write stays complete or absent."""
    rendered = io.BytesIO()
    fig.savefig(rendered, dpi=dpi, format="png")
    with open(path, "wb") as fh:
        fh.write(compact_png(rendered.getvalue()))
