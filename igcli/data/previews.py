"""Small copies of images for report.html's thumbnails.

An input's preview is made by its reader, which has the image decoded anyway, and travels with the
Sample: building the report then needs no second decode of every input (~1.6 ms for a 500x375
JPEG). ``igcli report`` rebuilds the same previews from the files, pixel for pixel.
"""
from __future__ import annotations

from PIL import Image, ImageOps

PREVIEW_SIDE = 64  # pixels, at most, on the longer side


def preview(image: Image.Image) -> Image.Image:
    """``image`` in L or RGB, reduced by a whole factor to at most PREVIEW_SIDE a side (a box filter
    by an integer: ~3x faster than resampling); an image that is one already comes back as it is."""
    image = image if image.mode in ("L", "RGB") else image.convert("RGB")
    factor = -(-max(image.size) // PREVIEW_SIDE)
    return image.reduce(factor) if factor > 1 else image


def file_preview(opened: Image.Image) -> Image.Image:
    """``preview`` of an image file as its reader sees it: the first frame, EXIF orientation applied."""
    return preview(ImageOps.exif_transpose(opened) or opened)
