"""XRAI regions as images (docs/methods.md): the rank mask, and the top bands over the image.

The mask is the size of the image the model saw (not enlarged), one grey level per rank: rank 1
of N at 255, then evenly darker to the last at 40 (distinct levels for up to 216 regions); rank 0,
a pixel no region ranks (a zero map), is black. The overlay greys the image and tints the regions
of each band: the top-ranked regions covering 10% of the image red, the next up to 20% orange, up
to 30% yellow; the rest is dimmed. It is enlarged as heatmaps are.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from igcli.results.heatmap import MIN_SIDE

BAND_FRACTIONS = (0.1, 0.2, 0.3)
BAND_COLOURS = np.array([[215, 25, 28], [253, 141, 60], [254, 217, 118]], dtype=np.float64)
BAND_OPACITY = 0.65
FIRST_LEVEL, LAST_LEVEL = 255, 40


def rank_mask(ranks: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8: the grey level of each pixel's rank; rank 0 (not ranked) black."""
    count = int(ranks.max())
    step = (FIRST_LEVEL - LAST_LEVEL) / max(1, count - 1)
    grey = np.where(ranks > 0, np.rint(FIRST_LEVEL - (ranks.astype(np.float64) - 1) * step), 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def region_images(pixels: np.ndarray, ranks: np.ndarray) -> dict[str, np.ndarray]:
    """The writer's images of ``ranks`` [H, W] for ``pixels`` [C, H, W] in [0, 1], by output key."""
    return {"regions_mask": rank_mask(ranks), "regions_overlay": band_overlay(pixels, ranks)}


def band_overlay(pixels: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """[H', W', 3] uint8: the bands of BAND_FRACTIONS tinted over ``pixels`` [C, H, W] in [0, 1],
    enlarged as heatmaps are."""
    areas = np.bincount(ranks.ravel())[1:] / ranks.size
    counts = band_counts(areas, BAND_FRACTIONS)
    grey = np.repeat(pixels.mean(axis=0)[..., None] * 255.0, 3, axis=2)
    image = grey * 0.5  # outside every band
    band = np.full(ranks.shape, -1)
    for index, count in reversed(list(enumerate(counts))):
        band[(ranks >= 1) & (ranks <= count)] = index
    for index in range(len(counts)):
        inside = band == index
        image[inside] = grey[inside] * (1 - BAND_OPACITY) + BAND_COLOURS[index] * BAND_OPACITY
    picture = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode="RGB")
    factor = -(-MIN_SIDE // min(picture.size))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    return np.asarray(picture)


def band_counts(areas: np.ndarray, fractions: tuple[float, ...]) -> list[int]:
    """Per fraction f, how many of the top-ranked regions it takes to cover at least f of the image
    (the region that crosses f is included whole)."""
    covered = np.cumsum(areas)
    return [min(len(areas), int(np.searchsorted(covered, fraction - 1e-12)) + 1) for fraction in fractions]
