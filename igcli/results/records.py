"""What passes between stages: Samples from readers, Attributions and Failures to writers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

# Readers make these (igcli/data/samples.py); the writers take them with the Attributions.
from igcli.data.samples import Failure, Sample, TextSample, output_stem  # noqa: F401


@dataclass
class Attribution:
    """IG for one (input, target) with everything needed to trust and reproduce it."""

    sample: Sample | TextSample
    target: int
    label: str | None
    rank: int | None  # among F(x), for top_k targets
    score_kind: str  # what F is: softmax | logits | sigmoid (the record's "score")
    f_input: float
    f_baseline: float
    attribution_sum: float
    abs_error: float
    rel_error: float | None
    tolerance: float
    converged: bool
    steps: int
    gradient_evals: int
    rule: str
    baseline: dict[str, Any]
    seconds: float  # this record's share of the run's wall time (run._share_wall_time)
    attributions: Tensor  # shaped like the input ([C, H, W], or [L, D] for text), on the CPU
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific fields (tokens, words, ...)
    stopped_by: str = "tolerance"  # tolerance | max_steps | fixed_steps (engine.Explanation)
    map_error: float | None = None  # the rule's estimate of the map's relative L2 error; None: no estimate
    map_tolerance: float | None = None
    within_noise: bool = False  # |F(x) - F(x')| at float noise: completeness judged against that noise
    key: str | None = None  # run key + input bytes; --resume reuses the record while it matches
    region: Tensor | None = None  # a region target's pixels [H, W] bool, outlined on the heatmap
    display: Tensor | None = None  # what the heatmap draws where not the attributions (a layer map, upsampled)
    region_ranks: np.ndarray | None = None  # regions: xrai: each pixel's region rank [H, W], drawn under regions/

    @property
    def name(self) -> str:
        """The relative output name: the input's relpath less its extension, plus the top-k rank."""
        suffix = f".top{self.rank}" if self.rank is not None else ""
        return output_stem(self.sample.relpath) + suffix

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.sample.source,
            "relpath": self.sample.relpath,
            "target": {"index": self.target, "label": self.label, "rank": self.rank},
            "score": self.score_kind,
            "f_input": self.f_input,
            "f_baseline": self.f_baseline,
            "attribution_sum": self.attribution_sum,
            "completeness": {
                "abs_error": self.abs_error,
                "rel_error": self.rel_error,
                "tolerance": self.tolerance,
                "within_float_noise": self.within_noise,
                "map_error": self.map_error,
                "map_tolerance": self.map_tolerance,
                "converged": self.converged,
            },
            "stopped_by": self.stopped_by,
            "steps": self.steps,
            "gradient_evals": self.gradient_evals,
            "rule": self.rule,
            "baseline": self.baseline,
            "seconds": round(self.seconds, 6),
            "outputs": self.outputs,
            "warnings": self.sample.warnings + self.warnings,
            "error": None,
            "key": self.key,
        } | self.details
