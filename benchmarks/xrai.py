"""XRAI regions per image on the sample digits: igcli's segmentation, dilation and greedy ranking
against PAIR saliency's XRAI on the same IG maps, and whether their rank images agree; then the same
on a 224 x 224 photo (scikit-image's cat) under a seeded random map, where the candidates are many.

    PYTHONPATH=. python benchmarks/xrai.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.attribution.xrai import channel_max, dilated_masks, rank_regions
from igcli.backends.loading import load_model
from igcli.data.segments import felzenszwalb_segmentations

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def main() -> None:
    import saliency.core as saliency  # noqa: PLC0415 -- the reference (test extra)

    paths = sorted((SAMPLE / "images").glob("*.png"))
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("L").resize((32, 32), Image.BILINEAR),
                                                   dtype=np.float32) / 255 for p in paths]))[:, None]
    x = (pixels - 0.5) / 0.5
    runner = load_model(SAMPLE / "models" / "digits_cnn_state.pt", str(SAMPLE / "models" / "digits_cnn.py")
                        + ":build_model", "softmax", torch.device("cpu"))
    explain = lambda: attribute(runner, x, torch.full_like(x, -1.0)[:, None], TargetSpec("predicted"),  # noqa: E731
                                Quadrature(Rule.adaptive), 128)
    explain()  # warm-up: the first call pays one-off set-up
    clock = time.perf_counter()
    maps = explain()
    ig = (time.perf_counter() - clock) / len(paths)
    times = {"segment": 0.0, "dilate": 0.0, "rank": 0.0, "saliency": 0.0}
    agree = 0
    for e in maps:
        image, attributions = pixels[e.input_index].numpy(), e.attributions.numpy()
        clock = time.perf_counter()
        labels = felzenszwalb_segmentations(image)
        times["segment"] += time.perf_counter() - clock
        clock = time.perf_counter()
        masks = dilated_masks(labels)
        times["dilate"] += time.perf_counter() - clock
        clock = time.perf_counter()
        ours = rank_regions(channel_max(attributions), masks)
        times["rank"] += time.perf_counter() - clock
        clock = time.perf_counter()
        theirs = saliency.XRAI().GetMaskWithDetails(
            np.moveaxis(image, 0, -1), None, base_attribution=np.moveaxis(attributions, 0, -1),
            extra_parameters=saliency.XRAIParameters(return_xrai_segments=True))
        times["saliency"] += time.perf_counter() - clock
        agree += bool((theirs.segments == ours.ranks).all())
    per_image = {key: f"{1000 * value / len(paths):.1f} ms" for key, value in times.items()}
    print(f"{len(paths)} images; IG (adaptive, batched) {1000 * ig:.1f} ms/image; igcli XRAI {per_image}; "
          f"rank images equal to saliency's: {agree}/{len(paths)}")
    photo()


def photo() -> None:
    import saliency.core as saliency  # noqa: PLC0415
    from skimage import data  # noqa: PLC0415

    image = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)), dtype=np.float64).transpose(2, 0, 1) / 255
    attributions = np.random.default_rng(0).normal(size=image.shape)
    clock = time.perf_counter()
    masks = dilated_masks(felzenszwalb_segmentations(image))
    ours = rank_regions(channel_max(attributions), masks)
    mine = time.perf_counter() - clock
    clock = time.perf_counter()
    theirs = saliency.XRAI().GetMaskWithDetails(
        np.moveaxis(image, 0, -1), None, base_attribution=np.moveaxis(attributions, 0, -1),
        extra_parameters=saliency.XRAIParameters(return_xrai_segments=True))
    reference = time.perf_counter() - clock
    print(f"224 x 224 photo, {len(masks)} candidates, {ours.count} regions: igcli {mine:.2f} s, saliency "
          f"{reference:.2f} s; rank images equal: {bool((theirs.segments == ours.ranks).all())}")


if __name__ == "__main__":
    main()
