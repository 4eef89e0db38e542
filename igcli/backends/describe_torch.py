"""`igcli inspect` for models that are not ONNX: Hugging Face image folders, TorchScript, torch.export
programs (.pt2) and state_dicts (.pth/.safetensors) with a factory. A torch model declares no input
shape, so one forward on zeros at the size its preprocessing (or --input-shape) gives tells its
layout, fixed batch and outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from igcli.backends.layout import LAYOUTS, InputInterface
from igcli.backends.loading import _archive_kind, _example_shape, load_module
from igcli.backends.outputs import output_entries
from igcli.backends.sources import SourceDefaults, image_source, is_huggingface_folder
from igcli.errors import ModelError, root_cause


def describe_torch_model(path: Path, factory: str | None = None, trust_pickle: bool = False,
                         input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """What `igcli inspect` prints for a torch model: format, parameters, preprocessing and labels
    (Hugging Face), and, where the input size is known, inputs, layout, fixed batch and outputs."""
    module, defaults = image_source(path)
    form = "huggingface image folder" if module is not None else _format(path, factory)
    if module is None:
        module = load_module(path, factory, trust_pickle)
    report: dict[str, Any] = {"file": str(path), "format": form,
                              "parameters": sum(p.numel() for p in module.parameters())}
    if defaults.input:
        report["preprocessing"] = {key: list(value) if isinstance(value, tuple) else value
                                   for key, value in defaults.input.items()}
    if defaults.labels:
        report["labels"] = {"count": len(defaults.labels), "first": defaults.labels[:5]}
    shape = input_shape or _shape_from(defaults) or _example_shape(module)
    if shape is None:
        report["inputs"] = [{"name": "x", "shape": ["N", "C", "H", "W"]}]
        report["layout"] = "unknown until the input size is known: give --input-shape C,H,W"
        return report
    layout, batch, outputs = _probe(module, tuple(shape))
    height_width = (shape[1], shape[2], shape[0]) if layout == "NHWC" and len(shape) == 3 else tuple(shape)
    report["inputs"] = [{"name": "x", "shape": ["N" if batch != 1 else 1, *height_width]}]
    report["layout"] = layout
    if batch == 1:
        report["fixed_batch"] = 1
    report["outputs"] = [{"name": name, "shape": _with_batch(value, batch)} for name, value in outputs]
    return report


def _format(path: Path, factory: str | None) -> str:
    if factory is not None:
        return "state_dict + factory" if path is not None else "factory"
    kind = _archive_kind(path)
    return {"torchscript": "torchscript", "export": "torch.export program (.pt2)"}.get(kind, "pickled module")


def _shape_from(defaults: SourceDefaults) -> tuple[int, int, int] | None:
    """[C, H, W] the source's preprocessing gives: its crop, else a resize to a fixed size."""
    settings = defaults.input
    channels = 1 if settings.get("mode") == "L" else 3
    size = settings.get("crop") or settings.get("resize")
    if size is None or isinstance(size, int) and "crop" not in settings:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    return channels, int(height), int(width)


def _probe(module: nn.Module, shape: tuple[int, ...]) -> tuple[str, int | None, list[tuple[str, Any]]]:
    """(layout, 1 for a fixed batch of one else None, the outputs) of the first forward on zeros that
    runs: NCHW then NHWC, each at batch 2 then 1."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    failures: list[BaseException] = []
    for layout in LAYOUTS if len(shape) == 3 else ("NCHW",):
        interface = InputInterface(layout=layout)
        for batch in (2, 1):
            try:
                with torch.no_grad():
                    outputs = module(interface.to_model(torch.zeros((batch,) + shape, dtype=dtype)))
            except Exception as error:  # noqa: BLE001 - any failure means "not this way"
                failures.append(error)
                continue
            return layout, (1 if batch == 1 else None), output_entries(outputs)
    raise ModelError(f"model rejected an input shaped {[1, *shape]} ({root_cause(failures[-1])}); "
                     "give --input-shape C,H,W")


def _with_batch(value: Any, batch: int | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    dims = list(value.shape)
    if dims and batch is None:
        dims[0] = "N"
    return dims


def is_torch_source(path: Path) -> bool:
    """A model `inspect` reads as torch: a Hugging Face folder or anything that is not .onnx."""
    return is_huggingface_folder(path) or path.suffix.lower() != ".onnx"
