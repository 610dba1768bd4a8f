"""Matplotlib for segscale's figures: the churn model's evaluation plots (logged to MLflow) and the report's charts
draw through here, headless, at one resolution and in one palette. The colours of tiers, stages and risk bands are
declared with them (transforms/segments.py, models/churn.py); these are the colours of everything else."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

DPI = 100
RISK = "#c0392b"  # churn: the model's curves, the score distribution
VALUE = "#c8871a"  # money: predicted CLV
COUNT = "#4f86c6"  # plain counts and magnitudes: RFM segment sizes, feature importance
NEUTRAL = "#9a9a9a"  # what is spent rather than gained
QUALITY = "#8e6c8a"  # quarantined rows
REFERENCE = "grey"  # what a chart is read against: perfect calibration, a random ranking, a lift of 1
# Text drawn over a fill darker than this relative luminance is white, over a lighter one black.
DARK_BELOW = 0.3


@functools.cache
def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only: no display, no GUI toolkit), imported on first use so a
    command that draws nothing does not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    pyplot().close(fig)
    return buffer.getvalue()


def save_png(fig: Any, path: Path) -> Path:
    """Write the figure to `path` as PNG (closing it) and return the path."""
    path.write_bytes(png(fig))
    return path


def data_uri(fig: Any) -> str:
    """The figure as a `data:image/png;base64,...` URI, for a page that opens offline; the figure is closed."""
    return "data:image/png;base64," + base64.b64encode(png(fig)).decode("ascii")


def ink_on(colour: str) -> str:
    """The text colour readable on a fill of `colour`: white on a dark fill, black on a light one (WCAG relative
    luminance)."""
    from matplotlib.colors import to_rgb

    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in to_rgb(colour))
    return "white" if 0.2126 * red + 0.7152 * green + 0.0722 * blue < DARK_BELOW else "black"
