"""The one place that wires the stages: inputs -> baselines -> engine -> outputs."""
from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .baselines import BaselineKind, BaselinePlan, Normalization, make_baselines
from .config import Config, TopK, resolved
from .engine import Explanation, Quadrature, TargetSpec, explain
from .errors import ConfigError, InputError, ModelError, UsageError, first_line
from .inputs.discover import InputRef, discover_inputs
from .inputs.images import ImagePreprocess, read_image
from .models.base import Backend
from .models.loading import load_model, resolve_device
from .outputs.writer import RunWriter
from .records import Attribution, Failure, Sample, output_stem

log = logging.getLogger("igcli")

MAX_INPUTS_PER_CHUNK = 64
# What a model's forward or backward raises on inputs it cannot take (exported programs assert).
MODEL_FAILURES = (RuntimeError, ValueError, AssertionError, TypeError, IndexError)


@dataclass
class RunSummary:
    """Totals of a run; ``failed`` > 0 means exit code 1."""

    inputs: int = 0
    failed: int = 0
    records: int = 0
    not_converged: int = 0
    max_rel_error: float = 0.0
    steps: list[int] = field(default_factory=list)
    baseline_warnings: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "failed": self.failed, "records": self.records,
            "not_converged": self.not_converged, "max_rel_error": self.max_rel_error,
            "mean_steps": float(np.mean(self.steps)) if self.steps else None,
            "max_steps": max(self.steps) if self.steps else None,
            "baseline_warnings": self.baseline_warnings, "seconds": round(self.seconds, 3),
        }


@dataclass
class Plan:
    """Everything resolved from a Config before the first input is read."""

    backend: Backend
    labels: list[str] | None
    target: TargetSpec
    preprocess: ImagePreprocess
    baseline: BaselinePlan
    quadrature: Quadrature


def explain_inputs(
    config: Config, specs: Sequence[str], out_dir: Path | None, jsonl: str | None = None, progress: bool = False
) -> RunSummary:
    """Explain every input found from ``specs`` and write the outputs; returns the totals."""
    if out_dir is None and jsonl is None:
        raise UsageError("nowhere to write: give -o OUT_DIR and/or --jsonl PATH (or - for stdout)")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    plan = make_plan(config)
    refs = discover_inputs(specs, config.input.extensions)
    writer = RunWriter(out_dir, config.output, jsonl)
    summary = RunSummary()
    samples = _read_samples(refs, plan.preprocess, writer, summary)
    with tqdm(desc="explain", unit="input", disable=not progress) as bar:
        for index, chunk in enumerate(_chunks(samples, _inputs_per_chunk(config))):
            if index == 0:
                check_model(plan, chunk[0])
            _explain_chunk(chunk, plan, config, writer, summary)
            bar.update(len(chunk))
    if summary.inputs == 0:
        raise UsageError(f"no inputs found in {', '.join(specs)} (extensions: {' '.join(config.input.extensions)})")
    summary.seconds = time.perf_counter() - clock
    writer.finish(manifest(config, plan, summary, started))
    return summary


def make_plan(config: Config) -> Plan:
    """Load the model and resolve targets, preprocessing and baselines; fails before any input."""
    device = resolve_device(config.device)
    backend = load_model(config.model.path, config.model.factory, config.model.score, device, config.model.trust_pickle)
    labels = read_labels(config.model.labels) if config.model.labels else None
    norm = Normalization(tuple(config.input.mean), tuple(config.input.std))
    preprocess = ImagePreprocess(config.input.mode, config.input.resize, config.input.crop, norm)
    steps = None if config.steps == "auto" else config.steps
    quadrature = Quadrature(config.method, steps, config.tolerance, config.min_steps, config.max_steps)
    return Plan(backend, labels, resolve_target(config.target, labels), preprocess,
                resolve_baseline(config, preprocess), quadrature)


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


def resolve_baseline(config: Config, preprocess: ImagePreprocess) -> BaselinePlan:
    section = config.baseline
    fixed = None
    if section.kind is BaselineKind.file:
        fixed = _load_baseline_file(section.path, preprocess)
    return BaselinePlan(section.kind, section.samples, section.seed, section.value, section.sigma, fixed)


def _load_baseline_file(path: Path, preprocess: ImagePreprocess) -> torch.Tensor:
    if path.suffix.lower() == ".npy":
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: cannot read baseline.path as .npy ({error})") from None
    try:
        return read_image(InputRef(path, path.name), preprocess).x
    except InputError as error:
        raise ConfigError(f"baseline.path: {error}") from None


def _inputs_per_chunk(config: Config) -> int:
    first_level = (config.steps if config.steps != "auto" else config.min_steps) + 1
    per_input = first_level * config.baseline.samples * (config.target.top_k if isinstance(config.target, TopK) else 1)
    return max(1, min(MAX_INPUTS_PER_CHUNK, math.ceil(config.batch_size / per_input)))


def _read_samples(refs: Iterable[InputRef], prep: ImagePreprocess, writer: RunWriter, summary: RunSummary) -> Iterator[Sample]:
    """Decoded samples; inputs that fail become error records here and are not yielded."""
    seen: dict[str, str] = {}
    for ref in refs:
        summary.inputs += 1
        stem = output_stem(ref.relpath)
        try:
            if stem in seen:
                raise InputError(f"{ref.path}: would write the same outputs as {seen[stem]} ({stem}.*); "
                                 "rename one, or pass their parent folders instead of the files")
            seen[stem] = str(ref.path)
            yield read_image(ref, prep)
        except InputError as error:
            _fail(writer, summary, Failure(str(ref.path), ref.relpath, "InputError", str(error)))


def _fail(writer: RunWriter, summary: RunSummary, failure: Failure) -> None:
    summary.failed += 1
    log.warning("%s", failure.message)
    writer.write_failure(failure)


def _chunks(items: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _explain_chunk(chunk: list[Sample], plan: Plan, config: Config, writer: RunWriter, summary: RunSummary) -> None:
    # Inputs of different sizes (no resize configured) cannot share a batch.
    by_shape: dict[tuple[int, ...], list[Sample]] = {}
    for sample in chunk:
        by_shape.setdefault(tuple(sample.x.shape), []).append(sample)
    for group in by_shape.values():
        clock = time.perf_counter()
        try:
            explanations = _explain_group(group, plan, config)
        except MODEL_FAILURES as error:
            for sample in group:
                message = f"{sample.source}: model failed on input shaped {list(sample.x.shape)} ({first_line(error)})"
                _fail(writer, summary, Failure(sample.source, sample.relpath, "ModelError", message))
            continue
        seconds = (time.perf_counter() - clock) / max(1, len(explanations))
        for explanation in explanations:
            _record(group[explanation.input_index], explanation, plan, config, seconds, writer, summary)


def check_model(plan: Plan, sample: Sample) -> None:
    """One forward on the first input: a model that cannot take it stops the run before any work."""
    x = sample.x.unsqueeze(0).to(plan.backend.device, plan.backend.dtype)
    try:
        classes = plan.backend.scores(x).shape[1]
    except MODEL_FAILURES as error:
        raise ModelError(f"model rejected an input shaped {list(x.shape)} from {sample.source} "
                         f"({first_line(error)}); check input.mode, input.resize and input.crop") from None
    if plan.labels is not None and len(plan.labels) != classes:
        raise ConfigError(f"model.labels has {len(plan.labels)} labels but the model outputs {classes} classes")
    if plan.target.kind == "index" and not 0 <= plan.target.value < classes:
        raise ConfigError(f"target {plan.target.value}: the model outputs classes 0..{classes - 1}")


def _explain_group(group: list[Sample], plan: Plan, config: Config) -> list[Explanation]:
    inputs = torch.stack([sample.x for sample in group])
    baselines = torch.stack([make_baselines(plan.baseline, s.pixels, plan.preprocess.normalization, s.relpath)
                             for s in group])
    if baselines.shape[2:] != inputs.shape[1:]:
        raise ValueError(f"baseline shaped {list(baselines.shape[2:])} does not match inputs {list(inputs.shape[1:])}")
    return explain(plan.backend, inputs, baselines, plan.target, plan.quadrature, config.batch_size)


def _record(sample: Sample, e: Explanation, plan: Plan, config: Config, seconds: float,
            writer: RunWriter, summary: RunSummary) -> None:
    numbers = (e.f_input, e.f_baseline, e.attribution_sum)
    if not all(math.isfinite(v) for v in numbers) or not torch.isfinite(e.attributions).all():
        message = f"{sample.source}: model output is NaN or Inf on this input or its path; no attribution"
        _fail(writer, summary, Failure(sample.source, sample.relpath, "ModelError", message))
        return
    warnings = _baseline_warnings(e, config.baseline.warn_ratio)
    summary.baseline_warnings += bool(warnings)
    section = config.baseline
    attribution = Attribution(
        sample=sample, target=e.target, label=plan.labels[e.target] if plan.labels else None, rank=e.rank,
        score=config.model.score.value, f_input=e.f_input, f_baseline=e.f_baseline,
        attribution_sum=e.attribution_sum, abs_error=e.abs_error, rel_error=e.rel_error,
        tolerance=config.tolerance, converged=e.converged, steps=e.steps, gradient_evals=e.gradient_evals,
        rule=config.method.value, seconds=seconds, attributions=e.attributions, warnings=warnings,
        baseline={"kind": section.kind.value, "samples": section.samples, "seed": section.seed},
    )
    writer.write(attribution)
    summary.records += 1
    summary.steps.append(e.steps)
    summary.not_converged += not e.converged
    if e.rel_error is not None:
        summary.max_rel_error = max(summary.max_rel_error, e.rel_error)


def _baseline_warnings(e: Explanation, ratio: float) -> list[str]:
    if abs(e.f_baseline) <= ratio * abs(e.f_input):
        return []
    return [f"F(baseline)={e.f_baseline:.4g} is over {ratio:g} x F(input)={e.f_input:.4g} for class {e.target}: "
            "the baseline is not uninformative, so the attributions explain only F(input) - F(baseline)"]


def manifest(config: Config, plan: Plan, summary: RunSummary, started: datetime) -> dict[str, Any]:
    return {
        "igcli": __version__,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(plan.backend.device),
        "versions": versions(),
        "config": resolved(config),
        "totals": summary.to_json(),
    }


def versions() -> dict[str, str]:
    import PIL

    return {"igcli": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__}
