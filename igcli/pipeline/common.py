"""What image and text jobs share: targets, labels, and turning Explanations into records."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch

from igcli.config import Above, Config, Region, TopK
from igcli.attribution.engine import Explanation, TargetSpec
from igcli.errors import ConfigError
from igcli.data.discover import InputRef
from igcli.backends.base import ScoreKind
from igcli.results.records import Attribution, Failure, Sample, TextSample

# What a model's forward or backward raises on inputs it cannot take (exported programs assert).
MODEL_FAILURES = (RuntimeError, ValueError, AssertionError, TypeError, IndexError)

AnySample = Sample | TextSample
NONE_ABOVE = "no class has F(input) over target.above="  # how a multi-label fallback's warning begins
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


def resolve_target(target: int | TopK | Above | Region | str, labels: list[str] | None) -> TargetSpec:
    if isinstance(target, TopK):
        return TargetSpec("top_k", target.top_k)
    if isinstance(target, Above):
        return TargetSpec("above", threshold=target.above)
    if isinstance(target, Region):
        return TargetSpec("own_column")  # the region's column of each input (pipeline/targets.py)
    if isinstance(target, int):
        return TargetSpec("index", target)
    if target == "predicted":
        return TargetSpec("predicted")
    if labels is None:
        raise ConfigError(f"target '{target}': a label name needs model.labels (a file, one label per line)")
    if target not in labels:
        raise ConfigError(f"target '{target}': not among the {len(labels)} labels in the labels file")
    return TargetSpec("index", labels.index(target))


def check_classes(classes: int, labels: list[str] | None, target: TargetSpec,
                  score: ScoreKind = ScoreKind.logits) -> None:
    if classes == 1 and score is ScoreKind.softmax:
        raise ConfigError("model.score softmax: the model has one output, and a softmax over one column is always 1 "
                          "(no attribution); set model.score: logits (F is the output) or sigmoid (one-logit "
                          "binary classifier)")
    if labels is not None and len(labels) != classes:
        raise ConfigError(f"model.labels has {len(labels)} labels but the model outputs {classes} classes")
    if target.kind == "index" and not 0 <= target.value < classes:
        raise ConfigError(f"target {target.value}: the model outputs classes 0..{classes - 1}")


def to_record(sample: AnySample, e: Explanation, config: Config, labels: list[str] | None, seconds: float,
              details: dict[str, Any] | None = None, classes: int | None = None,
              baseline_chosen: str | None = None) -> Attribution | Failure:
    """The record of one Explanation; NaN or Inf from the model make it a Failure instead.
    ``classes``: the model's output columns; F of a one-output model on logits is "output".
    ``baseline_chosen``: the constant baseline that ``baseline.kind: auto`` picked for this input."""
    numbers = (e.f_input, e.f_baseline, e.attribution_sum)
    # attribution_sum is NaN or infinite whenever an attribution is: no pass over the map is needed.
    if not all(math.isfinite(v) for v in numbers):
        message = f"{sample.source}: model output is NaN or Inf on this input or its path; no attribution"
        return Failure(sample.source, sample.relpath, "ModelError", message)
    section = config.baseline
    return Attribution(
        sample=sample, target=e.target, label=labels[e.target] if labels else None, rank=e.rank,
        score_kind=score_name(config.model.score, classes), f_input=e.f_input, f_baseline=e.f_baseline,
        attribution_sum=e.attribution_sum, abs_error=e.abs_error, rel_error=e.rel_error,
        tolerance=config.tolerance, converged=e.converged, steps=e.steps, gradient_evals=e.gradient_evals,
        stopped_by=e.stopped_by, map_error=e.map_error, within_noise=e.within_noise,
        map_tolerance=config.map_tolerance if e.map_error is not None else None,
        rule=config.method.value, seconds=seconds, attributions=e.attributions,
        warnings=baseline_warnings(e, config.model.score, section.warn_margin) + threshold_warnings(e, config.target),
        baseline={"kind": section.kind.value, "samples": section.samples, "seed": section.seed}
        | ({"chosen": baseline_chosen} if baseline_chosen is not None else {}),
        details=details or {},
    )


def score_name(score: ScoreKind, classes: int | None) -> str:
    """What F is, as records say it: the score kind, or "output" for a one-output model's raw output."""
    return "output" if classes == 1 and score is ScoreKind.logits else score.value


def threshold_warnings(e: Explanation, target: Any) -> list[str]:
    """A multi-label target whose input has no class over the threshold explains its top class (engine)."""
    if not isinstance(target, Above) or e.f_input > target.above:
        return []
    return [f"{NONE_ABOVE}{target.above:g}: this record explains the top class, F(input)={e.f_input:.4g}"]


def chance(score: ScoreKind, classes: int) -> float:
    """The target's probability at an uninformative baseline: 1/classes for a softmax over the
    classes (logits are judged by their softmax), 0.5 for a sigmoid (each class on its own)."""
    return 0.5 if score is ScoreKind.sigmoid else 1 / max(1, classes)


def baseline_warnings(e: Explanation, score: ScoreKind, margin: float) -> list[str]:
    """A warning when the target's probability at the baseline is more than ``margin`` above chance."""
    level = chance(score, e.classes)
    above = e.baseline_probability - level
    if not above > margin:  # NaN (no probability known) warns of nothing
        return []
    probability = f" (probability {e.baseline_probability:.3g})" if score is ScoreKind.logits else ""
    of = "for a sigmoid" if score is ScoreKind.sigmoid else f"1/{e.classes} classes"
    return [f"{BASELINE_WARNING}{e.f_baseline:.4g}{probability} for class {e.target} is {above:.3g} above chance "
            f"({level:.3g}, {of}; baseline.warn_margin {margin:g}): the baseline is not uninformative, so the "
            "attributions explain only F(input) - F(baseline); baseline.kind auto picks the least informative of "
            "black, white and the input's mean colour"]


def model_failure(sample: AnySample, error: BaseException) -> Failure:
    from igcli.errors import root_cause

    return Failure(sample.source, sample.relpath, "ModelError", f"{sample.source}: model failed ({root_cause(error)})")
