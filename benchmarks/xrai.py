"""XRAI regions per image on the sample digits: igcli's segmentation, dilation and greedy ranking
against PAIR saliency's XRAI on the same IG maps, and whether their rank images agree.

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
    clock = time.perf_counter()
    maps = attribute(runner, x, torch.full_like(x, -1.0)[:, None], TargetSpec("predicted"), Quadrature(Rule.adaptive), 128)
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


if __name__ == "__main__":
    main()
