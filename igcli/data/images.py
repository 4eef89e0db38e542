"""Decode and preprocess one image file into a Sample; any failure is one InputError line."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from igcli.attribution.baselines import Normalization
from igcli.data.discover import DEFAULT_MAX_BYTES, InputRef, read_input
from igcli.data.previews import preview
from igcli.data.samples import Sample
from igcli.errors import InputError
from igcli.names import printable

Size = int | tuple[int, int] | None


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize (int: shorter side, keeping aspect; [H, W]: exact), centre-crop, mode, normalise."""

    mode: str = "RGB"
    resize: Size = None
    crop: Size = None
    normalization: Normalization = Normalization((0.0,), (1.0,))
    max_bytes: int = DEFAULT_MAX_BYTES  # input.max_bytes: larger files are refused unread
    resample: str = "bilinear"  # Pillow's resampling filter, by name


def read_image(ref: InputRef, prep: ImagePreprocess) -> Sample:
    """The image at ``ref`` as the model will see it."""
    data = read_input(ref, "an image", prep.max_bytes)
    image, preview, notes = open_image(ref, data, prep.mode)
    try:
        image = preprocess(image, prep)
    except ValueError as error:
        raise InputError(f"{ref.source}: {error}; adjust input.resize or input.crop") from None
    array = np.asarray(image, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array.reshape(image.height, image.width, -1)).permute(2, 0, 1).contiguous()
    return Sample(ref.source, ref.relpath, prep.normalization.apply(pixels), pixels, notes,
                  hashlib.sha256(data).hexdigest(), preview)


def open_image(ref: InputRef, data: bytes, mode: str) -> tuple[Image.Image, Image.Image, list[str]]:
    """Decode fully (so truncation shows here), apply EXIF orientation, convert to ``mode``; with
    the report's preview of the file (previews.file_preview) while it is decoded."""
    notes: list[str] = []
    if not data:
        raise InputError(f"{ref.source}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    notes.append(f"{opened.n_frames} frames; explained the first")
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                return _convert(image, mode), preview(image), notes
    except UnidentifiedImageError:
        raise InputError(f"{ref.source}: not an image Pillow can read (is it really {printable(ref.path.suffix) or 'an image'}?)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{ref.source}: image exceeds Pillow's pixel limit (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{ref.source}: corrupt or truncated image ({error})") from None


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == mode:
        return image.copy()
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        # Composite transparency over black, the same black as the default baseline.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit: scale to 8 bits rather than let Pillow clip everything above 255.
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((array / 257.0).round().clip(0, 255).astype(np.uint8))
    return image.convert(mode)


def preprocess(image: Image.Image, prep: ImagePreprocess) -> Image.Image:
    if prep.resize is not None:
        width, height = _resize_target(image.size, prep.resize)
        # Pillow's bomb guard covers the decoded size only; a 1x100000 image resized to a shorter
        # side of 224 would be 224x22,400,000 pixels.
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise ValueError(f"resizing {image.width}x{image.height} to {width}x{height} exceeds Pillow's pixel "
                             f"limit ({limit:,}, the decompression bomb guard)")
        image = image.resize((width, height), Image.Resampling[prep.resample.upper()])
    if prep.crop is not None:
        height, width = (prep.crop, prep.crop) if isinstance(prep.crop, int) else prep.crop
        if height > image.height or width > image.width:
            raise ValueError(f"crop {height}x{width} is larger than the resized image {image.height}x{image.width}")
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return image


def _resize_target(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if isinstance(resize, int):
        scale = resize / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return resize[1], resize[0]
