"""Image models that bring their own architecture and preprocessing: Hugging Face folders, timm and
torchvision architectures by name with a local checkpoint, and state_dicts (.pth or .safetensors).

Nothing here downloads: Hugging Face loads run offline, and architectures are built without
pretrained weights before the checkpoint is loaded into them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from igcli.errors import ConfigError, ModelError, root_cause

log = logging.getLogger("igcli")
# Pillow's filters by the numbers Hugging Face processors store.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIXEL_MAX = 255.0  # igcli's pixels are in [0, 1]; Hugging Face processors rescale 0..255 by a factor


@dataclass(frozen=True)
class SourceDefaults:
    """What a model source says about its inputs; config keys the user set override each."""

    input: dict[str, Any] = field(default_factory=dict)  # mode, resize, crop, mean, std, resample
    labels: list[str] | None = None


def image_source(path: Path | None, timm: str | None = None,
                 torchvision: str | None = None) -> tuple[nn.Module | None, SourceDefaults]:
    """The module and defaults of a source that builds its own model; (None, no defaults) for a
    model file or factory, which models.loading reads."""
    if timm is not None:
        return architecture("timm", timm, path)
    if torchvision is not None:
        return architecture("torchvision", torchvision, path)
    if path is not None and is_huggingface_folder(path):
        return huggingface_image_classifier(path)
    return None, SourceDefaults()


def is_huggingface_folder(path: Path | None) -> bool:
    return path is not None and path.is_dir() and (path / "config.json").is_file()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint: .safetensors, or a torch.save'd state_dict, possibly wrapped in
    {"state_dict": ...} / {"model": ...} and with DDP's "module." prefix."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except ImportError:
        raise ModelError(f"{path}: reading .safetensors needs safetensors: pip install safetensors") from None
    except Exception as error:  # noqa: BLE001 - each format raises its own kinds
        raise ModelError(f"{path}: cannot read state_dict ({root_cause(error)})") from None
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not isinstance(state.get(key), Tensor):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state_dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_weights(module: nn.Module, path: Path, what: str) -> None:
    state = read_state_dict(path)
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ModelError(f"{path}: does not fit {what} ({root_cause(error)})") from None


# ---- Hugging Face image classifiers -------------------------------------------------------------


class HuggingFaceImageClassifier(nn.Module):
    """pixel_values -> a transformers image classifier's output: a dict of its tensors (``logits``
    alone unless its config asks for more), chosen from by model.output like any dict output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor):
        return self.model(pixel_values=pixel_values, return_dict=True)


def huggingface_image_classifier(folder: Path) -> tuple[nn.Module, SourceDefaults]:
    """The classifier in ``folder`` (AutoModelForImageClassification, offline, float32), with its
    preprocessing from preprocessor_config.json and labels from id2label."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise ModelError(f"{folder}: Hugging Face models need transformers: pip install 'igcli[hf]'") from None
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).float()
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds
        raise ModelError(f"{folder}: cannot load an image classifier ({root_cause(error)})") from None
    inputs = huggingface_preprocessing(folder, getattr(model.config, "num_channels", 3),
                                       getattr(model.config, "image_size", None))
    id2label = getattr(model.config, "id2label", None) or {}
    labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(len(id2label))] if id2label else None
    return HuggingFaceImageClassifier(model), SourceDefaults(inputs, labels)


def huggingface_preprocessing(folder: Path, channels: int = 3, image_size: Any = None) -> dict[str, Any]:
    """resize/crop/mean/std/mode/resample from ``folder``/preprocessor_config.json, in igcli's
    terms (pixels in [0, 1]). Without the file: the mode, and the model's ``image_size``, with a
    warning, as mean and std are then unknown."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        log.warning("%s has no preprocessor_config.json: set input.mean and input.std (and input.resize) as the "
                    "model was trained", folder)
        settings: dict[str, Any] = {"mode": "L" if channels == 1 else "RGB"}
        if isinstance(image_size, int):
            settings["resize"] = (image_size, image_size)
        return settings
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read the preprocessing ({error})") from None
    settings = {"mode": "L" if channels == 1 else "RGB"}
    settings.update(_hf_sizes(config, path))
    if config.get("resample") in PIL_FILTERS:
        settings["resample"] = PIL_FILTERS[config["resample"]]
    # x = (pixel * 255 * rescale_factor - mean) / std, with igcli's pixel in [0, 1].
    factor = PIXEL_MAX * (config.get("rescale_factor", 1 / PIXEL_MAX) if config.get("do_rescale", True) else 1.0)
    if config.get("do_normalize", True) and "image_mean" in config:
        mean, std = _per_channel(config["image_mean"]), _per_channel(config.get("image_std", 1.0))
    else:
        mean, std = (0.0,), (1.0,)
    settings["mean"] = tuple(m / factor for m in mean)
    settings["std"] = tuple(s / factor for s in std)
    return settings


def _per_channel(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)


def _hf_sizes(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """resize and crop as igcli's input.resize / input.crop."""
    sizes: dict[str, Any] = {}
    size, crop = config.get("size"), config.get("crop_size") if config.get("do_center_crop") else None
    if config.get("do_resize", True) and size is not None:
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" in size and "width" in size:
            sizes["resize"] = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            crop_pct = config.get("crop_pct")
            if crop_pct is None:
                sizes["resize"] = edge
            elif edge < 384:  # ConvNeXt's processor: resize to edge / crop_pct, then crop edge x edge
                sizes["resize"], crop = int(edge / crop_pct), edge
            else:
                sizes["resize"] = (edge, edge)
        else:
            raise ModelError(f"{path}: size {size} is not a classifier's resize igcli knows (height/width or "
                             "shortest_edge); set input.resize and input.crop")
    if crop:
        sizes["crop"] = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
    return sizes


# ---- timm and torchvision architectures by name -------------------------------------------------


def architecture(library: str, name: str, checkpoint: Path | None) -> tuple[nn.Module, SourceDefaults]:
    """``name`` from timm or torchvision, built without pretrained weights, then ``checkpoint`` loaded
    into it; the head is sized to the checkpoint's classes."""
    if checkpoint is None:  # the config refuses this first
        raise ConfigError(f"model.{library}: set model.path to the checkpoint to load into '{name}'")
    create, defaults = _builder(library, name)
    state = read_state_dict(checkpoint)
    module = create()
    classes = _checkpoint_classes(module, state)
    if classes is not None:
        module = create(num_classes=classes)
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise ModelError(f"{checkpoint}: does not fit {library} '{name}' ({root_cause(error)})") from None
    return module, defaults(module)


def _builder(library: str, name: str) -> tuple[Callable[..., nn.Module], Callable[[nn.Module], SourceDefaults]]:
    try:
        package = __import__(library)
        if library == "torchvision":
            import torchvision.models  # noqa: F401 - the builders' registry
    except Exception as error:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        raise ModelError(f"model.{library} needs {library} importable beside torch {torch.__version__} "
                         f"({root_cause(error)}); install a {library} built for this torch") from None
    if library == "timm":
        if not package.is_model(name):
            raise ConfigError(f"model.timm '{name}': not a timm architecture; `timm.list_models('*{name}*')` "
                              "lists the near ones")
        return (lambda **kw: package.create_model(name, pretrained=False, **kw)), _timm_defaults
    try:
        package.models.get_model_builder(name)
    except ValueError:
        raise ConfigError(f"model.torchvision '{name}': not a torchvision model; "
                          "`torchvision.models.list_models()` lists them") from None
    return (lambda **kw: package.models.get_model(name, weights=None, **kw)), lambda module: _torchvision_defaults(
        package, name)


def _torchvision_defaults(torchvision: Any, name: str) -> SourceDefaults:
    """The preprocessing of the architecture's default weights, read from their metadata (the weights
    themselves are not fetched); none where the architecture has no weights listed."""
    try:
        transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (AttributeError, ValueError, KeyError):
        return SourceDefaults()
    settings: dict[str, Any] = {"mean": tuple(transform.mean), "std": tuple(transform.std)}
    resize, crop = getattr(transform, "resize_size", None), getattr(transform, "crop_size", None)
    if resize:
        settings["resize"] = int(resize[0]) if len(resize) == 1 else tuple(int(v) for v in resize)
    if crop:
        settings["crop"] = (int(crop[0]), int(crop[-1]))
    interpolation = getattr(getattr(transform, "interpolation", None), "value", None)
    if interpolation in PIL_FILTERS.values():
        settings["resample"] = interpolation
    return SourceDefaults(settings)


def _timm_defaults(module: nn.Module) -> SourceDefaults:
    """timm's own preprocessing for the architecture (pretrained_cfg): size, crop, mean, std."""
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    settings: dict[str, Any] = {}
    if "input_size" in cfg:
        channels, height, width = cfg["input_size"]
        crop_pct = cfg.get("crop_pct") or 1.0
        settings["mode"] = "L" if channels == 1 else "RGB"
        settings["resize"] = int(min(height, width) / crop_pct)
        settings["crop"] = (int(height), int(width))
    if cfg.get("interpolation") in PIL_FILTERS.values():
        settings["resample"] = cfg["interpolation"]
    if "mean" in cfg and "std" in cfg:
        settings["mean"], settings["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    return SourceDefaults(settings)


def _checkpoint_classes(module: nn.Module, state: dict[str, Tensor]) -> int | None:
    """The class count of the checkpoint's head where it differs from the architecture's default:
    the last weight of the module's state_dict (its classifier) read in the checkpoint."""
    own = module.state_dict()
    heads = [key for key, value in own.items() if key.endswith("weight") and value.dim() in (2, 4)]
    if not heads or heads[-1] not in state:
        return None
    classes = int(state[heads[-1]].shape[0])
    return classes if classes != own[heads[-1]].shape[0] else None
