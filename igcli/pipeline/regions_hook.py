"""``regions: xrai``: each image record's map summarised as ranked regions (attribution/xrai.py)
over segments of the image (data/segments.py); the writer draws them (results/regions_view.py)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from igcli.attribution.xrai import DILATION_RADIUS, MIN_NEW_PIXELS, channel_max, dilated_masks, rank_regions
from igcli.config import Config
from igcli.data.segments import felzenszwalb_segmentations, require_skimage, segmentation_settings
from igcli.results.records import Attribution, Sample
from igcli.results.regions_view import BAND_FRACTIONS, band_counts

MAX_LISTED = 50  # regions listed per record, from rank 1; ``count`` says how many there are


class RecordRegions:
    """Adds ``regions`` (and the rank image the writer draws) to image records."""

    def __init__(self) -> None:
        require_skimage()  # a missing optional extra fails the run before anything is written
        self._masks: tuple[Sample, np.ndarray] | None = None  # the last input's candidates: top-k records share them

    @staticmethod
    def of(config: Config) -> "RecordRegions | None":
        return RecordRegions() if config.regions == "xrai" else None

    def _candidates(self, sample: Sample) -> np.ndarray:
        if self._masks is None or self._masks[0] is not sample:  # held, so never a new sample at its address
            masks = dilated_masks(felzenszwalb_segmentations(sample.pixels.numpy()), DILATION_RADIUS)
            self._masks = (sample, masks)
        return self._masks[1]

    def annotate(self, record: Attribution) -> Attribution:
        attributions = record.attributions.numpy()
        ranked = rank_regions(channel_max(attributions), self._candidates(record.sample), MIN_NEW_PIXELS)
        warnings = []
        if not ranked.gains.any():  # no attribution: any order of the regions would be made up
            ranked = dataclasses.replace(ranked, ranks=np.zeros_like(ranked.ranks), gains=np.zeros(0), areas=np.zeros(0))
            warnings.append("regions: the map is zero (every region's gain is 0), so regions are not ranked")
        # Per rank, the map's own sum (over channels) within the region: the ranks' sums add up to attribution_sum.
        held = np.bincount(ranked.ranks.ravel(), weights=attributions.sum(0).ravel(), minlength=ranked.count + 1)[1:]
        listed = [{"rank": rank, "area": float(ranked.areas[rank - 1]), "gain": float(ranked.gains[rank - 1]),
                   "attribution": float(held[rank - 1])} for rank in range(1, min(ranked.count, MAX_LISTED) + 1)]
        bands = [{"top": fraction, "regions": count, "area": float(ranked.areas[:count].sum())}
                 for fraction, count in zip(BAND_FRACTIONS, band_counts(ranked.areas, BAND_FRACTIONS))]
        summary: dict[str, Any] = {
            "method": "xrai", "segmentation": segmentation_settings() | {"dilation_radius": DILATION_RADIUS},
            "min_new_pixels": MIN_NEW_PIXELS, "channels": "max", "count": ranked.count, "listed": len(listed),
            "bands": bands, "ranked": listed}
        return dataclasses.replace(record, details=record.details | {"regions": summary},
                                   region_ranks=ranked.ranks, warnings=record.warnings + warnings)
