import numpy as np
import pytest

from igcli.outputs.heatmap import MIN_SIDE, NEGATIVE, POSITIVE, render_bare, render_overlay, signed_map


def attributions():
    values = np.zeros((3, 4, 4))
    values[:, 0, 0] = 1.0  # positive
    values[:, 3, 3] = -0.5  # negative
    values[0, 1, 1] = 100.0  # one outlier, clipped by the percentile
    return values


def test_channels_summed_and_symmetrically_scaled():
    values = signed_map(attributions(), "all", 100)
    assert values[1, 1] == 1.0 and values[0, 0] == pytest.approx(0.03) and values[3, 3] == pytest.approx(-0.015)


def test_percentile_clipping_keeps_outliers_from_washing_out_the_rest():
    values = signed_map(attributions(), "all", 50)
    assert values[1, 1] == 1.0 and values[0, 0] == 1.0 and values[3, 3] == pytest.approx(-0.5)


@pytest.mark.parametrize("sign,expect_negative", [("positive", False), ("negative", True), ("absolute", False)])
def test_sign_selection(sign, expect_negative):
    values = signed_map(attributions(), sign, 100)
    assert (values < 0).any() == expect_negative
    if sign == "positive":
        assert values[3, 3] == 0


def test_colours_and_size():
    values = signed_map(attributions(), "all", 50)
    image = np.asarray(render_bare(values))
    assert image.shape == (MIN_SIDE, MIN_SIDE, 3)
    scale = MIN_SIDE // 4
    np.testing.assert_array_equal(image[0, 0], POSITIVE)  # full positive: pure red
    assert tuple(image[scale * 2, scale * 2]) == (255, 255, 255)  # zero: white
    blue = image[3 * scale, 3 * scale].astype(float)
    assert blue[2] > blue[0]  # negative leans blue
    overlay = np.asarray(render_overlay(np.zeros((1, 4, 4)), values, opacity=1.0))
    np.testing.assert_array_equal(overlay[0, 0], POSITIVE)
    assert tuple(overlay[scale * 2, scale * 2]) == (0, 0, 0)  # zero attribution: the image shows through
    assert NEGATIVE[2] > NEGATIVE[0]


def test_all_zero_attributions_render_blank():
    assert not signed_map(np.zeros((1, 3, 3)), "all", 99).any()
