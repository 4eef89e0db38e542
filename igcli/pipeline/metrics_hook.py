"""The ``metrics`` of each record (attribution/faithfulness.py), computed where the job holds the
inputs and the backend: the same device, batched like the run's path points."""
from __future__ import annotations

import logging
import zlib
from typing import Callable

import torch
from torch import Tensor

from igcli.attribution.baselines import Normalization, gaussian_blur
from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.faithfulness import (
    deletion_insertion,
    gaussian_perturbations,
    infidelity,
    max_sensitivity,
    pixel_units,
    token_units,
    uniform_perturbations,
    unit_scores,
)
from igcli.backends.base import Backend
from igcli.backends.batching import BatchSize
from igcli.config import Config
from igcli.errors import MODEL_FAILURES, root_cause
from igcli.results.records import Attribution, Failure

log = logging.getLogger("igcli")


class RecordMetrics:
    """Adds ``metrics`` to the records of one group of same-shape inputs."""

    def __init__(self, config: Config, batch: BatchSize):
        self.names, self.options, self.batch = config.metrics, config.faithfulness, batch

    def annotate(self, backend: Backend, inputs: Tensor, fill: Tensor, records: list[tuple[int, Attribution | Failure]],
                 kind: str, explain_fn: Callable[[Tensor, Tensor, int], Tensor] | None = None) -> None:
        """``inputs``, ``fill`` [N, *shape]; ``records``: (input index, record) pairs; ``kind``
        pixel | token; ``explain_fn(rows, of_input, target)``: maps of perturbed rows (sensitivity)."""
        chosen = [(i, r) for i, r in records if isinstance(r, Attribution)]
        if not chosen:
            return
        try:
            values = self._values(backend, inputs, fill, chosen, kind, explain_fn)
        except MODEL_FAILURES as error:
            for _, record in chosen:
                record.warnings.append(f"metrics: not computed ({root_cause(error)})")
                record.details["metrics"] = None
            return
        for row, (_, record) in enumerate(chosen):
            record.details["metrics"] = {name: float(column[row]) for name, column in values.items()}

    def _values(self, backend: Backend, inputs: Tensor, fill: Tensor, chosen: list[tuple[int, Attribution]],
                kind: str, explain_fn) -> dict[str, Tensor]:
        index = torch.tensor([i for i, _ in chosen])
        x, filled = inputs.cpu()[index], fill.cpu()[index]
        maps = torch.stack([record.attributions for _, record in chosen])
        targets = torch.tensor([record.target for _, record in chosen])
        shape = tuple(x.shape[1:])
        options, values = self.options, {}
        if "deletion" in self.names or "insertion" in self.names:
            units, expand = pixel_units(shape) if kind == "pixel" else token_units(shape)
            deletion, insertion = deletion_insertion(backend, x, filled, unit_scores(maps, kind), targets, expand,
                                                     options.steps, self.batch.points)
            values |= {"deletion": deletion} if "deletion" in self.names else {}
            values |= {"insertion": insertion} if "insertion" in self.names else {}
        # Each record's perturbations follow from its input's name and target, whatever chunk it falls in.
        seeds = [options.seed * 1_000_003 + zlib.crc32(f"{r.sample.relpath}:{r.target}".encode()) for _, r in chosen]
        # Perturbed copies of about a batch of inputs at a time: all of a chunk's at once may not fit.
        step = max(1, self.batch.points // options.samples)
        if "infidelity" in self.names:
            parts = []
            for first in range(0, len(chosen), step):
                part = slice(first, first + step)
                noise = torch.stack([gaussian_perturbations(shape, options.samples, options.noise, seeds[i])
                                     for i in range(first, min(first + step, len(chosen)))])
                parts.append(infidelity(backend, x[part], maps[part], targets[part], noise, self.batch.points))
            values["infidelity"] = torch.cat(parts)
        if "sensitivity" in self.names and explain_fn is not None:
            parts = []
            for first in range(0, len(chosen), step):
                part = slice(first, first + step)
                noise = torch.stack([uniform_perturbations(shape, options.samples, options.radius, seeds[i])
                                     for i in range(first, min(first + step, len(chosen)))])
                of_input = index[part].repeat_interleave(options.samples)
                rows_targets = targets[part].repeat_interleave(options.samples)
                parts.append(max_sensitivity(lambda rows: explain_fn(rows, of_input, rows_targets), x[part], maps[part],
                                             noise))
            values["sensitivity"] = torch.cat(parts)
        return values


def blurred_fill(pixels: Tensor, norm: Normalization, sigma: float) -> Tensor:
    """[N, C, H, W] the inputs blurred in pixel space, in model space (insertion's start, XRAI)."""
    return torch.stack([norm.apply(gaussian_blur(image, sigma)) for image in pixels])


def path_explainer(backend: Backend, baselines: Tensor, quadrature: Quadrature,
                   batch: BatchSize) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Maps of perturbed rows by the run's own rule: row r against its input's baselines
    (``baselines`` [N, K, *shape]), for its target; rows of one target go together."""

    def maps(rows: Tensor, of_input: Tensor, targets: Tensor) -> Tensor:
        out = torch.empty(rows.shape, dtype=torch.float32)
        for target in targets.unique().tolist():
            picked = (targets == target).nonzero().flatten()
            found = attribute(backend, rows[picked], baselines[of_input[picked]], TargetSpec("index", int(target)),
                              quadrature, batch)
            for e in found:
                out[picked[e.input_index]] = e.attributions.float()
        return out

    return maps
