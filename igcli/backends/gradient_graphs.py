"""ONNX gradient graphs built from a model: exported and checked once, cached by the model's hash.

The ONNX gradient machinery (and onnx itself, a second to import) is imported when a graph is
first built, so runs on torch never load it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from igcli import __version__
from igcli.backends.base import ScoreKind
from igcli.backends.digests import source_sha256
from igcli.backends.onnx.format import TensorSpec
from igcli.errors import ModelError
from igcli.results.atomic_files import write_bytes_atomic

log = logging.getLogger("igcli")


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
    model, _ = checked_graph(build_module(), score, shape, sha, fixed_batch, source)
    try:
        write_bytes_atomic(cached, model.SerializeToString())
    except OSError as error:
        log.warning("cannot cache the gradient graph in %s (%s); it is rebuilt next time", cached.parent, error)
    return model


def only_output(model, chosen: int | None):
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


def checked_graph(source, score: ScoreKind, input_shape: tuple[int, ...], source_sha256: str,
                  fixed_batch: int | None = None, path: Path | None = None):
    """(gradient graph, GradientCheck) for a torch module or a plain ONNX model: onnx/check.py's
    checked_gradient_graph, imported on first use (see the module doc)."""
    from igcli.backends.onnx.check import checked_gradient_graph

    return checked_gradient_graph(source, score, input_shape, source_sha256, fixed_batch, path)
