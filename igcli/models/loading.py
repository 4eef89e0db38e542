"""Turn a model file or factory into a Backend; each failure is one ModelError line.

Accepted: TorchScript (.pt/.ts), torch.export programs (.pt2), a factory ``pkg.mod:fn`` or
``file.py:fn`` optionally with a state_dict, and, only when trusted, a fully pickled module.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError, first_line
from .base import Backend, ScoreKind
from .torch_backend import TorchBackend


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device '{name}': no CUDA device is available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def load_model(
    path: Path | None, factory: str | None, score: ScoreKind, device: torch.device, trust_pickle: bool = False
) -> Backend:
    """Load the model and wrap it in the backend that runs it."""
    if path is not None and not path.exists():
        raise ModelError(f"{path}: model file not found; check model.path or --model")
    if factory is not None:
        module = _build_from_factory(factory, path)
    else:
        module = _load_file(path, trust_pickle)
    return TorchBackend(module, score, device)


def _load_file(path: Path, trust_pickle: bool) -> nn.Module:
    kind = _archive_kind(path)
    if kind == "export":
        try:
            return torch.export.load(str(path)).module()
        except Exception as error:  # noqa: BLE001 - any load failure is reported the same way
            raise ModelError(f"{path}: cannot load torch.export program ({first_line(error)})") from None
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return torch.jit.load(str(path), map_location="cpu")
            except Exception as error:  # noqa: BLE001
                raise ModelError(f"{path}: cannot load TorchScript ({first_line(error)})") from None
    if kind == "other" and not trust_pickle:
        raise ModelError(
            f"{path}: not a model file igcli can read; expected TorchScript, a torch.export .pt2, "
            "or a state_dict saved by torch.save"
        )
    return _load_pickle(path, trust_pickle)


def _archive_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "other"
    if any(name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("/archive_format") or name.endswith("/models/model.json") for name in names):
        return "export"
    return "pickle"


def _load_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # noqa: BLE001
        if not trust_pickle and "weights only load failed" in str(error).lower():
            raise ModelError(
                f"{path}: holds a pickled Python object, which runs code when loaded; export it with "
                "torch.export (.pt2), or set model.trust_pickle: true if you trust its source"
            ) from None
        raise ModelError(f"{path}: not a model file igcli can read ({first_line(error)})") from None
    if isinstance(loaded, nn.Module):
        return loaded
    if isinstance(loaded, dict):
        raise ModelError(f"{path}: holds a state_dict; set model.factory (module:function) to build the model")
    raise ModelError(f"{path}: holds a {type(loaded).__name__}, not a model")


def _build_from_factory(factory: str, weights: Path | None) -> nn.Module:
    module = _resolve_factory(factory)()
    if not isinstance(module, nn.Module):
        raise ModelError(f"model.factory '{factory}' returned {type(module).__name__}, not a torch nn.Module")
    if weights is not None:
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"{weights}: cannot read state_dict ({first_line(error)})") from None
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ModelError(f"{weights}: does not fit model.factory '{factory}' ({first_line(error)})") from None
    return module


def _resolve_factory(factory: str) -> Callable[[], object]:
    location, sep, name = factory.rpartition(":")
    if not sep or not location or not name:
        raise ModelError(f"model.factory '{factory}': expected 'package.module:function' or 'file.py:function'")
    try:
        if location.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(location).stem, location)
            if spec is None or spec.loader is None or not Path(location).exists():
                raise FileNotFoundError(location)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
    except (ImportError, FileNotFoundError) as error:
        raise ModelError(f"model.factory '{factory}': cannot import {location} ({first_line(error)})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ModelError(f"model.factory '{factory}': {location} has no function '{name}'")
    return function
