"""The typed, validated configuration of a run: defaults < YAML < --set < explicit flags.

pydantic does the type checking; this module adds what users need from the messages: the key,
where it stood (``file:line`` or ``--set``) and the nearest valid key.
"""
from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from igcli.attribution.kinds import DEFAULT_MAP_TOLERANCE, DEFAULT_RULE, TEXT_BASELINES, BaselineKind, Rule
from igcli.backends.kinds import Precision, ScoreKind
from igcli.config_source import ConfigSource, KeyPath, apply_override, parse_override, read_yaml
from igcli.data.discover import DEFAULT_MAX_BYTES
from igcli.errors import ConfigError


class RuleError(ValueError):
    """A rule across keys is broken; ``keys`` (dotted) are the keys it names, the likeliest culprit first,
    so the error names where the culprit was set (describe_error)."""

    def __init__(self, message: str, *keys: str):
        super().__init__(message)
        self.keys = keys


class Section(BaseModel):
    # allow_inf_nan: an inf or nan validates against every bound and crashes the run (JSON has no inf).
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yaml_traps(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true as 1 and "" as the path "."; YAML reads yes/no/on/off as booleans.
        kinds = _member_types(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            name = " or a name" if str in kinds else ""
            raise ValueError(f"true/false where a number{name} is due (YAML reads yes, no, on, off as true/false; "
                             "quote text)")
        if value == "" and Path in kinds:
            raise ValueError("an empty path; give a file or folder, or leave the key out")
        if isinstance(value, str) and int in kinds and not kinds & {str, float} and SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e8 as text; YAML 1.2 and people read a number
        return value


SCIENTIFIC = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")
# Copies a run makes of each input (baselines, noisy copies, perturbations), each a whole IG run or
# model pass: an average of N settles as 1/sqrt(N), to 3% of one copy's spread at 1024.
MAX_SAMPLES = 1024


def _samples_cap(samples: int, cost: str) -> int:
    if samples > MAX_SAMPLES:
        raise ValueError(f"at most {MAX_SAMPLES}: {cost}")
    return samples


def _member_types(annotation: Any) -> set[Any]:
    """The types a field takes: its union's members, one level down."""
    return set(typing.get_args(annotation)) | {annotation}


class ModelSection(Section):
    path: Path | None = Field(None, description="`.pt2` (torch.export, dynamic batch), TorchScript (`.ts`/`.pt`), a "
                              "state_dict (`.pt`, `.safetensors`) with model.factory, `.onnx` (plain or gradient "
                              "graph), or a Hugging Face folder (docs/models.md)")
    factory: str | None = Field(None, description="`package.module:function` or `file.py:function` returning an "
                                "nn.Module, for a state_dict in model.path; it runs code, as a pickle does")
    score: ScoreKind = Field(ScoreKind.softmax, description="what F is: the class probability (the paper's), the raw "
                             "output (captum's) or a sigmoid (multi-label)")
    labels: Path | None = Field(None, description="text file, one label per line (line i = class i)")
    trust_pickle: bool = Field(False, description="allow a fully pickled nn.Module (it runs code from the file)")
    backend: Literal["auto", "torch", "onnxruntime"] = Field("auto", description="auto: onnxruntime for gradient "
                                                             "graphs and ONNX models fixed to one batch size, torch "
                                                             "otherwise (docs/onnx.md)")
    tokenizer: Path | None = Field(None, description="text: `tokenizer.json` or WordPiece `vocab.txt` (Hugging Face "
                                   "folders bring their own)")
    embedding_layer: str | None = Field(None, description="text: the embedding module's name (torch) or the "
                                        "embedding tensor's (ONNX; `igcli inspect` lists them)")
    # Intra-op threads for torch / onnxruntime; 0 = their default. With 2 or more on a CPU, torch
    # runs two chunks at once, each on half of them (pipeline/overlap.py).
    threads: int = Field(0, ge=0, description="intra-op threads for torch / onnxruntime; 0 = their default. On a "
                         "CPU with 2 or more, torch explains two chunks at once, each on half of them")
    precision: Precision = Field(Precision.float32, description="path evaluations under autocast (torch backend); "
                                 "F(x) and F(x') stay float32, so completeness errors show the cost: measure "
                                 "before using it (docs/performance.md)")
    # Which output F is made of, for models with several (tuple, dict, namedtuple, multi-output
    # ONNX): an index or a name. Required for those; see docs/models.md.
    output: Union[int, str, None] = Field(None, description="which output F is made of, by index or name; "
                                          "required for models with several (docs/models.md)")
    timm: str | None = Field(None, description="a timm architecture by name; model.path is its local checkpoint "
                             "(`.pth`/`.safetensors`)")
    torchvision: str | None = Field(None, description="a torchvision architecture by name; model.path is its "
                                    "local checkpoint (`.pth`/`.safetensors`)")

    @model_validator(mode="after")
    def _needs_a_model(self) -> "ModelSection":  # noqa: D102
        builders = [key for key in ("factory", "timm", "torchvision") if getattr(self, key) is not None]
        if self.path is None and not builders:
            raise RuleError("set model.path (a model file or folder) or model.factory (module:function)", "model.path",
                            "model.factory")
        if len(builders) > 1:
            raise RuleError(f"set one of model.{' and model.'.join(builders)}: each builds the model",
                            *(f"model.{key}" for key in builders))
        if self.path is None and builders[0] != "factory":
            raise RuleError(f"model.{builders[0]} needs model.path: a local checkpoint (.pth or .safetensors); "
                            "igcli never downloads weights", f"model.{builders[0]}", "model.path")
        return self


Size = Union[int, tuple[int, int]]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class InputSection(Section):
    """How image files become model inputs."""

    kind: Literal["image", "text"] = Field("image", description="what the inputs are (docs/images.md, docs/text.md)")
    mode: Literal["L", "RGB", "BGR"] = Field("RGB", description="the model's channels and their order; mean and "
                                             "std follow it")
    layout: Literal["auto", "NCHW", "NHWC"] = Field("auto", description="auto: from the model where it tells "
                                                    "(docs/models.md)")
    resize: Size | None = Field(None, description="N: shorter side to N keeping aspect; [H, W]: exact size")
    crop: Size | None = Field(None, description="centre crop N or [H, W] after resizing")
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = Field(
        "bilinear", description="Pillow's resize filter")
    mean: tuple[float, ...] = Field((0.0,), description="per channel, on pixels in [0, 1]")
    std: tuple[float, ...] = Field((1.0,), description="per channel, on pixels in [0, 1]; each positive")
    extensions: tuple[str, ...] | None = Field(None, description="what folders and globs pick up; default by kind: "
                                               ".png .jpg .jpeg .webp .bmp .tif .tiff .gif, or .txt .jsonl")
    text_field: str = Field("text", description="text: the field of each .jsonl line that holds the document")
    max_length: int | None = Field(None, ge=2, description="text: tokens kept (default: the model's limit); longer "
                                   "documents are truncated with a warning")
    # The largest input file read, in bytes; larger ones (or devices) fail alone, unread.
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="the largest input file read, in bytes; larger ones "
                           "(or devices) fail alone, unread")

    def suffixes(self) -> tuple[str, ...]:
        """What folders and globs pick up."""
        if self.extensions is not None:
            return self.extensions
        return (".txt", ".jsonl") if self.kind == "text" else IMAGE_SUFFIXES

    def model_shape(self) -> tuple[int, int, int] | None:
        """[C, H, W] the model will see, when resize/crop fix it; None when it varies per image."""
        channels = 1 if self.mode == "L" else 3
        size = self.crop if self.crop is not None else self.resize
        if size is None or isinstance(size, int) and self.crop is None:
            return None
        height, width = (size, size) if isinstance(size, int) else size
        return channels, height, width

    @field_validator("resize", "crop")
    @classmethod
    def _positive_size(cls, size: Size | None) -> Size | None:
        if any(side < 1 for side in ((size,) if isinstance(size, int) else size or ())):
            raise ValueError("sizes are positive pixel counts: N, or [H, W]")
        return size

    @field_validator("resize", "crop")
    @classmethod
    def _within_bomb_limit(cls, size: Size | None) -> Size | None:
        # The images would be refused one by one (data/images.py), after the model probe asked for the memory.
        from PIL import Image

        limit = Image.MAX_IMAGE_PIXELS
        height, width = (size, size) if isinstance(size, int) else size or (0, 0)
        if limit is not None and height * width > limit:
            least = "at least " if isinstance(size, int) else ""
            raise ValueError(f"{least}{height}x{width} pixels, over Pillow's decompression-bomb limit of {limit:,}; "
                             "models take e.g. [224, 224]")
        return size

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in std):
            raise ValueError("every std must be positive")
        return std


class BaselineSection(Section):
    kind: BaselineKind = Field(BaselineKind.black, description="x', the input the path starts from; text inputs "
                               "default to zeros and take zeros, pad or token (docs/method.md)")
    samples: int = Field(1, ge=1, description="average IG over this many baselines (expected-gradients style), at "
                         "most 1024")
    seed: int = Field(0, description="seeds random baselines, with the input's path")
    value: float = Field(0.5, ge=0.0, le=1.0, description="pixel value for kind: constant")
    sigma: float | None = Field(None, gt=0, description="gaussian: noise std in [0, 1] units (over 1 refused); blur: pixels "
                                "(default per kind)")
    path: Path | None = Field(None, description="kind: file: an image preprocessed like the inputs, or a .npy in "
                              "model space")
    token: Union[int, str, None] = Field(None, description="kind: token (text): the token id or string to fill "
                                         "with, e.g. --set 'baseline.token=\"[MASK]\"'")
    # Warn when the target's probability at the baseline is more than this above chance (1/classes
    # for softmax and logits, 0.5 for sigmoid): the baseline then carries evidence for the target.
    warn_margin: float = Field(0.1, ge=0, le=1, description="warn when the target's probability at the baseline is "
                               "more than this above chance (docs/accuracy.md)")

    @model_validator(mode="after")
    def _file_needs_path(self) -> "BaselineSection":
        if self.kind is BaselineKind.file and self.path is None:
            raise RuleError("baseline.kind 'file' needs baseline.path (an image or .npy)", "baseline.kind")
        if self.kind is BaselineKind.token and self.token is None:
            raise RuleError("baseline.kind 'token' needs baseline.token (a token id or string)", "baseline.kind")
        return self

    @field_validator("samples")
    @classmethod
    def _few_baselines(cls, samples: int) -> int:
        return _samples_cap(samples, "each baseline is a whole IG run per input")

    @field_validator("sigma")
    @classmethod
    def _gaussian_in_pixel_units(cls, sigma: float | None, info: ValidationInfo) -> float | None:
        return _pixel_noise(sigma) if sigma is not None and info.data.get("kind") is BaselineKind.gaussian else sigma


class TopK(Section):
    top_k: int = Field(ge=1, description="one record per class, for the k highest-scoring classes")


class Above(Section):
    """Multi-label: every class whose score F(x) is over ``above`` (docs/targets.md)."""

    above: float = Field(description="multi-label: every class whose F(x) is over this")


class Region(Section):
    """Segmentation: F is class ``class``'s score summed over a region of the output's pixels:
    ``predicted`` (where that class is the argmax at the input) or a mask file (.png/.npy)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)
    class_: Union[int, str] = Field(alias="class", description="segmentation: the class, by index or label")
    region: Union[Literal["predicted"], Path] = Field("predicted", description="the output pixels summed: where "
                                                      "the class is the argmax at the input, or a mask file "
                                                      "(.png/.npy)")


class HeatmapSection(Section):
    style: Literal["overlay", "bare", "both", "none"] = Field("overlay", description="heatmap over the image, alone, "
                                                              "both, or no PNG")
    sign: Literal["positive", "negative", "absolute", "all"] = Field("all", description="all: red raised F, blue "
                                                                     "lowered it")
    clip_percentile: float = Field(99.0, gt=0, le=100, description="the colour scale ends at this percentile of "
                                   "|attribution|")
    opacity: float = Field(0.6, ge=0, le=1, description="of the heatmap over the input, for overlays")


class OutputSection(Section):
    heatmap: HeatmapSection = HeatmapSection()
    attributions: Literal["none", "npy"] = Field("none", description="npy: save the raw [C, H, W] attributions")
    records: bool = Field(True, description="one JSON file per record under records/")
    top_tokens: int = Field(5, ge=0, description="text: the highest-scoring tokens listed in each record")
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="parquet: results.parquet/ as well, the "
                                                "records as a Parquet dataset, one part per chunk (docs/runs.md)")


class SmoothGradSection(Section):
    """IG averaged over noisy copies of each input (docs/methods.md)."""

    samples: int = Field(ge=1, description="noisy copies of each input, at most 1024 (SmoothGrad's paper saw little "
                         "change past 50); their IG maps are averaged")
    sigma: float = Field(gt=0, description="the noise's std in pixel units ([0, 1], before input.mean/std); "
                         "over 1 is refused")
    seed: int = Field(0, description="seeds the noise, with each input's name (the same maps in any chunk)")

    @field_validator("sigma")
    @classmethod
    def _pixel_units(cls, sigma: float) -> float:
        return _pixel_noise(sigma)

    @field_validator("samples")
    @classmethod
    def _few_copies(cls, samples: int) -> int:
        return _samples_cap(samples, "each copy is a whole IG run per input; SmoothGrad's paper saw little change "
                            "past 50")


def _pixel_noise(sigma: float) -> float:
    """A noise std over 1 (the whole [0, 1] pixel range) is a unit mistake: 0-255 units, most likely."""
    if sigma > 1:
        units = f"; {sigma:g}/255 = {sigma / 255:.3g}" if sigma >= 2 else ""
        raise ValueError(f"the noise std is a fraction of the pixel range [0, 1] (0.1 to 0.2 is usual){units}")
    return sigma


MetricName = Literal["deletion", "insertion", "infidelity", "sensitivity"]


class FaithfulnessSection(Section):
    """Settings of the ``metrics`` (docs/nightly.md)."""

    steps: int = Field(20, ge=1, description="deletion/insertion: points on the curve past the first")
    fill: Literal["blur", "baseline"] = Field("blur", description="images: what replaces a pixel; text always "
                                              "uses the baseline")
    blur_sigma: float = Field(5.0, gt=0, description="fill blur: the Gaussian's sigma in pixels")
    samples: int = Field(10, ge=1, description="infidelity and sensitivity: perturbations per record, at most 1024 "
                         "(captum's default: 10)")
    noise: float = Field(0.1, gt=0, description="infidelity: the perturbations' std, in model-input units")
    radius: float = Field(0.02, gt=0, description="sensitivity: the perturbations' L-infinity radius (captum's "
                          "default)")
    seed: int = Field(0, description="seeds the perturbations, with each input's name and target")

    @field_validator("samples")
    @classmethod
    def _few_perturbations(cls, samples: int) -> int:
        return _samples_cap(samples, "each is a model pass per record (an IG run for sensitivity); captum's "
                            "default is 10")


class Config(Section):
    model: ModelSection
    input: InputSection = InputSection()
    baseline: BaselineSection = BaselineSection()
    # index | label | "predicted" | {top_k: k} | {above: t} | {class: k, region: predicted|mask file}
    target: Union[int, TopK, Above, Region, str] = Field("predicted", description="class index, label name, "
                                                         "predicted, or one of the forms below (docs/targets.md)")
    steps: Union[int, Literal["auto"]] = Field("auto", description="m: a fixed number of steps, at most "
                                               "65536 (intervals for adaptive); auto: refine each input until it meets the tolerances")
    method: Rule = Field(DEFAULT_RULE, description="the quadrature rule (docs/method.md)")
    tolerance: float = Field(0.01, gt=0, description="steps: auto: the relative completeness error that stops "
                             "refinement")
    # adaptive: also refine until the map's estimated relative L2 error is within (null: completeness only)
    map_tolerance: float | None = Field(DEFAULT_MAP_TOLERANCE, gt=0, description="adaptive: also refine until the "
                                        "map's estimated relative L2 error is within this (null: completeness only)")
    min_steps: int = Field(8, ge=1, description="steps: auto: where the fixed rules start (adaptive starts at 4 "
                           "intervals)")
    max_steps: int = Field(512, ge=1, description="steps: auto: the cap (at most 65536); a record that reaches it says "
                           "converged: false, stopped_by: max_steps")
    # Path points (inputs x baselines x steps) per backward; on a CPU, shared by the chunks in
    # flight (two on several cores: batches of half each, pipeline/overlap.py).
    # auto: from the model's measured activation memory on a CPU (igcli/backends/memory.py), 256 on a GPU.
    batch_size: Union[int, Literal["auto"]] = Field("auto", description="path points per forward/backward, shared "
                                                    "by the chunks in flight on a CPU; auto: from the model's "
                                                    "measured activation memory on a CPU (at most 256), 256 on a "
                                                    "GPU (docs/performance.md)")
    # Inputs explained together (a chunk holds this many to 1.5 times as many): more run faster, as the
    # adaptive rule's rounds are fewer and fuller, and hold more memory. auto: see the jobs.
    chunk_inputs: Union[int, Literal["auto"]] = Field("auto", description="inputs explained together (this many to "
                                                      "1.5 times as many); more run faster and hold more memory; "
                                                      "auto: enough that the first round fills 4 batches (adaptive) "
                                                      "or one, at most 96 images and 1 GiB of stored maps; 64 texts "
                                                      "(docs/performance.md)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    output: OutputSection = OutputSection()
    # Path methods and smoothing (docs/methods.md); at their defaults the run is plain IG.
    path: Literal["straight", "blur", "guided"] = Field("straight", description="the path from baseline to input: "
                                                        "straight (IG), blur (Blur IG), guided (Guided IG); "
                                                        "docs/methods.md")
    smoothgrad: SmoothGradSection | None = Field(None, description="{samples, sigma, seed}: IG averaged over "
                                                 "noisy copies of each input (SmoothGrad-IG)")
    layer: str | None = Field(None, description="torch models: IG at this module's output (a name from "
                              "named_modules); the heatmap sums channels, upsampled")
    regions: Literal["xrai"] | None = Field(None, description="images: xrai ranks regions of each map (XRAI) and "
                                           "writes regions/ranks/<name>.png and regions/overlays/<name>.png; needs igcli[regions] "
                                           "(docs/methods.md)")
    metrics: tuple[MetricName, ...] = Field((), description="faithfulness metrics per record: deletion, "
                                            "insertion, infidelity, sensitivity (docs/nightly.md)")
    faithfulness: FaithfulnessSection = FaithfulnessSection()
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)  # LATE_CHECKED keys: where each was set

    def origin(self, key: str) -> str:
        """Where top-level ``key`` was set (``file:line``, ``--set``, a flag), for checks after validation."""
        return self._origins.get(key, "config")

    @model_validator(mode="before")
    @classmethod
    def _text_default_baseline(cls, data: Any) -> Any:
        # The paper's text baseline is the zero embedding; black only means something for images.
        if isinstance(data, dict) and isinstance(data.get("input"), dict) and data["input"].get("kind") == "text":
            baseline = data.get("baseline")
            if baseline is None or isinstance(baseline, dict) and "kind" not in baseline:
                data = data | {"baseline": (baseline or {}) | {"kind": "zeros"}}
        return data

    @model_validator(mode="after")
    def _baseline_fits_input(self) -> "Config":
        image_kinds = set(BaselineKind) - TEXT_BASELINES | {BaselineKind.zeros}
        allowed = TEXT_BASELINES if self.input.kind == "text" else image_kinds
        if self.baseline.kind not in allowed:
            names = ", ".join(sorted(kind.value for kind in allowed))
            raise RuleError(f"baseline.kind '{self.baseline.kind.value}' does not apply to {self.input.kind} "
                            f"inputs; use one of: {names}", "baseline.kind", "input.kind")
        return self

    @model_validator(mode="after")
    def _region_needs_images(self) -> "Config":
        if isinstance(self.target, Region) and self.input.kind != "image":
            raise RuleError("target.region applies to image inputs (segmentation models) only", "target", "input.kind")
        return self

    @model_validator(mode="after")
    def _metrics_fit_target(self) -> "Config":
        if self.metrics and isinstance(self.target, Region):
            raise RuleError("metrics apply to class targets, not to target.region; set metrics: []", "metrics", "target")
        if "sensitivity" in self.metrics and self.input.kind == "text":
            raise RuleError("metrics: sensitivity applies to image inputs; use deletion, insertion, infidelity",
                            "metrics", "input.kind")
        return self

    @field_validator("layer", mode="before")
    @classmethod
    def _layer_name(cls, name: Any) -> Any:
        return str(name) if isinstance(name, int) and not isinstance(name, bool) else name  # nn.Sequential's "3"

    @model_validator(mode="after")
    def _methods_fit(self) -> "Config":
        chosen = [key for key in METHOD_KEYS if getattr(self, key) != Config.model_fields[key].default]
        if chosen and (self.input.kind != "image" or isinstance(self.target, Region)):
            raise RuleError(f"{chosen[0]} applies to image inputs with a class target; remove it", chosen[0],
                            "input.kind", "target")
        if len(chosen) > 1:
            raise RuleError(f"set one of {' and '.join(chosen)}: they do not combine yet", *chosen)
        if self.path == "guided" and self.baseline.samples > 1:
            raise RuleError("path guided takes one baseline per input; set baseline.samples: 1", "baseline.samples",
                            "path")
        return self

    @model_validator(mode="after")
    def _regions_fit(self) -> "Config":
        if self.regions is None:
            return self
        if self.input.kind != "image" or isinstance(self.target, Region):
            raise RuleError("regions applies to image inputs with a class target; remove it", "regions",
                            "input.kind", "target")
        if self.layer is not None:
            raise RuleError("regions ranks regions of a map shaped like the input; layer IG's map is the layer's; "
                            "remove regions or layer", "regions", "layer")
        return self

    @field_validator("steps", "chunk_inputs", "batch_size")
    @classmethod
    def _positive_or_auto(cls, value: int | str, info: ValidationInfo) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{info.field_name} must be a positive integer or 'auto'")
        return value

    @field_validator("steps", "max_steps")
    @classmethod
    def _steps_cap(cls, value: int | str, info: ValidationInfo) -> int | str:
        # Beyond this a run takes hours per input and gains nothing measurable over the reference rule.
        if isinstance(value, int) and value > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS}; gausslegendre with 1024 steps is a reference map already "
                             "(docs/accuracy.md)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        head, _, index = device.partition(":")
        if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return device


MAX_STEPS = 65536
LATE_CHECKED = ("layer",)  # keys checked against the model: Config.origin names where they were set
METHOD_KEYS = ("path", "smoothgrad", "layer")  # absent from resolved() at their defaults: run keys stay as they were

PATH_KEYS: tuple[KeyPath, ...] = (("model", "path"), ("model", "labels"), ("model", "tokenizer"),
                                  ("baseline", "path"))


def load_config(path: Path | None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Read ``path`` (optional), apply ``overrides`` in order, and validate.

    Each override is ("a.b=value" text from --set, origin) or ((key, path), value) from a flag.
    Relative paths in the file are taken from the file's folder, so a config works from any cwd.
    """
    return validate(read_config(path, overrides))


def read_config(path: Path | None, overrides: list[tuple[str, Any]] = ()) -> ConfigSource:
    """The raw data of load_config, before validation, with where each key came from."""
    source = read_yaml(path) if path is not None else ConfigSource()
    if path is not None:
        _anchor_paths(source, path.parent)
    for item, origin in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        apply_override(source, key, value, origin)
    return source


def _anchor_paths(source: ConfigSource, folder: Path) -> None:
    for key in PATH_KEYS:
        section = source.data.get(key[0])
        if isinstance(section, dict) and isinstance(section.get(key[1]), str):
            section[key[1]] = str(_anchored(folder, section[key[1]]))
    target = source.data.get("target")
    if isinstance(target, dict) and isinstance(target.get("region"), str) and target["region"] != "predicted":
        target["region"] = str(_anchored(folder, target["region"]))
    model = source.data.get("model")
    factory = model.get("factory") if isinstance(model, dict) else None
    if isinstance(factory, str) and ".py:" in factory:
        file, _, function = factory.rpartition(":")
        model["factory"] = f"{_anchored(folder, file)}:{function}"


def _anchored(folder: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else Path(os.path.normpath(folder / candidate))


def validate(source: ConfigSource) -> Config:
    """Validate raw data into a Config; the first problem becomes one ConfigError line."""
    try:
        config = Config.model_validate(source.data)
        config._origins = {key: source.origin((key,)) for key in LATE_CHECKED}
        return config
    except ValidationError as error:
        # Union fields report one error per member; the deepest location is the informative one.
        details = error.errors()
        # An unknown key in one member is no news where another member has it: its error is the one to show.
        known = {_key_of(d) for d in details if d["type"] != "extra_forbidden"}
        # A bad value given beats a key that another member misses (target: {above: .nan} is no missing top_k).
        worst = max(details, key=lambda d: (len(d["loc"]), d["type"] == "extra_forbidden" and _key_of(d) not in known,
                                             d["type"] not in ("missing", "extra_forbidden")))
        raise ConfigError(describe_error(worst, source)) from None


def late_error(config: Config, key: str, message: str) -> ConfigError:
    """A ConfigError for top-level ``key`` found wrong after validation (a layer the model lacks): one
    line naming where it was set, and null's hint where the value was a word for off."""
    return ConfigError(f"{config.origin(key)}: {message}{_off_hint((key,), getattr(config, key))}")


def _key_of(detail: dict[str, Any]) -> KeyPath:
    return tuple(str(part) for part in detail["loc"] if not _is_union_tag(part))


def describe_error(detail: dict[str, Any], source: ConfigSource) -> str:
    loc = _key_of(detail)
    dotted = ".".join(loc) or "config"
    where = source.origin(loc)
    if detail["type"] == "extra_forbidden":
        hint = _nearest_key(loc)
        if hint == dotted:  # a key of one form of a union section, next to a key of another form
            return f"{where}: '{dotted}' does not go with the other keys of '{'.'.join(loc[:-1])}'; keep one form's keys"
        return f"{where}: unknown key '{dotted}'" + (f"; did you mean '{hint}'?" if hint else "")
    if detail["type"] == "missing":
        hint = "; set model.path (or --model) or model.factory" if loc == ("model",) else ""
        return f"{where}: missing required key '{dotted}'{hint}"
    message = detail["msg"].removeprefix("Value error, ")
    rule = (detail.get("ctx") or {}).get("error")
    if isinstance(rule, RuleError):
        return f"{_rule_origin(rule.keys, source)}: {_short(message)}"
    if not loc:  # a rule across keys: its message names them, and the whole config is no help to show
        return f"{where}: {_short(message)}"
    if detail["type"] == "model_type":  # a scalar where a section is due (`--set model=x.pt`)
        keys = ", ".join(f"{dotted}.{name}" for name in list(_section_keys(loc))[:3])
        off = _off_hint(loc, detail.get("input"))
        return f"{where}: '{dotted}' is a section: give its keys ({keys}, ...), not a value{off}"
    got = detail.get("input")
    return f"{where}: '{dotted}': {_short(message)} (got {_short(repr(got))}){_off_hint(loc, got)}"


def _section_keys(loc: KeyPath) -> dict[str, Any]:
    """The fields of the section at ``loc``, or none where ``loc`` is not one."""
    section: Any = Config
    for part in loc:
        field = section.model_fields.get(part) if isinstance(section, type) and issubclass(section, BaseModel) else None
        members = [m for m in typing.get_args(field.annotation) or (field.annotation,)] if field else []
        section = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
    return dict(section.model_fields) if section is not None else {}


def _off_hint(loc: KeyPath, value: Any) -> str:
    """A key that null turns off, given a word for off: say so."""
    words = ("none", "off", "no", "false", "disabled")
    field = Config.model_fields.get(loc[0]) if len(loc) == 1 else None
    nullable = field is not None and type(None) in typing.get_args(field.annotation)
    said_off = value is False or isinstance(value, str) and value.strip().lower() in words
    return f"; null (or leaving the key out) turns {loc[0]} off" if nullable and said_off else ""


def _rule_origin(keys: tuple[str, ...], source: ConfigSource) -> str:
    """Where a broken rule was set: the first of its keys that --set or a flag gave (the change
    that broke it), else the first the file gives."""
    origins = [source.origin(tuple(key.split("."))) for key in keys]
    overrides = [origin for origin in origins if origin.startswith("--")]
    return (overrides or [origin for origin in origins if origin != source.name] or [source.name])[0]


def _short(text: str, limit: int = 120) -> str:
    """One line of at most ``limit`` characters: a message never echoes a huge value."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member's name into locations ("int", "TopK", "literal[...]").
    return isinstance(part, str) and (part in ("int", "str", "TopK", "Above", "Region", "tuple[int, int]") or part.startswith(("literal[", "function-")))


def _nearest_key(loc: KeyPath) -> str | None:
    sections: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        field = sections[0].model_fields.get(part)
        members = typing.get_args(field.annotation) or (field.annotation,) if field else ()
        sections = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if not sections:
            return None
    # A union of sections (target: {top_k}, {above}, {class, region}) offers every member's keys.
    names = [f.alias or name for section in sections for name, f in section.model_fields.items()]
    matches = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.5)
    if matches:
        return ".".join(loc[:-1] + (matches[0],))
    # A key of a section one level down, written at this level (heatmap: for output.heatmap:).
    below = [(name, inner) for section in sections for name, f in section.model_fields.items()
             for inner in typing.get_args(f.annotation) or (f.annotation,)
             if isinstance(inner, type) and issubclass(inner, BaseModel) and loc[-1] in inner.model_fields]
    return ".".join(loc[:-1] + (below[0][0], loc[-1])) if below else None


def resolved(config: Config) -> dict[str, Any]:
    """The config as plain JSON-ready data, for manifests and `validate-config`."""
    unset = {key for key in METHOD_KEYS if getattr(config, key) == Config.model_fields[key].default}
    if config.regions is None:
        unset.add("regions")
    if not config.metrics:  # metrics off: manifests and run keys (--resume) stay as they were without them
        unset |= {"metrics", "faithfulness"}
    exclude: dict[str, Any] = dict.fromkeys(unset, True)
    if config.output.format == "jsonl":  # the default: manifests and run keys stay as they were without it
        exclude["output"] = {"format"}
    return config.model_dump(mode="json", exclude=exclude)
