"""Which of a model's outputs F is made of (config ``model.output``).

A forward may return a tensor, a tuple or list, a namedtuple, or a dict (Hugging Face
``ModelOutput`` is one). One tensor is used as it is; with several, ``model.output`` names one by
index or name, and without it the model is refused with the list of its outputs, since taking the
first silently explains whatever that happens to be (a detector's box offsets, say).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from igcli.errors import ConfigError

Selector = int | str | None


class OutputChoiceError(ConfigError):
    """The model has several outputs and model.output names none of them (exit 2, nothing ran)."""


def output_entries(outputs: Any) -> list[tuple[str, Any]]:
    """(name, value) for every output: dict keys, namedtuple fields, else positions."""
    if isinstance(outputs, dict):
        return [(str(key), value) for key, value in outputs.items()]
    if isinstance(outputs, (tuple, list)):
        fields = getattr(outputs, "_fields", None)
        return [(str(fields[i]) if fields else str(i), value) for i, value in enumerate(outputs)]
    return [("0", outputs)]


def first_output(outputs: Any) -> Any:
    """The first of a tuple or list of outputs; anything else as it is."""
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def as_columns(outputs: Tensor) -> Tensor:
    """Scores [B] as one column [B, 1]; any other shape as it is."""
    return outputs.unsqueeze(1) if outputs.dim() == 1 else outputs


def shape_text(dims: Sequence[Any]) -> str:
    """[N, 10]-style shapes: free dimensions by name, unknown ones as ?."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def describe_outputs(entries: Sequence[tuple[str, Any]], batch: int | None = None) -> str:
    """``0 'name' [N, classes]`` for each output, for error messages; a first dimension equal to
    ``batch`` is shown as N."""
    parts = []
    for index, (name, value) in enumerate(entries):
        if isinstance(value, Tensor):
            dims = list(value.shape)
            shape = shape_text(["N"] + dims[1:] if dims and batch is not None and dims[0] == batch else dims)
        else:
            shape = type(value).__name__
        parts.append(f"{index} {name!r} {shape}" if name != str(index) else f"{index} {shape}")
    return "; ".join(parts)


def resolve_selector(names: Sequence[str], selector: Selector, listing: str) -> int | None:
    """The index ``selector`` picks among outputs named ``names``; None for a single output and no
    selector. ``listing`` describes the outputs for the error messages."""
    if selector is None:
        if len(names) == 1:
            return None
        raise OutputChoiceError(f"the model has {len(names)} outputs ({listing}); set model.output to the index "
                                "or name of the one to explain, e.g. --set model.output=0")
    if isinstance(selector, int):
        if -len(names) <= selector < len(names):
            return selector % len(names)
        raise OutputChoiceError(f"model.output {selector}: the model has {len(names)} output(s) ({listing})")
    if selector in names:
        return list(names).index(selector)
    if selector.isdigit() and int(selector) < len(names):
        return int(selector)
    raise OutputChoiceError(f"model.output {selector!r}: no output of that name; the outputs are {listing}")


def select_output(outputs: Any, selector: Selector = None, batch: int | None = None) -> Tensor:
    """The one output tensor F is made of (see module doc); ``batch``: the input's, for messages."""
    if isinstance(outputs, Tensor) and selector in (None, 0, "0"):
        return outputs
    entries = output_entries(outputs)
    index = resolve_selector([name for name, _ in entries], selector, describe_outputs(entries, batch))
    chosen = entries[index or 0][1]
    if not isinstance(chosen, Tensor):
        raise OutputChoiceError(f"model.output {selector!r} is a {type(chosen).__name__}, not a tensor; the outputs "
                                f"are {describe_outputs(entries, batch)}")
    return chosen


class OutputSelect(nn.Module):
    """``inner``'s output ``key`` (a position or a dict key): one plain item access, so the result
    still traces (torch.fx, torch.export) where ``inner`` does."""

    def __init__(self, inner: nn.Module, key: int | str):
        super().__init__()
        self.inner, self.key = inner, key

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[self.key]


class SelectedOutput(nn.Module):
    """``inner``'s output picked by ``selector`` at each call, for models whose outputs were not
    seen before the first input (nothing fixed the input size)."""

    def __init__(self, inner: nn.Module, selector: Selector):
        super().__init__()
        self.inner, self.selector = inner, selector

    def forward(self, x: Tensor) -> Tensor:
        return select_output(self.inner(x), self.selector, len(x))


def selecting(module: nn.Module, outputs: Any, selector: Selector) -> nn.Module:
    """``module`` made to return the selected output alone, given a sample of its ``outputs``."""
    if isinstance(outputs, Tensor):
        select_output(outputs, selector)  # only 0 fits a single tensor
        return module
    select_output(outputs, selector)  # refuses ambiguity and non-tensors
    entries = output_entries(outputs)
    index = resolve_selector([name for name, _ in entries], selector, describe_outputs(entries)) or 0
    key = list(outputs.keys())[index] if isinstance(outputs, dict) else index
    return OutputSelect(module, key)
