"""`igcli export --output`: the one output of a multi-output model that a gradient graph differentiates,
chosen by index or name as ``model.output`` chooses it for explain (backends/outputs.py)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from igcli.backends.onnx.format import graph_outputs
from igcli.backends.outputs import (
    OutputChoiceError,
    OutputSelect,
    Selector,
    resolve_selector,
    select_output,
    selecting,
    shape_text,
)


def onnx_output_index(model, output: Selector) -> int | None:
    """The index of the ONNX graph output ``output`` names (None: the graph's only output); a graph
    with several outputs and no choice is refused with the list of them (exit 2)."""
    outputs = graph_outputs(model)
    listing = "; ".join(f"{i} {o.name!r} {shape_text(o.shape)}" for i, o in enumerate(outputs))
    with _as_option():
        return resolve_selector([o.name for o in outputs], output, listing)


def module_output(module: nn.Module, input_shape: tuple[int, ...], output: Selector) -> nn.Module:
    """``module`` returning the output ``output`` names alone, read from one forward at ``input_shape``
    (a module that will not run there is left to the exporter, which names the failure)."""
    try:
        with torch.no_grad():
            outputs = module(torch.zeros((1,) + tuple(input_shape)))
    except Exception:  # noqa: BLE001 - any model failure: the export reports it
        return module if output is None else OutputSelect(module, output)
    with _as_option():
        select_output(outputs, output, batch=1)  # refuses with the batch axis shown as N
        return selecting(module, outputs, output)


@contextmanager
def _as_option() -> Iterator[None]:
    """The output-choice errors in the words of `igcli export`'s option."""
    try:
        yield
    except OutputChoiceError as error:
        message = str(error).replace("--set model.output=", "--output ").replace("set model.output", "give --output")
        raise OutputChoiceError(message.replace("model.output", "--output")) from None
