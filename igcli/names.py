"""Names from the file system made safe to print, and safe to write below the output folder.

File names are bytes; Python hands undecodable ones over as lone surrogates (surrogateescape), which
no UTF-8 stream can write. Records and messages show them as ``\\xNN``; output names as ``%NN``, with
no ``..``, no empty part and no part longer than NAME_BYTES (docs/hostile-inputs.md).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

# The longest part of an output name, in UTF-8 bytes: NAME_MAX (255) less room for the suffixes
# igcli adds (.top12.bare.png) and for the temporary name it writes first (atomic_files).
NAME_BYTES = 200
_SURROGATE = re.compile("[\ud800-\udfff]")
# Also C1 controls and the bidirectional overrides: a name must show as what it is.
_UNSAFE_IN_NAME = re.compile("[\ud800-\udfff\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\\\\]")
# Control characters and the bidirectional overrides that can rewrite what a terminal shows.
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with undecodable bytes as ``\\xNN`` (other lone surrogates as ``\\uNNNN``): it
    always encodes as UTF-8."""
    return _SURROGATE.sub(lambda match: _escape(match.group(), "\\x", "\\u"), text)


def terminal_safe(text: str) -> str:
    """``printable(text)`` with control characters and bidi overrides escaped, for terminals."""
    return _TERMINAL_UNSAFE.sub(lambda match: _escape(match.group(), "\\x", "\\u"), printable(text))


def safe_relpath(relpath: str) -> str:
    """An input's name below its root, as the output name that mirrors it: parts split on ``/``,
    empty, ``.`` and ``..`` parts dropped, undecodable bytes, control characters and backslashes
    as ``%NN``, over-long parts shortened with a hash. Never absolute, never leaves its folder."""
    parts = [_safe_part(part) for part in relpath.split("/") if part not in ("", ".", "..")]
    return "/".join(parts) or "unnamed"


def _safe_part(part: str) -> str:
    part = _UNSAFE_IN_NAME.sub(lambda match: _escape(match.group(), "%", "%u"), part)
    return shorten(part)


def shorten(part: str, limit: int = NAME_BYTES) -> str:
    """``part`` within ``limit`` UTF-8 bytes: cut, with a hash of the whole and its extension kept."""
    encoded = part.encode("utf-8")
    if len(encoded) <= limit:
        return part
    stem, dot, extension = part.rpartition(".")
    extension = dot + extension if stem and len(extension) <= 16 else ""
    tag = "~" + hashlib.blake2b(encoded, digest_size=4).hexdigest()
    room = limit - len(tag) - len(extension.encode("utf-8"))
    head = encoded[:room].decode("utf-8", "ignore")  # never splits a character
    return head + tag + extension


def name_key(name: str) -> str:
    """What makes two output names the same file on a case-insensitive, normalising file system."""
    return unicodedata.normalize("NFC", name).casefold()


def _escape(character: str, byte_prefix: str, wide_prefix: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
        return f"{byte_prefix}{code - 0xDC00:02X}" if byte_prefix == "%" else f"{byte_prefix}{code - 0xDC00:02x}"
    if code < 0x100:
        return f"{byte_prefix}{code:02X}" if byte_prefix == "%" else f"{byte_prefix}{code:02x}"
    return f"{wide_prefix}{code:04x}"
