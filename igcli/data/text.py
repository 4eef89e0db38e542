"""Read text documents: a .txt file is one document; each line of a .jsonl file is one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

from igcli.data.discover import DEFAULT_MAX_BYTES, InputRef, read_input
from igcli.data.samples import Failure, output_stem
from igcli.errors import InputError
from igcli.names import printable

TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass
class TextDocument:
    source: str  # the file, with ":line" for .jsonl documents
    relpath: str  # output name: the file's relpath, or <relpath stem>/line-NNNN for .jsonl lines
    text: str


def read_documents(ref: InputRef, text_field: str = "text",
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[TextDocument | Failure]:
    """The documents in one file, or one Failure for the file (or for a bad .jsonl line)."""
    try:
        data = read_input(ref, "a text file", max_bytes)
    except InputError as error:
        yield _failure(ref, str(error))
        return
    text = _decode(ref, data)
    if isinstance(text, Failure):
        yield text
    elif ref.path.suffix.lower() == ".jsonl":
        yield from _jsonl_documents(ref, text, text_field)
    elif not text.strip():
        yield _failure(ref, f"{ref.source}: empty document")
    else:
        yield TextDocument(ref.source, ref.relpath, text)


def _decode(ref: InputRef, data: bytes) -> str | Failure:
    if b"\x00" in data:
        return _failure(ref, f"{ref.source}: binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is tolerated and dropped
    except UnicodeDecodeError as error:
        return _failure(ref, f"{ref.source}: not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
                             "convert the file to UTF-8")


def _jsonl_documents(ref: InputRef, text: str, field: str) -> Iterator[TextDocument | Failure]:
    stem = output_stem(ref.relpath)
    for number, line in enumerate(text.split("\n"), start=1):  # U+2028 inside a document is no line end
        if not line.strip():
            continue
        source, relpath = f"{ref.source}:{number}", f"{stem}/line-{number:05d}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield Failure(source, relpath, "InputError", f"{source}: invalid JSON ({error.msg})")
            continue
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            yield Failure(source, relpath, "InputError",
                          f"{source}: no text in field '{field}'; set input.text_field to the field that holds it")
            continue
        yield TextDocument(source, relpath, printable(value))  # JSON may escape lone surrogates


def _failure(ref: InputRef, message: str) -> Failure:
    return Failure(ref.source, ref.relpath, "InputError", message)
