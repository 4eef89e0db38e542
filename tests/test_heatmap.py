import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from igcli.results.heatmap import MIN_SIDE, NEGATIVE, POSITIVE, percentile, render_bare, render_overlay, signed_map
from igcli.results.png import png_bytes


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


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_subnormal=False), min_size=1, max_size=300),
       st.one_of(st.sampled_from([0.0, 50.0, 99.0, 100.0]), st.floats(0, 100)))
def test_percentile_is_numpys_to_the_last_bit(values, q):
    values = np.array(values)
    assert percentile(values, q) == np.percentile(values, q)


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


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("shape,factor", [((32, 32), 8), ((28, 20), 10), ((224, 224), 2), ((300, 257), 1),
                                          ((1, 1), 1), ((1, 9), 3), ((9, 1), 3)])
def test_png_bytes_decode_to_the_same_pixels_as_the_heatmap(shape, factor):
    rng = np.random.default_rng(sum(shape))
    values = np.clip(rng.normal(0, 0.5, shape), -1, 1)
    pixels = rng.random((1, *shape))
    image = render_overlay(pixels, values, 0.6)
    small = np.asarray(image.resize(shape[::-1], Image.Resampling.NEAREST))
    enlarged = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    for rgb in (np.asarray(image), enlarged, enlarged[:, ::-1]):
        assert np.array_equal(_decoded(png_bytes(rgb)), rgb)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_png_bytes_round_trip_any_rgb_image(height, width, seed, repeat_share):
    """Rows that repeat the row above (Up filter), wrap-around differences (Sub), any size."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for row in range(1, height):
        if rng.random() < repeat_share:
            rgb[row] = rgb[row - 1]
    assert np.array_equal(_decoded(png_bytes(rgb)), rgb)
    assert np.array_equal(_decoded(png_bytes(rgb[:, ::-1])), rgb[:, ::-1])  # a non-contiguous view


def test_png_bytes_refuses_what_is_not_8_bit_rgb():
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 3), dtype=np.float32))
