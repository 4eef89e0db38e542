"""Text classifiers attributed at their embedding layer.

Token ids are not differentiable, so IG runs on the embedding output: a forward hook on the
embedding module replaces its output with the interpolated embeddings (captum's
LayerIntegratedGradients does the same), while the real ids and mask still reach the model.
"""
from __future__ import annotations

import inspect
import os
import threading
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from igcli.backends.base import Backend, Precision, ScoreKind
from igcli.backends.torch_backend import TorchBackend
from igcli.data.tokenizer import TextTokenizer
from igcli.errors import ConfigError, ModelError, root_cause

Call = Callable[[nn.Module, Tensor, Tensor], Tensor]


class TextModel:
    """A module over token ids, its embedding layer, its tokenizer and how to call it."""

    def __init__(self, module: nn.Module, embedding: nn.Module, tokenizer: TextTokenizer, call: Call,
                 score: ScoreKind, device: torch.device, max_length: int, labels: list[str] | None = None):
        self.module, self.embedding, self.tokenizer, self.call = module.to(device), embedding, tokenizer, call
        self.score, self.device, self.max_length, self.labels = ScoreKind(score), device, max_length, labels
        self.precision = Precision.float32  # of the path evaluations; the job sets it from the config
        # Per thread: chunks in flight call the model at once, each with its own embeddings.
        self._override = threading.local()
        embedding.register_forward_hook(self._substitute)

    def _substitute(self, module: nn.Module, inputs, output: Tensor):
        embeddings = getattr(self._override, "embeddings", None)
        return output if embeddings is None else embeddings

    def embed(self, ids: Tensor) -> Tensor:
        """[L] ids -> [L, D] embeddings, as the model computes them."""
        with torch.no_grad():
            return self.embedding(ids.to(self.device)[None])[0].detach()

    def with_embeddings(self, ids: Tensor, mask: Tensor, embeddings: Tensor) -> Tensor:
        """The model's output for [B, L] ``ids`` and ``mask`` with ``embeddings`` [B, L, D] in place
        of its embedding layer's."""
        self._override.embeddings = embeddings
        try:
            return self.call(self.module, ids, mask)
        finally:
            self._override.embeddings = None

    def backend_for(self, ids: Tensor, mask: Tensor) -> Backend:
        """A Backend whose inputs are [B, L, D] embeddings of this one document."""
        return document_backend(OneDocument(self, ids.to(self.device), mask.to(self.device)), self)

    def documents_backend(self, ids: Tensor, masks: Tensor) -> Backend:
        """A Backend for [B, L, D + 1] embeddings of these [N, L] documents, each row tagged (see
        DocumentRows)."""
        return document_backend(DocumentRows(self, ids.to(self.device), masks.to(self.device)), self)


class EmbeddingModel(Protocol):
    module: nn.Module
    score: ScoreKind
    device: torch.device
    precision: Precision

    def with_embeddings(self, ids: Tensor, mask: Tensor, embeddings: Tensor) -> Tensor: ...


class OneDocument(nn.Module):
    """The model as a function of one document's embeddings (ids and mask repeated per row)."""

    def __init__(self, model: EmbeddingModel, ids: Tensor, mask: Tensor):
        super().__init__()
        self.inner, self.model, self.ids, self.mask = model.module, model, ids, mask

    def forward(self, embeddings: Tensor) -> Tensor:
        batch = len(embeddings)
        return self.model.with_embeddings(self.ids.expand(batch, -1), self.mask.expand(batch, -1), embeddings)


class DocumentRows(nn.Module):
    """The model as a function of the embeddings of several documents of one length.

    A batch mixes rows of different documents, and the model needs each row's own ids and mask
    beside its embeddings, while the engine passes embeddings alone. So each document's input and
    baseline embeddings carry one more feature, the document's index (``tagged``): equal at both
    ends of the path, it stays exact at every path point, and its attribution, (x - x') * g, is 0.
    """

    def __init__(self, model: EmbeddingModel, ids: Tensor, masks: Tensor):
        super().__init__()
        self.inner, self.model, self.ids, self.masks = model.module, model, ids, masks

    def forward(self, embeddings: Tensor) -> Tensor:
        rows = embeddings[:, 0, -1].long()  # each row's document, from its tag
        return self.model.with_embeddings(self.ids[rows], self.masks[rows], embeddings[..., :-1])


def document_backend(wrapper: nn.Module, model: EmbeddingModel) -> Backend:
    """A Backend over a wrapper (OneDocument, DocumentRows) built for one chunk, in that chunk's
    thread. It leaves the model as it is: the graph rewrites trace it with torch.fx, which patches
    nn.Module.__call__ for every thread while it runs, and a chunk in flight beside it then got
    proxies for tensors ("'len' is not supported in symbolic tracing"); these wrappers never traced
    anyway. Channels-last would convert the shared model's weights under the other chunk too."""
    return TorchBackend(wrapper, model.score, model.device, model.precision, channels_last=False, rewrite_graph=False)


def tagged(embeddings: Tensor) -> Tensor:
    """[N, ..., L, D] embeddings of N documents -> [N, ..., L, D + 1], the last feature each row's
    document index (for DocumentRows)."""
    index = torch.arange(len(embeddings), dtype=embeddings.dtype, device=embeddings.device)
    index = index.view((-1,) + (1,) * (embeddings.dim() - 1)).expand(embeddings.shape[:-1] + (1,))
    return torch.cat([embeddings, index], dim=-1)


def torch_text_model(module: nn.Module, embedding_layer: str | None, tokenizer: TextTokenizer, score: ScoreKind,
                     device: torch.device, max_length: int | None) -> TextModel:
    """A torch module whose forward takes (ids) or (ids, mask), attributed at ``embedding_layer``."""
    if not embedding_layer:
        raise ConfigError("text models need model.embedding_layer: the name of the embedding module (e.g. embed)")
    try:
        embedding = module.get_submodule(embedding_layer)
    except AttributeError:
        names = ", ".join(name for name, m in module.named_modules() if isinstance(m, nn.Embedding)) or "none"
        raise ConfigError(f"model.embedding_layer '{embedding_layer}' is not a submodule; embedding modules: "
                          f"{names}") from None
    takes_mask = len(inspect.signature(module.forward).parameters) >= 2

    def call(inner: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        return inner(ids, mask) if takes_mask else inner(ids)

    return TextModel(module, embedding, tokenizer, call, score, device, max_length or 512)


def huggingface_text_model(folder: Path, score: ScoreKind, device: torch.device, max_length: int | None,
                           tokenizer_path: Path | None) -> TextModel:
    """A transformers sequence classifier from a local folder; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError:
        raise ModelError(f"{folder}: Hugging Face models need transformers: pip install 'igcli[hf]'") from None
    try:
        module = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds
        raise ModelError(f"{folder}: cannot load a sequence classifier ({root_cause(error)})") from None
    tokenizer = TextTokenizer.from_path(tokenizer_path or folder)

    def call(inner: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        return inner(input_ids=ids, attention_mask=mask).logits

    limit = getattr(module.config, "max_position_embeddings", None) or 512
    config_labels = getattr(module.config, "id2label", None) or {}
    labels = [config_labels[i] for i in range(len(config_labels))] if config_labels else None
    return TextModel(module, module.get_input_embeddings(), tokenizer, call, score, device,
                     min(max_length or limit, limit), labels)
