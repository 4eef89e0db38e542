"""What readers make: a Sample per decoded image, a TextSample per tokenized document, a Failure per
input that could not be read (or, later, explained), and the output stem each one's name gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image


def output_stem(relpath: str) -> str:
    """``cats/a.png`` -> ``cats/a``: outputs mirror inputs, with their own extensions."""
    head, _, name = relpath.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


@dataclass
class Sample:
    """One decoded input, ready for the model."""

    source: str  # the path as discovered
    relpath: str  # below its input root; output names mirror it
    x: Tensor  # model-space input [C, H, W]
    pixels: Tensor  # the image the model saw, [C, H, W] in [0, 1], before normalisation
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # sha256 of the input's bytes: with the run's key, what --resume compares
    preview: Image.Image | None = None  # the file as decoded, small: report.html's thumbnail (data/previews.py)


@dataclass
class TextSample:
    """One tokenized document; IG runs on the embeddings of ``ids``."""

    source: str
    relpath: str
    text: str
    ids: Tensor  # [L] token ids
    mask: Tensor  # [L] attention mask
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    special: list[bool]
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # sha256 of the document's text


@dataclass
class Failure:
    """An input that could not be explained, and the one line that says why."""

    source: str
    relpath: str
    error_type: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"input": self.source, "relpath": self.relpath,
                "error": {"type": self.error_type, "message": self.message}}
