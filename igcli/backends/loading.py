"""Turn a model file or factory into a Backend; each failure is one ModelError line.

What reads a model is decided once, by ``model_kind``, and looked up in MODULE_LOADERS:

  onnx         a .onnx file: a gradient graph, or a plain model run on torch or onnxruntime
  export       a torch.export program (.pt2)
  torchscript  a TorchScript archive (.pt/.ts)
  factory      ``pkg.mod:fn`` or ``file.py:fn``, with an optional state_dict (.pth or .safetensors)
  pickle       a pickled module, only when trusted (model.trust_pickle)
  other        not a model file: refused unless trusted, then read as a pickle

Hugging Face folders, timm and torchvision architectures build their own module
(backends/sources.py), which ``load_model`` takes as ``module``.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from igcli.backends.base import Backend, Precision, ScoreKind
from igcli.backends.devices import require_device
from igcli.backends.digests import file_sha256
from igcli.backends.gradient_graphs import cached_gradient_graph, checked_graph, only_output, resolve_input_shape
from igcli.backends.layout import PROBE_SIZE, InputInterface, adapted, onnx_layout, probe_module, resolve_layout
from igcli.backends.onnx.format import TensorSpec, graph_outputs, read_info, read_onnx
from igcli.backends.onnx.source import check_differentiable_input, onnx_to_torch
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.outputs import OutputSelect, SelectedOutput, Selector, resolve_selector, shape_text
from igcli.backends.sources import load_weights
from igcli.backends.torch_backend import TorchBackend, set_eval
from igcli.errors import ModelError, root_cause

log = logging.getLogger("igcli")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require_device(name, f"device {name}")
    return torch.device(name)


def load_model(
    path: Path | None, factory: str | None, score: ScoreKind, device: torch.device, trust_pickle: bool = False,
    *, backend: str = "auto", threads: int = 0, input_shape: tuple[int, ...] | None = None,
    precision: Precision = Precision.float32, output: Selector = None, layout: str = "auto",
    bgr: bool = False, channels: int | None = None, module: nn.Module | None = None,
) -> Backend:
    """Load the model and wrap it in the backend that runs it.

    ``backend`` auto runs torch models, and plain ONNX models whose batch axis is free (converted
    to torch), on torch, and gradient graphs and ONNX models fixed to one batch size on
    onnxruntime: on the CPU a converted ONNX model runs faster on torch than its gradient graph
    on onnxruntime (see docs/performance.md#onnx-route). onnxruntime for a torch
    model, or for a plain ONNX model, first builds an igcli gradient graph (cached by model hash),
    which needs ``input_shape`` (without the batch axis) unless the model fixes it.
    ``precision`` below float32 needs the torch backend (autocast is torch's).

    The Backend returned takes NCHW tensors in RGB (or L) order, ``input_shape`` being [C, H, W];
    ``layout`` (auto | NCHW | NHWC) and ``bgr`` say what the model takes (backends/layout.py), and
    ``output`` which of several outputs F is made of (backends/outputs.py). ``module``: a torch
    module already built (backends/sources.py), run instead of ``path``/``factory``. ``channels``
    (1 or 3) lets a torch module be probed where nothing fixes the input size.
    """
    if path is not None and not path.exists():
        raise ModelError(f"{path}: model file not found; check model.path or --model")
    use_threads(threads)
    if backend == "onnxruntime":
        _require_float32(precision)
    interface = InputInterface(reverse_channels=bgr)
    if module is None and path is not None and model_kind(path, factory) == "onnx":
        return _load_onnx(path, ScoreKind(score), device, backend, threads, input_shape, precision,
                          output, layout, interface)
    if module is None:
        module = load_module(path, factory, trust_pickle)
    set_eval(module)
    shape = input_shape or _example_shape(module)
    probe_shape = shape or ((channels, PROBE_SIZE, PROBE_SIZE) if channels is not None else None)
    if probe_shape is not None:
        # Where it will run; a module to export stays on the CPU, where it was loaded.
        probe_device = torch.device("cpu") if backend == "onnxruntime" else device
        module = module.to(probe_device)
        probed = probe_module(module, probe_shape, interface, layout, output, probe_device,
                              size_known=shape is not None)
        module, interface = probed.module, probed.interface
    elif output is not None:
        module = SelectedOutput(module, output)
    if backend == "onnxruntime":
        if shape is None:
            raise ModelError("backend onnxruntime needs the input size to build a gradient graph: "
                             "set input.resize: [H, W] or input.crop")
        source = path if path is not None else Path((factory or "").rpartition(":")[0])
        graph = cached_gradient_graph(source, ScoreKind(score), interface.model_shape(tuple(shape)), lambda: module,
                                      f"{factory or ''}|{getattr(module, 'key', '')}", interface.fixed_batch)
        return adapted(_onnxruntime_backend(graph, device, threads), interface)
    return adapted(TorchBackend(module, score, device, precision), interface)


def use_threads(threads: int) -> None:
    """torch's intra-op threads for the process (config model.threads); 0 leaves torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)


def _load_onnx(path: Path, score: ScoreKind, device: torch.device, backend: str, threads: int,
               input_shape: tuple[int, ...] | None, precision: Precision = Precision.float32,
               output: Selector = None, layout: str = "auto",
               interface: InputInterface = InputInterface()) -> Backend:
    model = read_onnx(path)
    info = read_info(model)
    if info is not None:
        if backend == "torch":
            raise ModelError(f"{path}: a gradient graph runs on onnxruntime; give its source model for backend torch")
        if info.score is not score:
            raise ModelError(f"{path}: exported with score '{info.score.value}' but model.score is "
                             f"'{score.value}'; set model.score: {info.score.value} or export again with --score")
        _require_float32(precision)
        detected = onnx_layout((None,) + tuple(info.input_shape))
        interface = replace(interface, layout=resolve_layout(detected, layout, f"{path} (input {list(info.input_shape)})"))
        return adapted(OnnxRuntimeBackend(model.SerializeToString(), info, device, threads), interface)
    spec = check_differentiable_input(model, path)
    interface = replace(interface, layout=resolve_layout(onnx_layout(spec.shape), layout, f"{path} (input "
                                                         f"'{spec.name}' {list(spec.shape)})"))
    outputs = graph_outputs(model)
    chosen = resolve_selector([o.name for o in outputs], output, "; ".join(
        f"{i} {o.name!r} {shape_text(o.shape)}" for i, o in enumerate(outputs)))
    _warn_double_softmax(model, path, score, chosen or 0)

    def module() -> nn.Module:
        converted = onnx_to_torch(model, path)
        return converted if chosen is None else OutputSelect(converted, chosen)

    if input_shape is not None:
        input_shape = interface.model_shape(tuple(input_shape))
    if backend == "torch" or backend == "auto" and not _fixed_batch(spec):
        return adapted(TorchBackend(module(), score, device, precision), interface)
    _require_float32(precision)
    shape, fixed_batch = resolve_input_shape(spec, input_shape, path)
    salt = "onnx-vjp" + (f"|output {chosen}" if chosen is not None else "")
    graph = cached_gradient_graph(path, score, shape, lambda: only_output(model, chosen), salt, fixed_batch)
    return adapted(_onnxruntime_backend(graph, device, threads), interface)


def _onnxruntime_backend(graph, device: torch.device, threads: int) -> OnnxRuntimeBackend:
    """An igcli gradient graph, just built or read from the cache, on onnxruntime."""
    info = read_info(graph)
    assert info is not None, "igcli's gradient graphs carry their metadata"
    return OnnxRuntimeBackend(graph.SerializeToString(), info, device, threads)


def _warn_double_softmax(model, path: Path, score: ScoreKind, output: int = 0) -> None:
    producers = {name: node.op_type for node in model.graph.node for name in node.output}
    last = producers.get(model.graph.output[output].name)
    if score is ScoreKind.softmax and last in ("Softmax", "Sigmoid"):
        log.warning("%s already ends in %s, and model.score softmax applies another; set model.score: logits "
                    "to attribute the model's own probabilities", path, last)


def _fixed_batch(spec: TensorSpec) -> bool:
    batch = spec.shape[0] if spec.shape else None
    return isinstance(batch, int) and batch > 0


def _require_float32(precision: Precision) -> None:
    if Precision(precision) is not Precision.float32:
        raise ModelError(f"model.precision {Precision(precision).value} runs on the torch backend only; set "
                         "model.backend: torch (plain ONNX files run there too) or model.precision: float32")


def _example_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input shape (without batch) an exported program was traced with, if it kept one."""
    example = getattr(module, "igcli_example_shape", None)
    return tuple(example) if example else None


def model_kind(path: Path | None, factory: str | None) -> str:
    """Which loader reads the model (see the module doc): a key of MODULE_LOADERS, or onnx."""
    if path is not None and path.suffix.lower() == ".onnx":
        return "onnx"
    if factory is not None and not _whole_model_file(path):
        return "factory"
    return _archive_kind(path)


def load_module(path: Path | None, factory: str | None, trust_pickle: bool = False) -> nn.Module:
    """The torch module from a factory (with an optional state_dict) or a model file."""
    if path is not None and not path.exists():
        raise ModelError(f"{path}: model file not found; check model.path or --model")
    kind = model_kind(path, factory)
    if kind == "factory":
        assert factory is not None
        return _build_from_factory(factory, path)
    if kind == "onnx":  # a torch module is wanted: .onnx is no archive torch reads, so "other"
        kind = _archive_kind(path)
    assert path is not None  # _archive_kind refuses None
    return MODULE_LOADERS[kind](path, trust_pickle)


def _whole_model_file(path: Path | None) -> bool:
    """A file that holds its architecture (.onnx, .pt2, .ts): loaded as it is, without model.factory,
    which builds the model for a state_dict only (so ``--model file.pt2`` works with any config)."""
    return path is not None and path.suffix.lower() in (".onnx", ".pt2", ".ts")


def _archive_kind(path: Path | None) -> str:
    """export | torchscript | pickle (a zip archive torch.save wrote) | other."""
    if path is None:  # the config refuses this first
        raise ModelError("no model: set model.path (or --model) or model.factory")
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


def _load_exported(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:  # noqa: BLE001 - any load failure is reported the same way
        raise ModelError(f"{path}: cannot load torch.export program ({root_cause(error)})") from None
    args = (program.example_inputs or ((), {}))[0]
    if args and isinstance(args[0], torch.Tensor):
        module.igcli_example_shape = tuple(args[0].shape[1:])
    return module


def _load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"{path}: cannot load TorchScript ({root_cause(error)})") from None


def _load_unknown(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise ModelError(
            f"{path}: not a model file igcli can read; expected TorchScript, a torch.export .pt2, "
            "or a state_dict saved by torch.save"
        )
    return _load_pickle(path, trust_pickle)


def _load_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # noqa: BLE001
        if not trust_pickle and "weights only load failed" in str(error).lower():
            raise ModelError(
                f"{path}: holds a pickled Python object, which runs code when loaded; export it with "
                "torch.export (.pt2), or set model.trust_pickle: true if you trust its source"
            ) from None
        raise ModelError(f"{path}: not a model file igcli can read ({root_cause(error)})") from None
    if isinstance(loaded, nn.Module):
        return loaded
    if isinstance(loaded, dict):
        raise ModelError(f"{path}: holds a state_dict; set model.factory (module:function) to build the model")
    raise ModelError(f"{path}: holds a {type(loaded).__name__}, not a model")


def _build_from_factory(factory: str, weights: Path | None) -> nn.Module:
    function = _resolve_factory(factory)
    try:
        module = function()
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a factory runs arbitrary code (docs/hostile-inputs.md)
        raise ModelError(f"model.factory '{factory}' failed: {_described(error)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"model.factory '{factory}' returned {type(module).__name__}, not a torch nn.Module")
    if weights is not None:
        load_weights(module, weights, f"model.factory '{factory}'")
    return module


# Model files by kind (model_kind) -> (path, trust_pickle) -> module; factories build their own.
MODULE_LOADERS: dict[str, Callable[[Path, bool], nn.Module]] = {
    "export": lambda path, trust: _load_exported(path),
    "torchscript": lambda path, trust: _load_torchscript(path),
    "pickle": _load_pickle,
    "other": _load_unknown,
}


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
    except (Exception, SystemExit) as error:  # noqa: BLE001 - importing runs the module's code
        raise ModelError(f"model.factory '{factory}': cannot import {location} ({_described(error)})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ModelError(f"model.factory '{factory}': {location} has no function '{name}'")
    return function


def _described(error: BaseException) -> str:
    """One line for an exception raised by a factory's code (a SystemExit is the code exiting)."""
    if isinstance(error, SystemExit):
        return f"it called exit({error.code!r})"
    return f"{type(error).__name__}: {root_cause(error)}"[:300]


def build_gradient_graph(path: Path, factory: str | None, score: ScoreKind, trust_pickle: bool = False,
                         input_shape: tuple[int, ...] | None = None, output: Selector = None):
    """`igcli export`: (the gradient graph of a torch model or a plain ONNX model, its GradientCheck).

    The graph passed the same check as the graphs `explain` builds (onnx/check.check_gradient_graph).
    ``output``: which of several outputs F is made of (backends/export_output.py)."""
    from igcli.backends.export_output import module_output, onnx_output_index

    if path is not None and model_kind(path, factory) == "onnx":
        model = read_onnx(path)
        if read_info(model) is not None:
            raise ModelError(f"{path}: already an igcli gradient graph")
        spec = check_differentiable_input(model, path)
        input_shape, fixed_batch = resolve_input_shape(spec, input_shape, path)
        model = only_output(model, onnx_output_index(model, output))
        return checked_graph(model, score, tuple(input_shape), file_sha256(path), fixed_batch, path)
    module = load_module(path, factory, trust_pickle)
    input_shape = input_shape or _example_shape(module)
    if input_shape is None:
        raise ModelError(f"{path}: give --input-shape C,H,W (the model's input without the batch axis)")
    module = module_output(module, tuple(input_shape), output)
    return checked_graph(module, score, tuple(input_shape), file_sha256(path), None, path)
