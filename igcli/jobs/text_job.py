"""Text: tokenize, embed, and run IG on the embeddings, one document per engine call.

Each document keeps its own token ids and mask (the model needs them beside the embeddings), so
documents are explained one at a time, with their path points batched together.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Iterable, Iterator

import torch

from ..baselines import BaselineKind, text_baseline_ids
from ..config import Config
from ..engine import BatchSize, Explanation, Quadrature, explain
from ..errors import ConfigError, ModelError, first_line
from ..inputs.discover import InputRef
from ..inputs.text import TextDocument, read_documents
from ..models.loading import load_module, resolve_device
from ..models.onnx_text import GraphTextModel, onnx_text_model
from ..models.text_model import TextModel, huggingface_text_model, torch_text_model
from ..models.tokenizer import TextTokenizer
from ..records import Attribution, Failure, TextSample
from .common import MODEL_FAILURES, check_classes, model_failure, read_labels, resolve_target, to_record


class TextJob:
    chunk_size = 8

    def __init__(self, config: Config):
        self.config = config
        self.device = resolve_device(config.device)
        self.model = load_text_model(config, self.device)
        self.labels = read_labels(config.model.labels) if config.model.labels else self.model.labels
        self.target = resolve_target(config.target, self.labels)
        steps = None if config.steps == "auto" else config.steps
        self.quadrature = Quadrature(config.method, steps, config.tolerance, config.min_steps, config.max_steps,
                                     config.map_tolerance)
        self.batch = BatchSize(config.batch_size)  # lowered for the whole run on out-of-memory
        self.fill_id = self._fill_id()

    def _fill_id(self) -> int | None:
        section = self.config.baseline
        if section.kind is BaselineKind.pad:
            if self.model.tokenizer.pad_id is None:
                raise ConfigError("baseline.kind pad: the tokenizer has no PAD token; use kind: token or zeros")
            return self.model.tokenizer.pad_id
        if section.kind is BaselineKind.token:
            return self.model.tokenizer.token_id(section.token)
        return None

    def read(self, refs: Iterable[InputRef]) -> Iterator[TextSample | Failure]:
        for ref in refs:
            for document in read_documents(ref, self.config.input.text_field):
                yield document if isinstance(document, Failure) else self._tokenize(document)

    def _tokenize(self, document: TextDocument) -> TextSample:
        encoded = self.model.tokenizer.encode(document.text, self.model.max_length)
        warnings = [f"truncated to {self.model.max_length} tokens"] if encoded.truncated else []
        return TextSample(document.source, document.relpath, document.text, torch.tensor(encoded.ids),
                          torch.ones(len(encoded.ids), dtype=torch.long), encoded.tokens, encoded.offsets,
                          encoded.word_ids, encoded.special, warnings,
                          hashlib.sha256(document.text.encode("utf-8")).hexdigest())

    def check(self, sample: TextSample) -> None:
        try:
            backend = self.model.backend_for(sample.ids, sample.mask)
            classes = backend.scores(self.model.embed(sample.ids)[None]).shape[1]
        except MODEL_FAILURES as error:
            raise ModelError(f"model failed on {sample.source} ({first_line(error)}); check model.embedding_layer "
                             "and that the model takes token ids (and a mask)") from None
        check_classes(classes, self.labels, self.target)

    def explain(self, samples: list[TextSample]) -> list[list[Attribution | Failure]]:
        results = []
        for sample in samples:
            clock = time.perf_counter()
            try:
                explanations = self._explain_one(sample)
            except MODEL_FAILURES as error:
                results.append([model_failure(sample, error)])
                continue
            seconds = (time.perf_counter() - clock) / len(explanations)
            results.append([to_record(sample, e, self.config, self.labels, seconds, self._details(sample, e))
                            for e in explanations])
        return results

    def _explain_one(self, sample: TextSample) -> list[Explanation]:
        embeddings = self.model.embed(sample.ids)
        if self.fill_id is None:
            baseline = torch.zeros_like(embeddings)
        else:
            special = torch.tensor(sample.special, dtype=torch.bool)
            baseline = self.model.embed(text_baseline_ids(sample.ids, special, self.fill_id))
        backend = self.model.backend_for(sample.ids, sample.mask)
        return explain(backend, embeddings[None], baseline[None, None], self.target, self.quadrature,
                       self.batch)

    def _details(self, sample: TextSample, e: Explanation) -> dict[str, Any]:
        scores = e.attributions.double().sum(-1).tolist()  # per token: summed over the embedding
        tokens = [{"token": token, "score": score, "special": special, "word": word}
                  for token, score, special, word in zip(sample.tokens, scores, sample.special, sample.word_ids)]
        ranked = sorted((t for t in tokens if not t["special"]), key=lambda t: -t["score"])
        return {"text": sample.text, "tokens": tokens, "words": _words(sample, tokens),
                "top_tokens": [{"token": t["token"], "score": t["score"]} for t in ranked[: self.config.output.top_tokens]]}


def _words(sample: TextSample, tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Word pieces merged into the words they came from (scores summed), specials kept apart."""
    words: list[dict[str, Any]] = []
    for index, token in enumerate(tokens):
        word = token["word"]
        if words and word is not None and words[-1]["word_id"] == word:
            words[-1]["pieces"].append(token["token"])
            words[-1]["score"] += token["score"]
            words[-1]["end"] = sample.offsets[index][1]
            continue
        start, end = sample.offsets[index]
        words.append({"word_id": word, "pieces": [token["token"]], "score": token["score"],
                      "special": token["special"], "start": start, "end": end})
    for word in words:
        word["word"] = word["pieces"][0] if word["special"] else sample.text[word["start"]:word["end"]]
        del word["word_id"], word["start"], word["end"]
    return words


def load_text_model(config: Config, device: torch.device) -> TextModel | GraphTextModel:
    model = _load_text_model(config, device)
    model.precision = config.model.precision
    return model


def _load_text_model(config: Config, device: torch.device) -> TextModel | GraphTextModel:
    section = config.model
    if section.path is not None and section.path.is_dir():
        return huggingface_text_model(section.path, section.score, device, config.input.max_length, section.tokenizer)
    if section.tokenizer is None:
        raise ConfigError("text inputs need model.tokenizer (a tokenizer.json or vocab.txt), or a Hugging Face "
                          "model folder as model.path")
    tokenizer = TextTokenizer.from_path(section.tokenizer)
    if section.path is not None and section.path.suffix.lower() == ".onnx":
        return onnx_text_model(section.path, section.embedding_layer, tokenizer, section.score, device,
                               config.input.max_length)
    module = load_module(section.path, section.factory, section.trust_pickle)
    return torch_text_model(module, section.embedding_layer, tokenizer, section.score, device, config.input.max_length)
