"""ONNX text classifiers attributed at a named embedding tensor.

The graph is cut at that tensor: its producer now writes a second name, which becomes an extra
output (how the model embeds ids), and the tensor itself becomes a graph input that every consumer
reads (where IG substitutes the interpolated embeddings). The cut graph is converted to torch with
onnx2fx like any plain ONNX model, so the same TorchBackend takes gradients through it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from igcli.backends.base import Backend, Precision, ScoreKind
from igcli.backends.onnx.format import INTEGER_TYPES, graph_inputs, read_onnx
from igcli.backends.onnx.source import onnx_to_torch
from igcli.backends.text_model import DocumentRows, OneDocument, document_backend
from igcli.data.tokenizer import TextTokenizer
from igcli.errors import ConfigError, ModelError

COMPUTED = "__igcli_computed"


class GraphTextModel:
    """The TextModel surface (tokenizer, embed, backend_for) over a cut ONNX graph."""

    def __init__(self, module: nn.Module, roles: list[str], width: int, tokenizer: TextTokenizer,
                 score: ScoreKind, device: torch.device, max_length: int):
        self.module, self.roles, self.width, self.tokenizer = module.to(device), roles, width, tokenizer
        self.score, self.device, self.max_length, self.labels = ScoreKind(score), device, max_length, None
        self.precision = Precision.float32  # of the path evaluations; the job sets it from the config

    def run(self, ids: Tensor, mask: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """(scores' source output, the embeddings the model computes from ``ids``)."""
        batch = len(embeddings)
        filled = {"ids": ids.expand(batch, -1), "mask": mask.expand(batch, -1),
                  "zeros": torch.zeros_like(ids).expand(batch, -1)}
        outputs = self.module(*(filled[role] for role in self.roles), embeddings)
        return outputs[0], outputs[-1]

    def embed(self, ids: Tensor) -> Tensor:
        """[L] ids -> [L, D] embeddings, as the graph computes them."""
        ids = ids.to(self.device)[None]
        with torch.no_grad():
            probe = torch.zeros(1, ids.shape[1], self.width, device=self.device)  # unused by the second output
            return self.run(ids, torch.ones_like(ids), probe)[1][0].detach()

    def with_embeddings(self, ids: Tensor, mask: Tensor, embeddings: Tensor) -> Tensor:
        """The graph's output for [B, L] ``ids`` and ``mask`` with ``embeddings`` in place of the cut tensor."""
        return self.run(ids, mask, embeddings)[0]

    def backend_for(self, ids: Tensor, mask: Tensor) -> Backend:
        """A Backend whose inputs are [B, L, D] embeddings of this one document."""
        return document_backend(OneDocument(self, ids.to(self.device)[None], mask.to(self.device)[None]), self)

    def documents_backend(self, ids: Tensor, masks: Tensor) -> Backend:
        """A Backend for [B, L, D + 1] tagged embeddings of these [N, L] documents (see DocumentRows)."""
        return document_backend(DocumentRows(self, ids.to(self.device), masks.to(self.device)), self)


def onnx_text_model(path: Path, tensor: str | None, tokenizer: TextTokenizer, score: ScoreKind,
                    device: torch.device, max_length: int | None) -> GraphTextModel:
    """An ONNX model whose inputs are token ids (and a mask), attributed at the tensor ``tensor``."""
    model = read_onnx(path)
    candidates = embedding_tensors(model)
    if not tensor:
        raise ConfigError(f"{path}: set model.embedding_layer to the embedding tensor's name; candidates: "
                          f"{_listed(candidates)}")
    producers = [node for node in model.graph.node if tensor in node.output]
    if not producers:
        raise ConfigError(f"model.embedding_layer '{tensor}' is no tensor of {path}; embedding tensors: "
                          f"{_listed(candidates)} (igcli inspect {path} lists them)")
    if tensor not in candidates:
        raise ConfigError(f"model.embedding_layer '{tensor}' is not a lookup in an embedding table; name one of: "
                          f"{_listed(candidates)}")
    roles = _input_roles(model, path)
    _cut_at(model, producers[0], tensor)
    module = onnx_to_torch(model, path)
    return GraphTextModel(module, roles, candidates[tensor][1], tokenizer, score, device, max_length or 512)


def embedding_tensors(model) -> dict[str, tuple[int, int]]:
    """Outputs of Gather nodes that look up rows of a 2-D table: {tensor: (vocabulary, width)}."""
    tables = {init.name: tuple(init.dims) for init in model.graph.initializer if len(init.dims) == 2}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and len(node.attribute[0].t.dims) == 2:
            tables[node.output[0]] = tuple(node.attribute[0].t.dims)
    return {node.output[0]: tables[node.input[0]] for node in model.graph.node
            if node.op_type == "Gather" and node.input[0] in tables}


def _input_roles(model, path: Path) -> list[str]:
    """What igcli feeds each graph input: ids, mask, or zeros (token type ids)."""
    roles = []
    for spec in graph_inputs(model):
        name = spec.name.lower()
        if spec.dtype not in INTEGER_TYPES.values():
            raise ModelError(f"{path}: input '{spec.name}' is {spec.dtype}; an ONNX text model takes token ids "
                             "(and a mask, token type ids) only")
        roles.append("mask" if "mask" in name else "zeros" if "type" in name or "segment" in name
                     else "ids" if "ids" not in roles else "zeros")
    if "ids" not in roles:
        raise ModelError(f"{path}: no input for token ids among {[s.name for s in graph_inputs(model)]}")
    return roles


def _cut_at(model, producer, tensor: str) -> None:
    from onnx import TensorProto, helper

    graph = model.graph
    producer.output[list(producer.output).index(tensor)] = tensor + COMPUTED
    shape = ["batch", "length", "width"]
    graph.input.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape))
    graph.output.append(helper.make_tensor_value_info(tensor + COMPUTED, TensorProto.FLOAT, shape))
    kept = [info for info in graph.value_info if info.name != tensor]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _listed(candidates: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{name} ({vocab}x{width})" for name, (vocab, width) in candidates.items()) or "none found"
