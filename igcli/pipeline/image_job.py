"""Images: decode, preprocess, baselines in pixel space, IG batched across images."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from igcli.attribution.adaptive import INITIAL_INTERVALS
from igcli.attribution.baselines import (
    AUTO_CANDIDATES,
    BaselineKind,
    BaselinePlan,
    Normalization,
    auto_candidates,
    make_baselines,
)
from igcli.attribution.engine import Explanation, attribute, resolve_targets
from igcli.attribution.quadrature import Rule
from igcli.backends.batching import batched_scores
from igcli.backends.loading import load_model
from igcli.backends.memory import FALLBACK_POINTS, MAX_POINTS, auto_points
from igcli.backends.sources import SourceDefaults, image_source
from igcli.config import Config, InputSection, Region, TopK
from igcli.data.discover import InputRef
from igcli.data.images import ImagePreprocess, read_image
from igcli.errors import ConfigError, InputError, ModelError, root_cause
from igcli.pipeline.common import MODEL_FAILURES, Job, check_classes, to_record
from igcli.pipeline.map_budget import image_chunk_limit
from igcli.pipeline.methods import Methods
from igcli.pipeline.metrics_hook import blurred_fill, path_explainer
from igcli.pipeline.overlap import points_per_chunk
from igcli.pipeline.regions_hook import RecordRegions
from igcli.pipeline.targets import region_target
from igcli.results.records import Attribution, Failure, Sample
from igcli.runtime.options import RuntimeOptions

# The auto chunk size (docs/performance.md, "Chunks"): enough inputs that the adaptive rule's first
# round fills this many batches, which keeps its part-filled last batches few; at most this many
# inputs, as a chunk's stored maps set the peak memory; and the gradients a chunk keeps (at about
# this many points a path) within this many bytes.
ADAPTIVE_FIRST_ROUND_BATCHES = 4
MAX_INPUTS_PER_CHUNK = 96
ADAPTIVE_POINTS_PER_PATH = 48
ADAPTIVE_GRADIENT_BYTES = 1 << 30


class ImageJob(Job):
    def _load_model(self, config: Config) -> Config:
        section = config.model
        module, self._source_defaults = image_source(section.path, section.timm, section.torchvision)
        self._source_module = module  # a timm/torchvision model built by name (layer IG hooks into it)
        # The model source's preprocessing fills the input keys the config does not set.
        config = config.model_copy(update={"input": with_source_defaults(config.input, self._source_defaults)})
        inputs = config.input
        self.backend = load_model(section.path, section.factory, section.score, self.device, section.trust_pickle,
                                  backend=section.backend, threads=section.threads, precision=section.precision,
                                  input_shape=inputs.model_shape(), output=section.output, layout=inputs.layout,
                                  bgr=inputs.mode == "BGR", channels=1 if inputs.mode == "L" else 3, module=module)
        self.runtime = self.backend.runtime
        return config

    def _model_labels(self) -> list[str] | None:
        return self._source_defaults.labels

    def _prepare(self) -> None:
        config, inputs = self.config, self.config.input
        self.region = region_target(config.target, self.labels, config.model.score) \
            if isinstance(config.target, Region) else None
        if self.region is not None:
            self.region.check_backend(self.backend)  # before any file is written
        self.classes: int | None = None  # the model's output columns, once check() has seen them
        # mean and std come in the model's channel order; igcli's tensors are RGB (see backends/layout.py).
        bgr = inputs.mode == "BGR"
        order = (lambda values: tuple(reversed(values))) if bgr else tuple
        norm = Normalization(order(inputs.mean), order(inputs.std))
        self.preprocess = ImagePreprocess("RGB" if bgr else inputs.mode, inputs.resize, inputs.crop, norm,
                                          inputs.max_bytes, inputs.resample)
        self.baseline = _baseline_plan(config, self.preprocess)
        self.methods = Methods.of(config, norm, self._source_module, self.device)  # None: plain IG
        self.regions = RecordRegions.of(config)  # None: no regions: xrai

    def _batch_points(self, shape: tuple[int, ...] | None = None) -> int:
        """``batch_size``, or for auto the points whose measured activations fit the memory budget
        (igcli/backends/memory.py) at inputs of ``shape`` (default: the configured input shape;
        None: not known yet)."""
        if self.config.batch_size != "auto":
            return self.config.batch_size
        shape = shape or self.config.input.model_shape()
        if shape is None:
            return MAX_POINTS  # provisional, for the chunk size: check() measures on the first input
        try:
            return auto_points(self.backend, torch.zeros(shape), self.device)
        except MODEL_FAILURES:
            return FALLBACK_POINTS  # the model rejects the shape: check() says so, in its words

    def _inputs_per_chunk(self) -> int:
        return _inputs_per_chunk(self.config, self.batch.points)

    def __init__(self, config: Config, options: RuntimeOptions = RuntimeOptions()):
        super().__init__(config, options)
        # Whatever chunk_inputs says, the chunks in flight hold their maps at max_steps within budget.
        map_limit = image_chunk_limit(self.config, self.in_flight, self.device, self.backend.dtype)
        self.chunk_size = self.chunk_size if map_limit is None else min(self.chunk_size, map_limit)

    def read(self, refs: Iterable[InputRef]) -> Iterator[Sample | Failure]:
        for ref in refs:  # output names are made unique by the run (outputs.names), across kinds
            try:
                yield read_image(ref, self.preprocess)
            except InputError as error:
                yield Failure(ref.source, ref.relpath, "InputError", str(error))

    def check(self, sample: Sample) -> None:
        x = sample.x.unsqueeze(0).to(self.backend.device, self.backend.dtype)
        try:
            if self.region is not None:
                self.region.check(self.backend, x)
            else:
                self.classes = self.backend.scores(x).shape[1]
        except MODEL_FAILURES as error:
            raise ModelError(f"model rejected an input shaped {list(x.shape)} from {sample.source} "
                             f"({root_cause(error)}); check input.mode, input.resize and input.crop") from None
        if self.classes is not None:
            check_classes(self.classes, self.labels, self.target, self.config.model.score)
        if self.config.batch_size == "auto" and self.config.input.model_shape() is None:
            # Measured on the first input where the config does not fix the input size.
            self.batch.points = points_per_chunk(self._batch_points(tuple(sample.x.shape)), self.in_flight,
                                                 self.device)
        fixed = self.baseline.fixed
        if fixed is not None and tuple(fixed.shape) != tuple(sample.x.shape):
            raise ConfigError(f"baseline.path holds shape {list(fixed.shape)} but inputs are "
                              f"{list(sample.x.shape)}; save the baseline in the model's input shape, without a "
                              "batch axis")

    def _group_key(self, sample: Sample) -> tuple[int, ...]:
        return tuple(sample.x.shape)  # images of different sizes (no resize configured) cannot share a batch

    def _record(self, sample: Sample, e: Explanation, seconds: float,
                context: tuple[list[str | None], torch.Tensor | None, dict[int, dict] | None]) -> Attribution | Failure:
        chosen, regions, extras = context
        record = to_record(sample, e, self.config, self.labels, seconds, classes=self.classes,
                           baseline_chosen=chosen[e.input_index])
        if regions is not None and isinstance(record, Attribution):
            record = self.region.annotate(record, regions[e.input_index], self.labels)
        if extras is not None and isinstance(record, Attribution):
            record = self.methods.annotate(record, extras[id(e)])
        if self.regions is not None and isinstance(record, Attribution):
            record = self.regions.annotate(record)
        return record

    def _add_metrics(self, group: list[Sample], records: list) -> None:
        """Each record's ``metrics`` (pipeline/metrics_hook.py); the fill: blurred inputs or their baselines."""
        inputs = torch.stack([sample.x for sample in group])
        options = self.config.faithfulness
        baselines = self._metric_baselines(group, records)
        if options.fill == "blur":
            fill = blurred_fill(torch.stack([s.pixels for s in group]), self.preprocess.normalization, options.blur_sigma)
        else:
            fill = baselines[:, 0]
        explainer = path_explainer(self.backend, baselines, self.quadrature, self.batch)
        self.metrics.annotate(self.backend, inputs, fill.to(inputs.dtype), records, "pixel", explainer)

    def _metric_baselines(self, group: list[Sample], records: list) -> torch.Tensor:
        if self.baseline.kind is not BaselineKind.auto:
            return self._baselines(group)
        chosen = {index: record.baseline.get("chosen") for index, record in records if isinstance(record, Attribution)}
        norm = self.preprocess.normalization
        return torch.stack([auto_candidates(s.pixels, norm)[AUTO_CANDIDATES.index(chosen.get(i, "black"))][None]
                            for i, s in enumerate(group)])

    def _explain_together(self, group: list[Sample]):
        """The group's explanations; per input the baseline ``auto`` chose (None for other kinds);
        for a region target each input's region [N, H, W] (else None); and for a path method or
        smoothing what each explanation's record adds (else None)."""
        inputs = torch.stack([sample.x for sample in group])
        backend, regions = self.backend, None
        if self.region is not None:
            regions = self.region.regions(self.backend, inputs, self.batch.points)
            backend = self.region.backend_for(self.backend, regions)
        if self.baseline.kind is BaselineKind.auto:
            baselines, chosen = self._auto_baselines(backend, inputs, group)
        else:
            baselines, chosen = self._baselines(group), [None] * len(group)
        if self.methods is not None:
            explanations, extras = self.methods.explain(backend, inputs, baselines, group, self.target,
                                                        self.quadrature, self.batch, self.map_buffers)
            return explanations, (chosen, regions, {id(e): extra for e, extra in zip(explanations, extras)})
        return attribute(backend, inputs, baselines, self.target, self.quadrature, self.batch,
                         self.map_buffers), (chosen, regions, None)

    def _auto_baselines(self, backend, inputs: torch.Tensor, group: list[Sample]) -> tuple[torch.Tensor, list[str]]:
        """Per input, the candidate of AUTO_CANDIDATES with the lowest F for its (first) target:
        [inputs, 1, C, H, W] and the names chosen."""
        norm = self.preprocess.normalization
        candidates = torch.stack([auto_candidates(sample.pixels, norm) for sample in group])  # [N, 3, C, H, W]
        scores = batched_scores(backend, torch.cat([inputs, candidates.flatten(0, 1)]).to(backend.device, backend.dtype),
                                self.batch.points).cpu()
        targets = torch.tensor([classes[0] for classes in resolve_targets(scores[: len(group)], self.target)])
        per_candidate = scores[len(group):].view(len(group), len(AUTO_CANDIDATES), -1)  # [N, 3, classes]
        best = per_candidate.gather(2, targets.view(-1, 1, 1).expand(-1, len(AUTO_CANDIDATES), 1)).squeeze(2).argmin(1)
        baselines = candidates[torch.arange(len(group)), best][:, None]
        return baselines, [AUTO_CANDIDATES[int(i)] for i in best]

    def _baselines(self, group: list[Sample]) -> torch.Tensor:
        """[inputs, samples, C, H, W]; made once for the group where every input gets the same."""
        norm = self.preprocess.normalization
        if self.baseline.same_for_every_input:
            first = make_baselines(self.baseline, group[0].pixels, norm, group[0].relpath)
            return first.expand((len(group),) + tuple(first.shape))
        return torch.stack([make_baselines(self.baseline, s.pixels, norm, s.relpath) for s in group])


def with_source_defaults(inputs: InputSection, defaults: SourceDefaults) -> InputSection:
    """``inputs`` with the model source's settings for every key the config left unset."""
    update = {key: value for key, value in defaults.input.items() if key not in inputs.model_fields_set}
    return inputs.model_copy(update=update) if update else inputs


def _baseline_plan(config: Config, preprocess: ImagePreprocess) -> BaselinePlan:
    section = config.baseline
    fixed = _load_baseline_file(section.path, preprocess) if section.kind is BaselineKind.file else None
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


def _inputs_per_chunk(config: Config, batch_points: int) -> int:
    """``chunk_inputs`` where the config sets it; else enough inputs that the first round of path
    points fills a batch of ``batch_points`` (ADAPTIVE_FIRST_ROUND_BATCHES for the adaptive rule), within
    MAX_INPUTS_PER_CHUNK and, for the adaptive rule, the gradients' memory budget."""
    if config.chunk_inputs != "auto":
        return config.chunk_inputs
    paths_per_input = config.baseline.samples * (config.target.top_k if isinstance(config.target, TopK) else 1)
    paths_per_input *= config.smoothgrad.samples if config.smoothgrad is not None else 1  # a path per noisy copy
    limit = MAX_INPUTS_PER_CHUNK
    if config.method is Rule.adaptive:
        first_level = (INITIAL_INTERVALS if config.steps == "auto" else min(config.steps, INITIAL_INTERVALS)) + 1
        points = ADAPTIVE_FIRST_ROUND_BATCHES * batch_points
        shape = config.input.model_shape()
        if shape is not None:
            per_input = ADAPTIVE_POINTS_PER_PATH * paths_per_input * math.prod(shape) * 4
            limit = min(limit, ADAPTIVE_GRADIENT_BYTES // per_input)
    else:
        first_level = (config.steps if config.steps != "auto" else config.min_steps) + 1
        points = batch_points
    return max(1, min(limit, math.ceil(points / (first_level * paths_per_input))))
