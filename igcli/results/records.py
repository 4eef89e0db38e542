"""What passes between stages: Samples from readers, Attributions and Failures to writers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image


def output_stem(relpath: str) -> str:
    """``cats/a.png`` -> ``cats/a``: outputs mirror inputs, with their own extensions."""
    head, _, name = relpath.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


@dataclass
class Sample:
    """One decoded input, ready for the model."""

    source: str  # the path as discovered
    relpath: str  # below its input root; output names mirror it
    x: Tensor  # model-space input [C, H, W]
    pixels: Tensor  # the image the model saw, [C, H, W] in [0, 1], before normalisation
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # sha256 of the input's bytes: with the run's key, what --resume compares
    preview: Image.Image | None = None  # the file as decoded, small: report.html's thumbnail (results/previews.py)


@dataclass
class TextSample:
    """One tokenized document; IG runs on the embeddings of ``ids``."""

    source: str
    relpath: str
    text: str
    ids: Tensor  # [L] token ids
    mask: Tensor  # [L] attention mask
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    special: list[bool]
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # sha256 of the document's text


@dataclass
class Failure:
    """An input that could not be explained, and the one line that says why."""

    source: str
    relpath: str
    error_type: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"input": self.source, "relpath": self.relpath,
                "error": {"type": self.error_type, "message": self.message}}


@dataclass
class Attribution:
    """IG for one (input, target) with everything needed to trust and reproduce it."""

    sample: Sample | TextSample
    target: int
    label: str | None
    rank: int | None  # among F(x), for top_k targets
    score: str  # what F is: softmax | logits | sigmoid
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
            "score": self.score,
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
