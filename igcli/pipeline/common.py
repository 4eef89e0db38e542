"""What image and text jobs share: the job base class, targets, labels, and turning Explanations into records."""
from __future__ import annotations

import difflib
import math
import time
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator

from igcli.attribution.engine import Explanation, Quadrature, TargetSpec
from igcli.backends.base import ScoreKind
from igcli.backends.batching import BatchSize
from igcli.backends.loading import resolve_device
from igcli.config import Above, Config, Region, TopK
from igcli.data.discover import InputRef
from igcli.errors import MODEL_FAILURES, ConfigError  # noqa: F401 - MODEL_FAILURES named here too
from igcli.pipeline.metrics_hook import RecordMetrics
from igcli.pipeline.overlap import chunks_in_flight, points_per_chunk
from igcli.results.records import Attribution, Failure, Sample, TextSample
from igcli.runtime.buffers import MapBuffers
from igcli.runtime.options import RuntimeOptions

# What a model's forward or backward raises on inputs it cannot take (exported programs assert).

AnySample = Sample | TextSample
NONE_ABOVE = "no class has F(input) over target.above="  # how a multi-label fallback's warning begins
BASELINE_WARNING = "F(baseline)="  # how a record's baseline warning begins; the run's totals count them


class Job:
    """One input kind's way through a run: the model, its samples, and their records.

    What every kind shares is set up here, in this order: device, model (``_load_model``), labels,
    target, the kind's own preparation (``_prepare``), quadrature, chunks in flight, batch, chunk
    size. ``explain_samples`` groups the samples that can share batches (``_group_key``) and turns
    each group's Explanations into records; pipeline/run.py drives any job the same way.
    """

    runtime: str  # what runs the model: torch | onnxruntime (model.backend auto decides by model)
    retry_alone = False  # where the model fails on a group, explain each of its samples alone

    def __init__(self, config: Config, options: RuntimeOptions = RuntimeOptions()):
        self.options = options
        self.device = resolve_device(config.device)
        self.config = config = self._load_model(config)
        self.labels = read_labels(config.model.labels) if config.model.labels else self._model_labels()
        self.target = resolve_target(config.target, self.labels)
        self._prepare()
        steps = None if config.steps == "auto" else config.steps
        self.quadrature = Quadrature(config.method, steps, config.tolerance, config.min_steps, config.max_steps,
                                     config.map_tolerance)
        self.in_flight = chunks_in_flight(self.device, self.runtime, options.chunks_in_flight)
        # Lowered for the whole run on out-of-memory; shared by the chunks in flight.
        self.batch = BatchSize(points_per_chunk(self._batch_points(), self.in_flight, self.device))
        self.map_buffers = MapBuffers()  # the adaptive rule's stored maps, kept from chunk to chunk
        self.metrics = RecordMetrics(config, self.batch) if config.metrics else None
        # Inputs read ahead and explained together.
        self.chunk_size = self._inputs_per_chunk() if config.chunk_inputs == "auto" else config.chunk_inputs

    def _load_model(self, config: Config) -> Config:
        """Load the model; returns the config the job runs (a model source may fill input keys)."""
        raise NotImplementedError

    def _model_labels(self) -> list[str] | None:
        """The class names the model brings, where the config names no labels file."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """The kind's own set-up between the target and the batches (preprocessing, baselines)."""

    def _batch_points(self) -> int:
        """Path points per batch before the chunks in flight share them."""
        raise NotImplementedError

    def _inputs_per_chunk(self) -> int:
        """The chunk size for ``chunk_inputs: auto``."""
        raise NotImplementedError

    def read(self, refs: Iterable[InputRef]) -> Iterator[AnySample | Failure]:
        """Samples, or the Failure that says why an input could not be read."""
        raise NotImplementedError

    def check(self, sample: AnySample) -> None:
        """One forward on the first sample; raises ModelError/ConfigError before any work."""
        raise NotImplementedError

    def explain_samples(self, samples: list[AnySample]) -> list[list[Attribution | Failure]]:
        """Per sample, its records (several for top-k targets), in order."""
        results: list[list[Attribution | Failure]] = [[] for _ in samples]
        groups: dict[Hashable, list[int]] = {}
        for index, sample in enumerate(samples):
            groups.setdefault(self._group_key(sample), []).append(index)
        for indices in groups.values():
            self._explain_group([samples[i] for i in indices], [results[i] for i in indices])
        return results

    def _group_key(self, sample: AnySample) -> Hashable:
        """Samples with the same key go through the engine together, their path points sharing batches."""
        raise NotImplementedError

    def _explain_group(self, group: list[AnySample], results: list[list[Attribution | Failure]]) -> None:
        """Append each sample's records to its list in ``results``; where the model fails, a Failure
        for each sample of the group (or, with ``retry_alone``, each sample again alone, so that only
        the one it fails on is lost)."""
        clock = time.perf_counter()
        try:
            explanations, context = self._explain_together(group)
        except MODEL_FAILURES as error:
            if self.retry_alone and len(group) > 1:
                for sample, result in zip(group, results):
                    self._explain_group([sample], [result])
                return
            for sample, result in zip(group, results):
                result.append(model_failure(sample, error))
            return
        seconds = (time.perf_counter() - clock) / max(1, len(explanations))
        made = []
        for e in explanations:
            record = self._record(group[e.input_index], e, seconds, context)
            results[e.input_index].append(record)
            made.append((e.input_index, record))
        if self.metrics is not None:
            self._add_metrics(group, made)

    def _explain_together(self, group: list[AnySample]) -> tuple[list[Explanation], Any]:
        """The group's Explanations, and what ``_record`` needs of the group besides them."""
        raise NotImplementedError

    def _record(self, sample: AnySample, e: Explanation, seconds: float, context: Any) -> Attribution | Failure:
        raise NotImplementedError

    def _add_metrics(self, group: list[AnySample], records: list[tuple[int, Attribution | Failure]]) -> None:
        """The ``metrics`` of the group's records (pipeline/metrics_hook.py); records: (input index, record)."""
        raise NotImplementedError


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
        close = difflib.get_close_matches(target, labels, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"labels: {', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''}"
        raise ConfigError(f"target '{target}': not among the {len(labels)} labels in the labels file ({hint}); "
                          "a label name, a class index, predicted, or {top_k: k}")
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
