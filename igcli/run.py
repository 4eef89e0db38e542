"""The one place that wires the stages: inputs -> baselines -> engine -> outputs."""
from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain, islice
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

    def add(self, result: Attribution | Failure) -> None:
        """Count one result; an input's first result counts the input."""
        if isinstance(result, Failure):
            self.inputs += 1
            self.failed += 1
            return
        self.inputs += result.rank in (None, 1)
        self.records += 1
        self.steps.append(result.steps)
        self.not_converged += not result.converged
        self.baseline_warnings += bool(result.warnings)
        if result.rel_error is not None:
            self.max_rel_error = max(self.max_rel_error, result.rel_error)

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
    first = next(refs, None)
    if first is None:
        raise UsageError(f"no inputs found in {', '.join(specs)} (extensions: {' '.join(config.input.extensions)})")
    refs = chain([first], refs)
    writer = RunWriter(out_dir, config.output, jsonl)
    summary = RunSummary()
    items = _read_inputs(refs, plan.preprocess)
    checked = False
    with tqdm(desc="explain", unit="input", disable=not progress) as bar:
        for chunk in _chunks(items, _inputs_per_chunk(config)):
            samples = [item for item in chunk if isinstance(item, Sample)]
            if samples and not checked:
                check_model(plan, samples[0])
                checked = True
            for result in _explain_chunk(chunk, plan, config):
                _write(result, writer, summary)
            bar.update(len(chunk))
    if summary.baseline_warnings:
        log.warning("%d record(s) have a baseline that is not uninformative; see their 'warnings'",
                    summary.baseline_warnings)
    summary.seconds = time.perf_counter() - clock
    writer.finish(manifest(config, plan, summary, started))
    return summary


def make_plan(config: Config) -> Plan:
    """Load the model and resolve targets, preprocessing and baselines; fails before any input."""
    device = resolve_device(config.device)
    section = config.model
    backend = load_model(section.path, section.factory, section.score, device, section.trust_pickle,
                         backend=section.backend, threads=section.threads, input_shape=config.input.model_shape())
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


def _read_inputs(refs: Iterable[InputRef], prep: ImagePreprocess) -> Iterator[Sample | Failure]:
    """Each input decoded, or the Failure that says why it could not be."""
    seen: dict[str, str] = {}
    for ref in refs:
        stem = output_stem(ref.relpath)
        try:
            if stem in seen:
                raise InputError(f"{ref.path}: would write the same outputs as {seen[stem]} ({stem}.*); "
                                 "rename one, or pass their parent folders instead of the files")
            seen[stem] = str(ref.path)
            yield read_image(ref, prep)
        except InputError as error:
            yield Failure(str(ref.path), ref.relpath, "InputError", str(error))


def _chunks(items: Iterable[Sample | Failure], size: int) -> Iterator[list[Sample | Failure]]:
    """Lists of ``size`` items, Failures riding along so that outputs keep the inputs' order."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _write(result: Attribution | Failure, writer: RunWriter, summary: RunSummary) -> None:
    if isinstance(result, Failure):
        log.warning("%s", result.message)
        writer.write_failure(result)
    else:
        writer.write(result)
    summary.add(result)


def _explain_chunk(chunk: list[Sample | Failure], plan: Plan, config: Config) -> list[Attribution | Failure]:
    """Results for a chunk in input order (top-k targets of one input stay together)."""
    results: dict[int, list[Attribution | Failure]] = {}
    # Inputs of different sizes (no resize configured) cannot share a batch.
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, item in enumerate(chunk):
        if isinstance(item, Failure):
            results[position] = [item]
        else:
            by_shape.setdefault(tuple(item.x.shape), []).append(position)
    for positions in by_shape.values():
        group = [chunk[p] for p in positions]
        clock = time.perf_counter()
        try:
            explanations = _explain_group(group, plan, config)
        except MODEL_FAILURES as error:
            for p, sample in zip(positions, group):
                message = f"{sample.source}: model failed on input shaped {list(sample.x.shape)} ({first_line(error)})"
                results[p] = [Failure(sample.source, sample.relpath, "ModelError", message)]
            continue
        seconds = (time.perf_counter() - clock) / max(1, len(explanations))
        for e in explanations:
            results.setdefault(positions[e.input_index], []).append(
                _attribution(group[e.input_index], e, plan, config, seconds))
    return [result for position in sorted(results) for result in results[position]]


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
    fixed = plan.baseline.fixed
    if fixed is not None and tuple(fixed.shape) != tuple(sample.x.shape):
        raise ConfigError(f"baseline.path holds shape {list(fixed.shape)} but inputs are {list(sample.x.shape)}; "
                          "save the baseline in the model's input shape, without a batch axis")


def _explain_group(group: list[Sample], plan: Plan, config: Config) -> list[Explanation]:
    inputs = torch.stack([sample.x for sample in group])
    baselines = torch.stack([make_baselines(plan.baseline, s.pixels, plan.preprocess.normalization, s.relpath)
                             for s in group])
    return explain(plan.backend, inputs, baselines, plan.target, plan.quadrature, config.batch_size)


def _attribution(sample: Sample, e: Explanation, plan: Plan, config: Config, seconds: float) -> Attribution | Failure:
    numbers = (e.f_input, e.f_baseline, e.attribution_sum)
    if not all(math.isfinite(v) for v in numbers) or not torch.isfinite(e.attributions).all():
        message = f"{sample.source}: model output is NaN or Inf on this input or its path; no attribution"
        return Failure(sample.source, sample.relpath, "ModelError", message)
    section = config.baseline
    return Attribution(
        sample=sample, target=e.target, label=plan.labels[e.target] if plan.labels else None, rank=e.rank,
        score=config.model.score.value, f_input=e.f_input, f_baseline=e.f_baseline,
        attribution_sum=e.attribution_sum, abs_error=e.abs_error, rel_error=e.rel_error,
        tolerance=config.tolerance, converged=e.converged, steps=e.steps, gradient_evals=e.gradient_evals,
        rule=config.method.value, seconds=seconds, attributions=e.attributions,
        warnings=_baseline_warnings(e, section.warn_ratio),
        baseline={"kind": section.kind.value, "samples": section.samples, "seed": section.seed},
    )


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
