"""What image and text jobs share: targets, labels, and turning Explanations into records."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch

from ..config import Config, TopK
from ..engine import Explanation, TargetSpec
from ..errors import ConfigError
from ..inputs.discover import InputRef
from ..records import Attribution, Failure, Sample, TextSample

# What a model's forward or backward raises on inputs it cannot take (exported programs assert).
MODEL_FAILURES = (RuntimeError, ValueError, AssertionError, TypeError, IndexError)

AnySample = Sample | TextSample
BASELINE_WARNING = "F(baseline)="  # how a record's baseline warning begins; the run's totals count them


class Job(Protocol):
    device: torch.device
    runtime: str  # what runs the model: torch | onnxruntime (model.backend auto decides by model)
    chunk_size: int  # inputs read ahead and explained together
    in_flight: int  # chunks explained at once (overlap.chunks_in_flight)

    def read(self, refs: Iterable[InputRef]) -> Iterator[AnySample | Failure]:
        """Samples, or the Failure that says why an input could not be read."""
        ...

    def check(self, sample: AnySample) -> None:
        """One forward on the first sample; raises ModelError/ConfigError before any work."""
        ...

    def explain(self, samples: list[AnySample]) -> list[list[Attribution | Failure]]:
        """Per sample, its records (several for top-k targets), in order."""
        ...


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read labels file ({error.strerror or error}); check model.labels") from None
    return [line.strip() for line in lines if line.strip()]


def resolve_target(target: int | TopK | str, labels: list[str] | None) -> TargetSpec:
    if isinstance(target, TopK):
        return TargetSpec("top_k", target.top_k)
    if isinstance(target, int):
        return TargetSpec("index", target)
    if target == "predicted":
        return TargetSpec("predicted")
    if labels is None:
        raise ConfigError(f"target '{target}': a label name needs model.labels (a file, one label per line)")
    if target not in labels:
        raise ConfigError(f"target '{target}': not among the {len(labels)} labels in the labels file")
    return TargetSpec("index", labels.index(target))


def check_classes(classes: int, labels: list[str] | None, target: TargetSpec) -> None:
    if labels is not None and len(labels) != classes:
        raise ConfigError(f"model.labels has {len(labels)} labels but the model outputs {classes} classes")
    if target.kind == "index" and not 0 <= target.value < classes:
        raise ConfigError(f"target {target.value}: the model outputs classes 0..{classes - 1}")


def to_record(sample: AnySample, e: Explanation, config: Config, labels: list[str] | None, seconds: float,
              details: dict[str, Any] | None = None) -> Attribution | Failure:
    """The record of one Explanation; NaN or Inf from the model make it a Failure instead."""
    numbers = (e.f_input, e.f_baseline, e.attribution_sum)
    # attribution_sum is NaN or infinite whenever an attribution is: no pass over the map is needed.
    if not all(math.isfinite(v) for v in numbers):
        message = f"{sample.source}: model output is NaN or Inf on this input or its path; no attribution"
        return Failure(sample.source, sample.relpath, "ModelError", message)
    section = config.baseline
    return Attribution(
        sample=sample, target=e.target, label=labels[e.target] if labels else None, rank=e.rank,
        score=config.model.score.value, f_input=e.f_input, f_baseline=e.f_baseline,
        attribution_sum=e.attribution_sum, abs_error=e.abs_error, rel_error=e.rel_error,
        tolerance=config.tolerance, converged=e.converged, steps=e.steps, gradient_evals=e.gradient_evals,
        rule=config.method.value, seconds=seconds, attributions=e.attributions,
        warnings=baseline_warnings(e, section.warn_ratio),
        baseline={"kind": section.kind.value, "samples": section.samples, "seed": section.seed},
        details=details or {},
    )


def baseline_warnings(e: Explanation, ratio: float) -> list[str]:
    if abs(e.f_baseline) <= ratio * abs(e.f_input):
        return []
    return [f"{BASELINE_WARNING}{e.f_baseline:.4g} is over {ratio:g} x F(input)={e.f_input:.4g} for class {e.target}: "
            "the baseline is not uninformative, so the attributions explain only F(input) - F(baseline)"]


def model_failure(sample: AnySample, error: BaseException) -> Failure:
    from ..errors import root_cause

    return Failure(sample.source, sample.relpath, "ModelError", f"{sample.source}: model failed ({root_cause(error)})")
