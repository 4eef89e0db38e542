"""Turn a model file or factory into a Backend; each failure is one ModelError line.

Accepted: TorchScript (.pt/.ts), torch.export programs (.pt2), a factory ``pkg.mod:fn`` or
``file.py:fn`` optionally with a state_dict, and, only when trusted, a fully pickled module.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from igcli import __version__
from igcli.errors import ModelError, root_cause
from igcli.results.atomic_files import write_bytes_atomic
from igcli.backends.base import Backend, Precision, ScoreKind
from igcli.backends.onnx.export import checked_gradient_graph, read_info
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.layout import PROBE_SIZE, InputInterface, adapted, onnx_layout, probe_module, resolve_layout
from igcli.backends.onnx.source import (TensorSpec, check_differentiable_input, file_sha256, graph_outputs, onnx_to_torch, read_onnx)
from igcli.backends.outputs import OutputSelect, SelectedOutput, Selector, resolve_selector, shape_text
from igcli.backends.sources import load_weights
from igcli.backends.torch_backend import TorchBackend, set_eval

log = logging.getLogger("igcli")


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
    path: Path | None, factory: str | None, score: ScoreKind, device: torch.device, trust_pickle: bool = False,
    *, backend: str = "auto", threads: int = 0, input_shape: tuple[int, ...] | None = None,
    precision: Precision = Precision.float32, output: Selector = None, layout: str = "auto",
    bgr: bool = False, channels: int | None = None, module: nn.Module | None = None,
) -> Backend:
    """Load the model and wrap it in the backend that runs it.

    ``backend`` auto runs torch models, and plain ONNX models whose batch axis is free (converted
    to torch), on torch, and gradient graphs and ONNX models fixed to one batch size on
    onnxruntime: on the CPU a converted ONNX model's forward + input gradient ran at twice the
    rate of its gradient graph on onnxruntime (benchmarks/RESULTS.md). onnxruntime for a torch
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
    onnx_file = module is None and path is not None and path.suffix.lower() == ".onnx"
    if backend == "onnxruntime":
        _require_float32(precision)
    interface = InputInterface(reverse_channels=bgr)
    if onnx_file:
        return _load_onnx(path, ScoreKind(score), device, backend, threads, input_shape, precision,
                          output, layout, interface)
    if module is None:
        module = load_module(path, factory, trust_pickle)
    set_eval(module)
    shape = input_shape or _example_shape(module)
    if shape is not None or channels is not None:
        # Where it will run; a module to export stays on the CPU, where it was loaded.
        probe_device = torch.device("cpu") if backend == "onnxruntime" else device
        module = module.to(probe_device)
        probed = probe_module(module, shape or (channels, PROBE_SIZE, PROBE_SIZE), interface, layout, output,
                              probe_device, size_known=shape is not None)
        module, interface = probed.module, probed.interface
    elif output is not None:
        module = SelectedOutput(module, output)
    if backend == "onnxruntime":
        if shape is None:
            raise ModelError("backend onnxruntime needs the input size to build a gradient graph: "
                             "set input.resize: [H, W] or input.crop")
        source = path if path is not None else Path(factory.rpartition(":")[0])
        graph = cached_gradient_graph(source, ScoreKind(score), interface.model_shape(tuple(shape)), lambda: module,
                                      f"{factory or ''}|{getattr(module, 'key', '')}", interface.fixed_batch)
        return adapted(OnnxRuntimeBackend(graph.SerializeToString(), read_info(graph), device, threads), interface)
    return adapted(TorchBackend(module, score, device, precision), interface)


def use_threads(threads: int) -> None:
    """torch's intra-op threads for the process (config model.threads); 0 leaves torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)


def load_module(path: Path | None, factory: str | None, trust_pickle: bool = False) -> nn.Module:
    """The torch module from a factory (with an optional state_dict) or a model file."""
    if path is not None and not path.exists():
        raise ModelError(f"{path}: model file not found; check model.path or --model")
    if factory is not None and not _whole_model_file(path):
        return _build_from_factory(factory, path)
    return _load_file(path, trust_pickle)


def _whole_model_file(path: Path | None) -> bool:
    """A file that holds its architecture (.onnx, .pt2, .ts): loaded as it is, without model.factory,
    which builds the model for a state_dict only (so ``--model file.pt2`` works with any config)."""
    return path is not None and path.suffix.lower() in (".onnx", ".pt2", ".ts")


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
    graph = cached_gradient_graph(path, score, shape, lambda: _only_output(model, chosen), salt, fixed_batch)
    return adapted(OnnxRuntimeBackend(graph.SerializeToString(), read_info(graph), device, threads), interface)


def _only_output(model, chosen: int | None):
    """``model`` with output ``chosen`` as its only output (the gradient graph differentiates the first)."""
    if chosen is None or chosen == 0 and len(model.graph.output) == 1:
        return model
    import onnx

    kept = onnx.ValueInfoProto()
    kept.CopyFrom(model.graph.output[chosen])
    single = onnx.ModelProto()
    single.CopyFrom(model)
    del single.graph.output[:]
    single.graph.output.append(kept)
    return single


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


def resolve_input_shape(spec: TensorSpec, configured: tuple[int, ...] | None, path: Path):
    """(input shape without batch, fixed batch size or None) from the ONNX input and the config."""
    batch, dims = spec.shape[0] if spec.shape else None, tuple(spec.shape[1:])
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        if configured is not None and tuple(configured) != dims:
            raise ModelError(f"{path}: the model takes inputs shaped {list(dims)} but the config gives "
                             f"{list(configured)}; check input.mode, input.resize and input.crop")
        return dims, fixed_batch
    if configured is None:
        raise ModelError(f"{path}: input '{spec.name}' has free dimensions {list(spec.shape)}; "
                         "set input.resize: [H, W] (or input.crop) so igcli can build its gradient graph")
    return tuple(configured), fixed_batch


def cache_dir() -> Path:
    """Where gradient graphs built on the fly are kept: $IGCLI_CACHE_DIR, else ~/.cache/igcli."""
    return Path(os.environ.get("IGCLI_CACHE_DIR") or Path.home() / ".cache" / "igcli") / "gradient-graphs"


def cached_gradient_graph(source: Path, score: ScoreKind, shape: tuple[int, ...], build_module: Callable,
                          salt: str = "", fixed_batch: int | None = None):
    """The gradient graph for ``source``, from the cache or exported now and cached atomically."""
    import onnx

    sha = source_sha256(source)
    key = hashlib.sha256(f"{sha}|{salt}|{score.value}|{shape}|{fixed_batch}|{__version__}|{torch.__version__}"
                         .encode()).hexdigest()[:20]
    cached = cache_dir() / f"{source.stem}-{key}.grad.onnx"
    if cached.exists():
        try:
            return onnx.load(str(cached))
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            log.warning("%s: damaged cache entry, rebuilding", cached)
    log.info("building the gradient graph for %s (once; cached in %s)", source, cached.parent)
    model, _ = checked_gradient_graph(build_module(), score, shape, sha, fixed_batch, source)
    try:
        write_bytes_atomic(cached, model.SerializeToString())
    except OSError as error:
        log.warning("cannot cache the gradient graph in %s (%s); it is rebuilt next time", cached.parent, error)
    return model


def source_sha256(source: Path) -> str:
    """sha256 of a model file, or of every file's name and bytes in a model folder (Hugging Face)."""
    if not source.is_dir():
        return file_sha256(source)
    digest = hashlib.sha256()
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"\0{file.relative_to(source)}\0{file_sha256(file)}".encode())
    return digest.hexdigest()


def _example_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input shape (without batch) an exported program was traced with, if it kept one."""
    example = getattr(module, "igcli_example_shape", None)
    return tuple(example) if example else None


def _load_file(path: Path, trust_pickle: bool) -> nn.Module:
    kind = _archive_kind(path)
    if kind == "export":
        try:
            program = torch.export.load(str(path))
            module = program.module()
        except Exception as error:  # noqa: BLE001 - any load failure is reported the same way
            raise ModelError(f"{path}: cannot load torch.export program ({root_cause(error)})") from None
        args = (program.example_inputs or ((), {}))[0]
        if args and isinstance(args[0], torch.Tensor):
            module.igcli_example_shape = tuple(args[0].shape[1:])
        return module
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return torch.jit.load(str(path), map_location="cpu")
            except Exception as error:  # noqa: BLE001
                raise ModelError(f"{path}: cannot load TorchScript ({root_cause(error)})") from None
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

    The graph passed the same check as the graphs `explain` builds (export.check_gradient_graph).
    ``output``: which of several outputs F is made of (backends/export_output.py)."""
    from igcli.backends.export_output import module_output, onnx_output_index

    if path is not None and path.suffix.lower() == ".onnx":
        model = read_onnx(path)
        if read_info(model) is not None:
            raise ModelError(f"{path}: already an igcli gradient graph")
        spec = check_differentiable_input(model, path)
        input_shape, fixed_batch = resolve_input_shape(spec, input_shape, path)
        model = _only_output(model, onnx_output_index(model, output))
        return checked_gradient_graph(model, score, tuple(input_shape), file_sha256(path), fixed_batch, path)
    module = load_module(path, factory, trust_pickle)
    input_shape = input_shape or _example_shape(module)
    if input_shape is None:
        raise ModelError(f"{path}: give --input-shape C,H,W (the model's input without the batch axis)")
    module = module_output(module, tuple(input_shape), output)
    return checked_gradient_graph(module, score, tuple(input_shape), file_sha256(path), None, path)
