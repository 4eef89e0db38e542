"""Tokenizers from local files only: a Hugging Face tokenizer.json, or a WordPiece vocab.txt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcli.errors import ConfigError, first_line


@dataclass
class Encoded:
    """One document as the model sees it."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]  # character span of each token in the text
    word_ids: list[int | None]  # which word each token belongs to; None for special tokens
    special: list[bool]
    truncated: bool


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the few facts IG needs: specials, PAD, truncation."""

    def __init__(self, tokenizer, source: str):
        self.tokenizer, self.source = tokenizer, source
        specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.special_ids = set(specials.values())
        self.pad_id = next((i for token, i in specials.items() if token in ("[PAD]", "<pad>", "<PAD>")), None)

    @classmethod
    def from_path(cls, path: Path) -> "TextTokenizer":
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        if path.is_dir():
            candidates = [path / "tokenizer.json", path / "vocab.txt"]
            path = next((c for c in candidates if c.exists()), candidates[0])
        try:
            if path.suffix == ".txt":
                return cls(BertWordPieceTokenizer(str(path), lowercase=True)._tokenizer, str(path))
            return cls(Tokenizer.from_file(str(path)), str(path))
        except Exception as error:  # noqa: BLE001 - the Rust bindings raise plain Exceptions
            raise ConfigError(f"{path}: cannot read the tokenizer ({first_line(error)}); "
                              "give a tokenizer.json or a WordPiece vocab.txt") from None

    def token_id(self, token: str | int) -> int:
        """An id from an id or a token string (for `baseline.token`)."""
        if isinstance(token, int):
            return token
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ConfigError(f"baseline.token '{token}' is not in the tokenizer's vocabulary ({self.source})")
        return found

    def encode(self, text: str, max_length: int) -> Encoded:
        self.tokenizer.enable_truncation(max_length)
        try:
            encoding = self.tokenizer.encode(text)
        finally:
            self.tokenizer.no_truncation()
        special = [bool(flag) for flag in encoding.special_tokens_mask]
        return Encoded(list(encoding.ids), list(encoding.tokens), [tuple(o) for o in encoding.offsets],
                       [None if s else w for w, s in zip(encoding.word_ids, special)], special,
                       bool(encoding.overflowing))
