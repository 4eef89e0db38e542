"""Text: tokenize, embed, and run IG on the embeddings.

Documents of the same length go through the engine together, their path points sharing batches:
one short document's points would fill a fraction of a batch, and a call of a small model costs
about as much at 32 points as at 128. Each row still meets its own document's ids and mask (the
model needs them beside the embeddings; see models.text_model.DocumentRows).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator

import torch

from igcli.attribution.baselines import BaselineKind, text_baseline_ids
from igcli.attribution.engine import Explanation, attribute
from igcli.backends.loading import load_module, use_threads
from igcli.backends.onnx.text import GraphTextModel, onnx_text_model
from igcli.backends.text_memory import text_auto_points
from igcli.backends.text_model import TextModel, huggingface_text_model, tagged, torch_text_model
from igcli.config import Config
from igcli.data.discover import InputRef
from igcli.data.text import TextDocument, read_documents
from igcli.data.tokenizer import TextTokenizer
from igcli.errors import ConfigError, ModelError, root_cause
from igcli.pipeline.common import MODEL_FAILURES, Job, check_classes, to_record
from igcli.results.records import Attribution, Failure, TextSample

# Documents of one length share batches (see TextJob.explain), so a chunk holds enough of them to
# fill batches on short texts; texts are small in memory.
TEXT_INPUTS_PER_CHUNK = 64


class TextJob(Job):
    runtime = "torch"  # text models run on torch, ONNX ones converted (backends/onnx/text.py)
    retry_alone = True

    def _load_model(self, config: Config) -> Config:
        self.model = load_text_model(config, self.device)
        return config

    def _model_labels(self) -> list[str] | None:
        return self.model.labels

    def _prepare(self) -> None:
        self.fill_id = self._fill_id()

    def _batch_points(self) -> int:
        if self.config.batch_size != "auto":
            return self.config.batch_size
        return text_auto_points(self.model, self.device)

    def _inputs_per_chunk(self) -> int:
        return TEXT_INPUTS_PER_CHUNK

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
            for document in read_documents(ref, self.config.input.text_field, self.config.input.max_bytes):
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
            raise ModelError(f"model failed on {sample.source} ({root_cause(error)}); check model.embedding_layer "
                             "and that the model takes token ids (and a mask)") from None
        check_classes(classes, self.labels, self.target, self.config.model.score)

    def _group_key(self, sample: TextSample) -> int:
        return len(sample.ids)  # documents of one length share batches

    def _record(self, sample: TextSample, e: Explanation, seconds: float, context: None) -> Attribution | Failure:
        return to_record(sample, e, self.config, self.labels, seconds, self._details(sample, e))

    def _add_metrics(self, group: list[TextSample], records: list[tuple[int, Attribution | Failure]]) -> None:
        """Each record's ``metrics`` over tokens (pipeline/metrics_hook.py): tokens move to or from the baseline."""
        for index, record in records:
            self._add_document_metrics(group[index], record)

    def _add_document_metrics(self, sample: TextSample, record: Attribution | Failure) -> None:
        with torch.no_grad():
            embeddings = self.model.embed(sample.ids)[None]
            fill = torch.zeros_like(embeddings) if self.fill_id is None else \
                self.model.embed(self._baseline_ids(sample))[None]
        backend = self.model.backend_for(sample.ids, sample.mask)
        self.metrics.annotate(backend, embeddings.detach(), fill.detach(), [(0, record)], "token")

    def _explain_together(self, group: list[TextSample]) -> tuple[list[Explanation], None]:
        ids = torch.stack([sample.ids for sample in group])
        embeddings = torch.stack([self.model.embed(sample.ids) for sample in group])
        if self.fill_id is None:
            baselines = torch.zeros_like(embeddings)
        else:
            baselines = torch.stack([self.model.embed(self._baseline_ids(sample)) for sample in group])
        backend = self.model.documents_backend(ids, torch.stack([sample.mask for sample in group]))
        explanations = attribute(backend, tagged(embeddings), tagged(baselines)[:, None], self.target,
                               self.quadrature, self.batch, self.map_buffers)
        for e in explanations:
            e.attributions = e.attributions[..., :-1].contiguous()  # the tag's attribution is exactly 0
        return explanations, None

    def _baseline_ids(self, sample: TextSample) -> torch.Tensor:
        return text_baseline_ids(sample.ids, torch.tensor(sample.special, dtype=torch.bool), self.fill_id)

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
    use_threads(config.model.threads)  # ONNX text models run on torch too (backends/onnx/text.py)
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
