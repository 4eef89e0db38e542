"""XRAI regions (Kapishnikov et al., ICCV 2019): an attribution map summarised as image regions
ranked by how densely they hold attribution.

Candidates are segments of the image at several scales, each dilated (data/segments.py makes the
label images). The regions are chosen greedily: each step takes the candidate whose pixels not yet
covered have the highest mean attribution (the gain), among those that add at least
``min_new_pixels`` pixels; candidates that no longer do are dropped. The pixels no chosen region
covers form a last region. Ranks sort the chosen regions by gain, equal gains in the order chosen,
the last region after them all. This is PAIR saliency's XRAI ('full', area threshold 1), which
tests/test_xrai.py reproduces; docs/methods.md says how the outputs show it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_NEW_PIXELS = 50  # the reference's min_pixel_diff
DILATION_RADIUS = 5  # pixels, at the input's own size


@dataclass(frozen=True)
class RankedRegions:
    """``ranks`` [H, W]: each pixel's region rank, 1 the most attributed; ``gains`` and ``areas``
    per rank (index 0 is rank 1): the mean attribution over the region's pixels, and its share of
    the image."""

    ranks: np.ndarray
    gains: np.ndarray
    areas: np.ndarray

    @property
    def count(self) -> int:
        return len(self.gains)


def channel_max(attributions: np.ndarray) -> np.ndarray:
    """A [C, H, W] map as [H, W]: the largest attribution over the channels, as the reference
    aggregates colour channels."""
    return attributions.max(axis=0)


def disk_offsets(radius: int) -> np.ndarray:
    """[n, 2] (dy, dx) of the disk of ``radius``: dy^2 + dx^2 <= radius^2 (skimage's ``disk``)."""
    span = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    inside = dy**2 + dx**2 <= radius**2
    return np.stack([dy[inside], dx[inside]], axis=1)


def dilated_masks(segmentations: list[np.ndarray], radius: int = DILATION_RADIUS) -> np.ndarray:
    """[K, H, W] bool: every segment of every label image [H, W] (one or more), in order
    (segmentation, then label), each dilated by a disk of ``radius`` (pixels outside the image count as outside it)."""
    masks = []
    offsets = disk_offsets(radius) if radius > 0 else np.zeros((1, 2), dtype=int)
    for labels in segmentations:
        _, index = np.unique(labels, return_inverse=True)  # labels in ascending order as 0..n-1
        index = index.reshape(labels.shape)
        height, width = labels.shape
        grown = np.zeros((int(index.max()) + 1) * height * width, dtype=bool)
        # Flat positions: segment s at pixel p is s * pixels + p.
        segment_base = index * (height * width)
        pixel_ids = np.arange(height * width).reshape(height, width)
        for dy, dx in offsets:  # each pixel marks its segment at every pixel within the disk of it
            source = (slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx)))
            target = (slice(max(0, dy), height - max(0, -dy)), slice(max(0, dx), width - max(0, -dx)))
            grown[(segment_base[source] + pixel_ids[target]).ravel()] = True
        masks.append(grown.reshape(-1, height, width))
    return np.concatenate(masks)


def rank_regions(attributions: np.ndarray, masks: np.ndarray, min_new_pixels: int = MIN_NEW_PIXELS) -> RankedRegions:
    """XRAI's greedy selection over candidate ``masks`` [K, H, W] for a map ``attributions`` [H, W]."""
    shape = attributions.shape
    values = attributions.astype(np.float64).ravel()
    candidates = _first_of_each(masks.reshape(len(masks), -1))
    # Per candidate, its pixels not yet covered (ascending), their count and attribution sum. A choice
    # changes only the candidates that hold its new pixels: their lists shrink and are summed again.
    uncovered = [np.flatnonzero(row) for row in candidates]
    holders = np.packbits(candidates.T, axis=1)  # [pixels, K/8]: which candidates hold each pixel, as bits
    new_pixels = np.array([len(own) for own in uncovered], dtype=np.int64)
    # NumPy's own sum of the selected values, as the reference's mean takes it: float64 gains equal its own.
    sums = np.array([values[own].sum() for own in uncovered], dtype=np.float64)
    alive = np.ones(len(candidates), dtype=bool)
    covered = np.zeros(values.size, dtype=bool)
    chosen: list[np.ndarray] = []  # each chosen region's pixels
    gains: list[float] = []
    while True:
        alive &= new_pixels >= min_new_pixels
        if not alive.any():
            break
        gain = np.full(len(candidates), -np.inf)
        gain[alive] = sums[alive] / new_pixels[alive]
        best = int(np.argmax(gain))  # the first of equal gains, as the reference
        added = uncovered[best]
        chosen.append(added)
        gains.append(float(gain[best]))
        covered[added] = True
        alive[best] = False
        touched = np.unpackbits(np.bitwise_or.reduce(holders[added], axis=0), count=len(candidates)).astype(bool)
        for k in np.flatnonzero(alive & touched):
            own = uncovered[k] = uncovered[k][~covered[uncovered[k]]]
            new_pixels[k], sums[k] = len(own), values[own].sum()
    order = np.argsort(-np.asarray(gains), kind="stable")
    regions = [chosen[i] for i in order]
    region_gains = [gains[i] for i in order]
    if not covered.all():  # the rest, ranked last whatever its gain
        regions.append(np.flatnonzero(~covered))
        region_gains.append(float(values[regions[-1]].mean()))
    ranks = np.zeros(values.size, dtype=np.int32)
    for rank, region in enumerate(regions, start=1):
        ranks[region] = rank
    areas = np.array([len(region) / values.size for region in regions])
    return RankedRegions(ranks.reshape(shape), np.array(region_gains), areas)


def _first_of_each(rows: np.ndarray) -> np.ndarray:
    """``rows`` without empty rows and without repeats of an earlier row, in order. A repeat is
    chosen only after its first, which it then adds nothing to: dropping it changes nothing."""
    rows = rows[rows.any(1)]
    first: dict[bytes, int] = {}
    keep = [i for i, packed in enumerate(np.packbits(rows, axis=1)) if first.setdefault(packed.tobytes(), i) == i]
    return rows[keep]
