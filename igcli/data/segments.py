"""Felzenszwalb segmentations of an image at several scales, the candidates of XRAI's regions
(attribution/xrai.py), made as PAIR saliency's XRAI makes them: the image scaled to [-1, 1] and
resized to 224 x 224 (the scales are tuned for that size), segmented, and the labels resized back.

scikit-image does the segmenting: the optional extra ``igcli[regions]``, imported only here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from igcli.errors import ConfigError

SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SIZE = 150
SEGMENT_SIZE = (224, 224)


def segmentation_settings() -> dict[str, Any]:
    """What the segmentations are, for records."""
    return {"algorithm": "felzenszwalb", "scales": list(SCALES), "sigma": SIGMA, "min_size": MIN_SIZE,
            "segmented_at": list(SEGMENT_SIZE)}


def require_skimage() -> None:
    """ConfigError unless scikit-image can be imported."""
    try:
        import skimage.segmentation  # noqa: F401, PLC0415
        import skimage.transform  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError("regions: xrai segments images with scikit-image, which is not installed; "
                          "pip install 'igcli[regions]' (or scikit-image), or remove regions") from None


def felzenszwalb_segmentations(pixels: np.ndarray) -> list[np.ndarray]:
    """One label image [H, W] per scale of SCALES, for ``pixels`` [C, H, W]."""
    from skimage.segmentation import felzenszwalb  # noqa: PLC0415 -- the optional extra
    from skimage.transform import resize  # noqa: PLC0415

    image = np.moveaxis(np.asarray(pixels, dtype=np.float64), 0, -1)  # [H, W, C]
    low, high = image.min(), image.max()
    # Min-max to [-1, 1]; a flat image is all -1 (the reference divides by zero there).
    image = (image - low) / (high - low) * 2 - 1 if high > low else np.full_like(image, -1.0)
    image = resize(image, SEGMENT_SIZE, order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    size = pixels.shape[-2:]
    return [resize(felzenszwalb(image, scale=scale, sigma=SIGMA, min_size=MIN_SIZE), size, order=0,
                   preserve_range=True, mode="constant", anti_aliasing=False).astype(int) for scale in SCALES]
