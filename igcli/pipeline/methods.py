"""The image job's path methods and smoothing (config path, smoothgrad, layer): which attribution
function runs a group, and what each record adds to say so. Plain IG never comes here."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import torch
from torch import nn

from igcli.attribution.baselines import Normalization
from igcli.attribution.engine import Explanation, Quadrature, TargetSpec
from igcli.attribution.guided import GuidedOptions, explain_guided
from igcli.attribution.layer import explain_layer, layer_map_to_input
from igcli.attribution.paths import DEFAULT_MAX_SIGMA, BlurPath, explain_path
from igcli.attribution.smooth import add_noise, explain_smoothed
from igcli.backends.base import Backend
from igcli.backends.batching import BatchSize
from igcli.backends.layer import LayerBackend, find_layer
from igcli.backends.loading import load_module
from igcli.backends.sources import image_source
from igcli.config import Config, late_error
from igcli.errors import ConfigError
from igcli.results.records import Attribution, Sample
from igcli.runtime.buffers import MapBuffers


def layer_module(config: Config, module: nn.Module | None) -> nn.Module:
    """The eager torch module whose layer ``config.layer`` names (``module``: one a model source
    built, else loaded from model.path/factory); a ConfigError when the model cannot take hooks
    at a layer or has no module of that name, before any output is written."""
    section, inputs = config.model, config.input
    if module is None and section.path is not None and section.path.suffix.lower() == ".onnx":
        raise ConfigError("layer: IG at a layer needs a torch model; an .onnx file has no modules to name")
    if inputs.mode == "BGR" or inputs.layout == "NHWC":
        raise ConfigError("layer: IG at a layer runs models that take NCHW RGB or L tensors; "
                          "remove layer or input.mode BGR / input.layout NHWC")
    if section.path is not None and section.path.suffix.lower() in (".ts", ".pt2"):
        raise ConfigError(f"layer: {section.path.name} runs its modules as one compiled graph, which takes no "
                          "hooks at a layer; give an eager model (model.factory, a state_dict with a factory, "
                          "model.timm/torchvision, a Hugging Face folder) or remove layer")
    if module is None:
        module = load_module(section.path, section.factory, section.trust_pickle)
    if isinstance(module, torch.jit.ScriptModule):
        raise ConfigError("layer: a TorchScript model takes no hooks at a layer; give an eager model "
                          "(model.factory) or remove layer")
    configured_layer(config, module)  # a wrong name fails here
    return module


def configured_layer(config: Config, module: nn.Module) -> nn.Module:
    """The module ``config.layer`` names; a ConfigError naming where layer was set otherwise."""
    try:
        return find_layer(module, config.layer or "")
    except ConfigError as error:
        raise late_error(config, "layer", str(error)) from None


def layer_check_line(config: Config) -> str:
    """validate-config's word on ``config.layer``: checked against the model's modules where the model
    is here (built as explain builds it), else a note that explain checks it before any work."""
    section = config.model
    if section.path is not None and not section.path.exists():
        return f"layer '{config.layer}': not checked, {section.path} is not here; explain checks it before any work"
    module, _ = image_source(section.path, section.timm, section.torchvision)
    layer = configured_layer(config, layer_module(config, module))
    return f"layer '{config.layer}': found in the model ({type(layer).__name__})"


class Methods:
    """One configured method for a run's groups of same-shaped images."""

    def __init__(self, config: Config, normalization: Normalization, module: nn.Module | None, device: torch.device):
        self.config, self.normalization, self.device = config, normalization, device
        self.module = layer_module(config, module) if config.layer is not None else module
        self.layers: dict[tuple[int, ...], LayerBackend] = {}

    @staticmethod
    def of(config: Config, normalization: Normalization, module: nn.Module | None,
           device: torch.device) -> "Methods | None":
        """The run's method, or None for plain IG."""
        if config.path == "straight" and config.smoothgrad is None and config.layer is None:
            return None
        return Methods(config, normalization, module, device)

    def _layer_backend(self, shape: tuple[int, ...]) -> LayerBackend:
        if shape not in self.layers:
            self.layers[shape] = LayerBackend(self.module, self.config.layer, self.config.model.score, shape,
                                              self.device)
        return self.layers[shape]

    def explain(self, backend: Backend, inputs: torch.Tensor, baselines: torch.Tensor, group: list[Sample],
                target: TargetSpec, quadrature: Quadrature, batch: BatchSize,
                buffers: MapBuffers) -> tuple[list[Explanation], list[dict[str, Any]]]:
        """The group's explanations, and per explanation what its record adds (``annotate``)."""
        config = self.config
        if config.layer is not None:
            layer = self._layer_backend(tuple(inputs.shape[1:]))
            explanations = explain_layer(layer, inputs, baselines, target, quadrature, batch, buffers)
            size = tuple(inputs.shape[-2:])
            extras = [{"display": layer_map_to_input(e.attributions, size),
                       "layer": {"name": config.layer, "shape": list(layer.layer_shape)}} for e in explanations]
            return explanations, extras
        if config.path == "blur":
            path = BlurPath(inputs.to(backend.device, backend.dtype), DEFAULT_MAX_SIGMA)
            explanations = explain_path(backend, path, inputs, target, quadrature, batch, buffers)
            start = {"kind": "blurred", "max_sigma": DEFAULT_MAX_SIGMA}
            return explanations, [{"baseline": start, "path": {"kind": "blur", "max_sigma": DEFAULT_MAX_SIGMA}}
                                  for _ in explanations]
        if config.path == "guided":
            options = GuidedOptions()
            explanations = explain_guided(backend, inputs, baselines[:, 0], target, quadrature, batch, options)
            path = {"kind": "guided", "fraction": options.fraction, "max_dist": options.max_dist}
            return explanations, [{"path": path} for _ in explanations]
        smoothing = config.smoothgrad
        sigma = tuple(smoothing.sigma / s for s in self.normalization.std)  # pixel units -> the model's
        # Each input's noise from its own generator: it does not depend on the other inputs of its chunk.
        noisy = torch.cat([
            add_noise(inputs[n:n + 1], smoothing.samples, sigma if len(sigma) > 1 else sigma[0],
                      torch.Generator().manual_seed(smoothing.seed * 1_000_003 + zlib.crc32(sample.relpath.encode())))
            for n, sample in enumerate(group)])
        result = explain_smoothed(backend, inputs, noisy, baselines, target, quadrature, batch, buffers)
        record = {"samples": smoothing.samples, "sigma": smoothing.sigma, "seed": smoothing.seed}
        return result.explanations, [{"smoothgrad": record | {"f_input_clean": f}} for f in result.f_clean]

    @staticmethod
    def annotate(record: Attribution, extra: dict[str, Any]) -> Attribution:
        """``record`` with the method's keys: new keys after the usual ones, the start in place of the baseline."""
        details = {key: value for key, value in extra.items() if key not in ("display", "baseline")}
        changes: dict[str, Any] = {"details": record.details | details}
        if "display" in extra:
            changes["display"] = extra["display"]
        if "baseline" in extra:
            changes["baseline"] = extra["baseline"]
        return dataclasses.replace(record, **changes)
