"""Discovery order and image decoding: formats, preprocessing, and bad files as one-line errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igcli.attribution.baselines import Normalization
from igcli.data.discover import InputRef, discover_inputs
from igcli.data.images import ImagePreprocess, read_image
from igcli.errors import InputError
from igcli.results import report
from igcli.results.report import thumbnail

EXTENSIONS = (".png", ".jpg")


def make_tree(root: Path) -> None:
    for name in ["b.png", "a.jpg", "notes.txt", "sub/z.png", "sub/deeper/c.PNG", "a_sub/x.png"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_folders_are_walked_recursively_in_a_stable_order(tmp_path):
    make_tree(tmp_path)
    found = [ref.relpath for ref in discover_inputs([str(tmp_path)], EXTENSIONS)]
    assert found == ["a.jpg", "b.png", "a_sub/x.png", "sub/z.png", "sub/deeper/c.PNG"]


def test_globs_and_explicit_files(tmp_path):
    make_tree(tmp_path)
    found = list(discover_inputs([f"{tmp_path}/**/*.png", str(tmp_path / "notes.txt")], EXTENSIONS))
    assert [ref.relpath for ref in found] == ["a_sub/x.png", "b.png", "sub/z.png", "notes.txt"]
    assert found[-1].path == tmp_path / "notes.txt"  # named explicitly: kept, and reported if unreadable


def pixels_of(path: Path, prep: ImagePreprocess) -> np.ndarray:
    return read_image(InputRef(path, path.name), prep).pixels.numpy()


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("BMP", ".bmp"),
                                        ("TIFF", ".tif")])
def test_formats_decode_to_the_same_pixels(tmp_path, fmt, suffix):
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[5:15, 10:20] = (200, 100, 50)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(array).save(path, format=fmt, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
    pixels = pixels_of(path, ImagePreprocess(mode="RGB"))
    assert pixels.shape == (3, 20, 30)
    expected = array.transpose(2, 0, 1) / 255.0
    if fmt in ("JPEG", "WEBP"):  # lossy: close on average, ringing at the square's edges
        assert np.abs(pixels - expected).mean() < 0.02
    else:
        np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_resize_crop_mode_and_normalisation(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (80, 40), (255, 255, 255)).save(path)
    prep = ImagePreprocess(mode="L", resize=20, crop=(16, 16), normalization=Normalization((0.5,), (0.25,)))
    sample = read_image(InputRef(path, "wide.png"), prep)
    assert sample.pixels.shape == (1, 16, 16)
    torch.testing.assert_close(sample.x, torch.full((1, 16, 16), 2.0))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(path, exif=exif)
    assert pixels_of(path, ImagePreprocess()).shape == (3, 40, 20)


@pytest.mark.parametrize("name,mode,size,orientation", [
    ("wide.jpg", "RGB", (500, 375), 6), ("palette.png", "P", (90, 30), None), ("small.png", "L", (32, 32), None),
    ("alpha.png", "RGBA", (130, 64), None),
])
def test_the_readers_preview_is_the_reports_thumbnail_of_the_file(tmp_path, name, mode, size, orientation):
    """The report shows the preview a run's reader made, or (igcli report, --resume) one made from
    the file: the same page either way, so the two must be the same pixels."""
    path = tmp_path / name
    g = np.random.default_rng(0)
    image = Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(path, exif=exif) if orientation else image.save(path)
    sample = read_image(InputRef(path, name), ImagePreprocess(mode="L", resize=(32, 32)))
    assert sample.preview.mode in ("L", "RGB") and max(sample.preview.size) <= 64
    if orientation:  # turned as the model saw it: 375 wide, 500 high, reduced by 8 (rounding up)
        assert sample.preview.size == (47, 63)
    assert thumbnail(sample.preview) == report._file_thumbnail(path)


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    assert pixels_of(path, ImagePreprocess(mode="L")).max() == pytest.approx(1.0)


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image"),
    (None, "file not found"),
])
def test_bad_files_are_one_line_input_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        read_image(InputRef(path, "bad.png"), ImagePreprocess())
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_png_is_an_input_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_image(InputRef(path, "cut.png"), ImagePreprocess())
