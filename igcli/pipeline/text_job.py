"""Text: tokenize, embed, and run IG on the embeddings.

Documents of the same length go through the engine together, their path points sharing batches:
one short document's points would fill a fraction of a batch, and a call of a small model costs
about as much at 32 points as at 128. Each row still meets its own document's ids and mask (the
model needs them beside the embeddings; see models.text_model.DocumentRows).
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Iterable, Iterator

import torch

from igcli.attribution.adaptive import MapBuffers
from igcli.attribution.baselines import BaselineKind, text_baseline_ids
from igcli.config import Config
from igcli.attribution.engine import BatchSize, Explanation, Quadrature, explain
from igcli.errors import ConfigError, ModelError, root_cause
from igcli.data.discover import InputRef
from igcli.data.text import TextDocument, read_documents
from igcli.backends.memory import FALLBACK_POINTS, GPU_POINTS
from igcli.backends.loading import load_module, resolve_device, use_threads
from igcli.backends.onnx.text import GraphTextModel, onnx_text_model
from igcli.backends.text_model import TextModel, huggingface_text_model, tagged, torch_text_model
from igcli.data.tokenizer import TextTokenizer
from igcli.pipeline.overlap import chunks_in_flight, points_per_chunk
from igcli.pipeline.metrics_hook import RecordMetrics
from igcli.results.records import Attribution, Failure, TextSample
from igcli.pipeline.common import MODEL_FAILURES, check_classes, model_failure, read_labels, resolve_target, to_record


# Documents of one length share batches (see TextJob.explain), so a chunk holds enough of them to
# fill batches on short texts; texts are small in memory.
TEXT_INPUTS_PER_CHUNK = 64


class TextJob:
    runtime = "torch"  # text models run on torch, ONNX ones converted (models.onnx_text)

    def __init__(self, config: Config):
        self.config = config
        self.device = resolve_device(config.device)
        self.model = load_text_model(config, self.device)
        self.labels = read_labels(config.model.labels) if config.model.labels else self.model.labels
        self.target = resolve_target(config.target, self.labels)
        steps = None if config.steps == "auto" else config.steps
        self.quadrature = Quadrature(config.method, steps, config.tolerance, config.min_steps, config.max_steps,
                                     config.map_tolerance)
        self.in_flight = chunks_in_flight(self.device, self.runtime)
        # Lowered for the whole run on out-of-memory; shared by the chunks in flight.
        points = config.batch_size if config.batch_size != "auto" else \
            GPU_POINTS if self.device.type != "cpu" else FALLBACK_POINTS
        self.batch = BatchSize(points_per_chunk(points, self.in_flight, self.device))
        self.map_buffers = MapBuffers()  # the adaptive rule's stored maps, kept from chunk to chunk
        self.chunk_size = TEXT_INPUTS_PER_CHUNK if config.chunk_inputs == "auto" else config.chunk_inputs
        self.fill_id = self._fill_id()
        self.metrics = RecordMetrics(config, self.batch) if config.metrics else None

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

    def explain(self, samples: list[TextSample]) -> list[list[Attribution | Failure]]:
        results: list[list[Attribution | Failure]] = [[] for _ in samples]
        by_length: dict[int, list[int]] = {}
        for index, sample in enumerate(samples):
            by_length.setdefault(len(sample.ids), []).append(index)
        for indices in by_length.values():
            self._explain_group([samples[i] for i in indices], [results[i] for i in indices])
        return results

    def _explain_group(self, group: list[TextSample], results: list[list[Attribution | Failure]]) -> None:
        """Documents of one length, their path points batched together; where the model fails on
        the group, each document again alone, so that only the one it fails on is lost."""
        clock = time.perf_counter()
        try:
            explanations = self._explain_same_length(group)
        except MODEL_FAILURES as error:
            if len(group) == 1:
                results[0].append(model_failure(group[0], error))
                return
            for sample, result in zip(group, results):
                self._explain_group([sample], [result])
            return
        seconds = (time.perf_counter() - clock) / len(explanations)
        for e in explanations:
            sample = group[e.input_index]
            results[e.input_index].append(to_record(sample, e, self.config, self.labels, seconds,
                                                    self._details(sample, e)))
            if self.metrics is not None:
                self._add_metrics(sample, results[e.input_index][-1])

    def _add_metrics(self, sample: TextSample, record: Attribution | Failure) -> None:
        """The record's ``metrics`` over tokens (pipeline/metrics_hook.py): tokens move to or from the baseline."""
        with torch.no_grad():
            embeddings = self.model.embed(sample.ids)[None]
            fill = torch.zeros_like(embeddings) if self.fill_id is None else \
                self.model.embed(self._baseline_ids(sample))[None]
        backend = self.model.backend_for(sample.ids, sample.mask)
        self.metrics.annotate(backend, embeddings.detach(), fill.detach(), [(0, record)], "token")

    def _explain_same_length(self, group: list[TextSample]) -> list[Explanation]:
        ids = torch.stack([sample.ids for sample in group])
        embeddings = torch.stack([self.model.embed(sample.ids) for sample in group])
        if self.fill_id is None:
            baselines = torch.zeros_like(embeddings)
        else:
            baselines = torch.stack([self.model.embed(self._baseline_ids(sample)) for sample in group])
        backend = self.model.documents_backend(ids, torch.stack([sample.mask for sample in group]))
        explanations = explain(backend, tagged(embeddings), tagged(baselines)[:, None], self.target,
                               self.quadrature, self.batch, self.map_buffers)
        for e in explanations:
            e.attributions = e.attributions[..., :-1].contiguous()  # the tag's attribution is exactly 0
        return explanations

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
    use_threads(config.model.threads)  # ONNX text models run on torch too (models.onnx_text)
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
