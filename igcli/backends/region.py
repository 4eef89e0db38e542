"""Segmentation targets as a score head: a class's score summed over a region of the output's pixels.

A segmentation model outputs [B, classes, H, W]. The head turns that into F [B, R]: column r is
class k's per-pixel score (``score``: logits, softmax over the classes at each pixel, or sigmoid)
summed over region r. Each input of a batch gets its own region (the pixels its prediction gives
to class k), so the engine explains input n by column n (TargetSpec ``own_column``) and keeps its
one contract, scores [B, columns]. Tensors only: mask files are read by the job.
"""
from __future__ import annotations

from torch import Tensor

from igcli.backends.base import ScoreKind


def check_segmentation_output(outputs: Tensor, class_index: int) -> None:
    """Raises ValueError unless ``outputs`` is [B, classes, H, W] with class ``class_index`` in it."""
    if outputs.dim() != 4:
        raise ValueError(f"model output has shape {list(outputs.shape)}; a region target needs "
                         "[batch, classes, height, width]")
    if not 0 <= class_index < outputs.shape[1]:
        raise ValueError(f"target class {class_index}: the model outputs classes 0..{outputs.shape[1] - 1}")


def pixel_scores(outputs: Tensor, score: ScoreKind, class_index: int) -> Tensor:
    """Class ``class_index``'s score at every pixel, [B, H, W]."""
    if score is ScoreKind.softmax:
        return outputs.softmax(dim=1)[:, class_index]
    if score is ScoreKind.sigmoid:
        return outputs[:, class_index].sigmoid()
    return outputs[:, class_index]


def predicted_regions(outputs: Tensor, class_index: int) -> Tensor:
    """The pixels whose argmax over the classes is ``class_index``, [B, H, W] bool."""
    return outputs.argmax(dim=1) == class_index


class RegionHead:
    """Raw outputs [B, classes, H, W] -> F [B, R]: class ``class_index``'s score summed over each of
    ``masks`` [R, H, W]. A plain callable (no module, no state shared between batches), so that
    each chunk's head is its own (chunks run in threads)."""

    def __init__(self, class_index: int, score: ScoreKind, masks: Tensor):
        self.class_index, self.score = class_index, ScoreKind(score)
        self.masks = masks

    def __call__(self, outputs: Tensor) -> Tensor:
        check_segmentation_output(outputs, self.class_index)
        if tuple(outputs.shape[2:]) != tuple(self.masks.shape[1:]):
            raise ValueError(f"the region is {list(self.masks.shape[1:])} but the model's output is "
                             f"{list(outputs.shape[2:])} pixels")
        scores = pixel_scores(outputs, self.score, self.class_index).flatten(1)
        weights = self.masks.flatten(1).to(scores.device, scores.dtype)
        return scores @ weights.T


def raw_outputs(outputs: Tensor) -> Tensor:
    """The identity head: the model's outputs as they are (for checks)."""
    return outputs
