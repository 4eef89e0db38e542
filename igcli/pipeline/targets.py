"""Region (segmentation) targets on the job side: the mask file, each input's region, the record.

The attribution maths sees only a backend whose columns are region sums (backends/region.py) and
TargetSpec ``own_column``; here live the files and the words (docs/targets.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from igcli.backends.base import Backend, ScoreKind
from igcli.backends.batching import batched_scores
from igcli.backends.region import RegionHead, check_segmentation_output, predicted_regions, raw_outputs
from igcli.config import Region
from igcli.errors import ConfigError, ModelError, first_line
from igcli.results.records import Attribution

EMPTY_REGION = "empty region"  # how an empty region's warning begins


@dataclass(frozen=True)
class RegionTarget:
    """Class ``class_index`` summed over ``mask`` [H, W] (a file's), or over each input's
    predicted region where ``mask`` is None."""

    class_index: int
    score: ScoreKind
    mask: Tensor | None
    source: str  # "predicted" or the mask file

    def check(self, backend: Backend, x: Tensor) -> None:
        """One forward on ``x`` [1, ...]: the model must output [1, classes, H, W] holding the class,
        at the mask's size."""
        self.check_backend(backend)
        try:
            outputs = backend.with_head(raw_outputs).scores(x)
            check_segmentation_output(outputs, self.class_index)
        except ValueError as error:
            raise ModelError(f"target.region: {first_line(error)}") from None
        if self.mask is not None and tuple(self.mask.shape) != tuple(outputs.shape[2:]):
            raise ConfigError(f"{self.source}: the mask is {list(self.mask.shape)} pixels but the model's output is "
                              f"{list(outputs.shape[2:])}; save the mask at the output's size")

    @staticmethod
    def check_backend(backend: Backend) -> None:
        """Before anything runs: a region sum needs a backend that takes a score head (torch); an
        onnxruntime gradient graph differentiates the one score it was built with."""
        if not hasattr(backend, "with_head"):
            raise ConfigError("target.region needs model.backend: torch (an onnxruntime gradient graph "
                              "differentiates one fixed score, not a class summed over a region); set "
                              "model.backend: torch, which runs plain .onnx files too")

    def regions(self, backend: Backend, inputs: Tensor, batch_size: int) -> Tensor:
        """Each input's region [N, H, W] bool, fixed before any integration."""
        if self.mask is not None:
            return self.mask.expand((len(inputs),) + tuple(self.mask.shape))
        outputs = batched_scores(backend.with_head(raw_outputs), inputs.to(backend.device, backend.dtype), batch_size)
        return predicted_regions(outputs, self.class_index).cpu()

    def backend_for(self, backend: Backend, regions: Tensor) -> Backend:
        """``backend`` whose column n is the class's score summed over ``regions[n]``."""
        return backend.with_head(RegionHead(self.class_index, self.score, regions.to(backend.device)))

    def annotate(self, record: Attribution, region: Tensor, labels: list[str] | None) -> Attribution:
        """The record of input n's column n, told as the class and its region."""
        record.target = self.class_index
        record.label = labels[self.class_index] if labels else None
        record.region = region
        pixels = int(region.sum())
        record.details = record.details | {"region": {"source": self.source, "class": self.class_index,
                                                      "pixels": pixels, "shape": list(region.shape)}}
        if pixels == 0:
            record.warnings.append(f"{EMPTY_REGION}: class {self.class_index} is the argmax at no pixel of this "
                                   "input, so F is 0 and so are the attributions")
        return record


def region_target(target: Region, labels: list[str] | None, score: ScoreKind) -> RegionTarget:
    """The config's region target, its class resolved and its mask file read."""
    class_index = target.class_
    if isinstance(class_index, str):
        if labels is None or class_index not in labels:
            raise ConfigError(f"target.class '{class_index}': not a label; give a class index, or model.labels "
                              "with that label")
        class_index = labels.index(class_index)
    if target.region == "predicted":
        return RegionTarget(class_index, ScoreKind(score), None, "predicted")
    return RegionTarget(class_index, ScoreKind(score), read_mask(Path(target.region)), str(target.region))


def read_mask(path: Path) -> Tensor:
    """A region mask [H, W] bool from a .npy (any 2-D array: nonzero is in) or an image (nonzero
    grey level is in)."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read target.region as a mask ({first_line(error)}); give a .png or "
                          ".npy aligned to the model's output") from None
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ConfigError(f"{path}: target.region mask has shape {list(array.shape)}; expected [height, width]")
    return torch.from_numpy(array != 0)
