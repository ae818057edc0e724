"""Overlays: the decision outline marks the anomalous region (also when it covers most of the image), the legend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from aaclip_hf.inference.visualize import (
    CONTOUR_COLOR,
    contour_overlay,
    detection_figure,
    region_edge,
    region_legend,
)


GREY = (10, 10, 10)


def _majority_region(size: int = 40) -> np.ndarray:
    """Anomalous everywhere except a small normal square: ~90% of the image is over the threshold."""
    region = np.ones((size, size), bool)
    region[15:27, 12:24] = False
    return region


def test_outline_of_a_majority_region_lies_on_the_region_not_around_the_normal_part():
    region = _majority_region()
    assert region.mean() > 0.5
    image = Image.new("RGB", region.shape[::-1], GREY)
    thickness = 2
    drawn = np.asarray(contour_overlay(image, region, thickness=thickness))
    outline = np.all(drawn == CONTOUR_COLOR, axis=-1)
    # Every outline pixel is an anomalous pixel within `thickness` of the normal part or of the image border.
    near_normal = ndimage.binary_dilation(~region, iterations=thickness)
    near_border = ~np.pad(np.ones((40 - 2 * thickness,) * 2, bool), thickness, constant_values=False)
    assert outline.any() and not (outline & ~region).any()
    assert not (outline & ~(near_normal | near_border)).any()
    # The normal part is left exactly as it was: no outline pixel, no shade, so it does not read as "the defect".
    np.testing.assert_array_equal(drawn[~region], np.broadcast_to(GREY, drawn[~region].shape))
    # The region is closed at the image border: the whole frame belongs to the outline (it encloses the region).
    frame = np.zeros_like(region)
    frame[0], frame[-1], frame[:, 0], frame[:, -1] = True, True, True, True
    assert outline[frame].all()
    # The inside of the anomalous region is shaded towards the outline colour (alpha 0.3): the anomalous side shows.
    inside = region & ~outline
    expected = np.round(0.7 * np.asarray(GREY, np.float32) + 0.3 * np.asarray(CONTOUR_COLOR, np.float32))
    assert inside.any()
    np.testing.assert_array_equal(drawn[inside], np.broadcast_to(expected, drawn[inside].shape))


def test_region_edge_is_the_band_inside_the_region():
    region = np.zeros((9, 9), bool)
    region[2:7, 2:7] = True
    edge = region_edge(region, 1)
    expected = region.copy()
    expected[3:6, 3:6] = False  # a one-pixel band on the region's own pixels
    np.testing.assert_array_equal(edge, expected)
    assert not region_edge(np.zeros((4, 4), bool), 1).any()
    np.testing.assert_array_equal(
        region_edge(np.ones((4, 4), bool), 1), ~np.pad(np.ones((2, 2), bool), 1, constant_values=False)
    )


def test_small_region_outline_and_empty_region():
    image = Image.new("RGB", (20, 20), GREY)
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    drawn = np.asarray(contour_overlay(image, region, thickness=1))
    outline = np.all(drawn == CONTOUR_COLOR, axis=-1)
    np.testing.assert_array_equal(outline, region_edge(region, 1))
    assert tuple(drawn[0, 0]) == GREY and tuple(drawn[10, 10]) != GREY
    untouched = np.asarray(contour_overlay(image, np.zeros((20, 20), bool)))
    np.testing.assert_array_equal(untouched, np.asarray(image))
    with pytest.raises(ValueError, match="shade"):
        contour_overlay(image, region, shade=1.5)


def test_legend_names_the_threshold_and_the_area():
    assert region_legend(0.5) == "outline = pixels that alone reach the threshold (probability 0.5)"
    assert (
        region_legend(0.4237, 0.875)
        == "outline = pixels that alone reach the threshold (probability 0.424), 87.5% of the image"
    )
    assert (
        region_legend(0.3, 0.25, fixed=True)
        == "outline = anomaly probability >= 0.3 (fixed level), 25.0% of the image"
    )
    assert "no decision region" in region_legend(None)


def test_figure_draws_the_legend_swatch_and_the_decision_panel():
    region = _majority_region()
    image = Image.new("RGB", region.shape[::-1], GREY)
    probability = np.where(region, 0.9, 0.1).astype(np.float32)
    figure = detection_figure(image, probability, region, "title", legend=region_legend(0.5, float(region.mean())))
    pixels = np.asarray(figure)
    side = 256  # a 40 px image is enlarged to 256 px panels
    gap = max(6, max(11, min(18, side // 16)) // 2)
    head = max(11, min(18, side // 16)) + 14
    third = pixels[head : head + side, 3 * gap + 2 * side : 3 * gap + 3 * side]
    outline = np.all(third == CONTOUR_COLOR, axis=-1)
    # In the panel (outlined at its own size) the normal square, enlarged 6.4x, is untouched grey.
    normal = np.asarray(Image.fromarray(~region).resize((side, side), Image.NEAREST)) > 0
    assert not (outline & normal).any() and np.all(third[normal] == GREY)
    # The legend strip under the third panel holds the outline-coloured swatch; the second one the colour bar.
    legend_strip = pixels[head + side :, 3 * gap + 2 * side :]
    assert np.all(legend_strip == CONTOUR_COLOR, axis=-1).any()
    bar_strip = pixels[head + side :, 2 * gap + side : 2 * gap + 2 * side]
    assert np.all(bar_strip == (0, 0, 128), axis=-1).any() and np.all(bar_strip == (128, 0, 0), axis=-1).any()
    with pytest.raises(ValueError, match="region"):
        detection_figure(image, probability, region[:5], "title")
