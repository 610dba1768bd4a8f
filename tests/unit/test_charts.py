"""segscale.charts (the matplotlib plumbing of the report and the churn model's evaluation plots) and the
declarations the charts colour by: tiers and stages (transforms/segments.py) and risk bands (models/churn.py)."""

from __future__ import annotations

import base64
import struct

import pytest

from segscale import charts
from segscale.models.churn import RISK_BAND_COLOURS, RISK_BANDS
from segscale.transforms.segments import (
    ACTIVE_STAGES,
    LIFECYCLE_STAGES,
    STAGE_COLOURS,
    TIER_COLOURS,
    TIER_LABELS,
    VALUE_TIERS,
)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_a_figure_becomes_a_data_uri_of_a_png_at_the_house_resolution_and_is_closed(tmp_path):
    plt = charts.pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1], color=charts.RISK)
    uri = charts.data_uri(fig)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert png_size(base64.b64decode(uri.removeprefix(prefix))) == (3 * charts.DPI, 2 * charts.DPI)
    assert not plt.fignum_exists(fig.number)

    fig, _ = plt.subplots(figsize=(2, 2))
    path = charts.save_png(fig, tmp_path / "f.png")
    assert png_size(path.read_bytes()) == (2 * charts.DPI, 2 * charts.DPI) and not plt.fignum_exists(fig.number)


@pytest.mark.parametrize(("fill", "ink"), [("#1f4e8c", "white"), ("#c0392b", "white"), ("#4f86c6", "white"),
                                           ("#c9d6e3", "black"), ("#e0a030", "black"), ("white", "black"),
                                           ("black", "white")])
def test_text_on_a_fill_is_white_on_dark_and_black_on_light(fill, ink):
    assert charts.ink_on(fill) == ink


def test_every_tier_stage_and_band_is_declared_with_its_label_and_colour():
    from matplotlib.colors import is_color_like

    assert list(TIER_LABELS) == list(TIER_COLOURS) == list(VALUE_TIERS)
    assert list(STAGE_COLOURS) == list(LIFECYCLE_STAGES) and set(ACTIVE_STAGES) < set(LIFECYCLE_STAGES)
    assert list(RISK_BAND_COLOURS) == list(RISK_BANDS)
    colours = [*TIER_COLOURS.values(), *STAGE_COLOURS.values(), *RISK_BAND_COLOURS.values()]
    assert all(is_color_like(c) for c in colours)
    assert len(set(TIER_COLOURS.values())) == len(VALUE_TIERS) and len(set(STAGE_COLOURS.values())) == 6
