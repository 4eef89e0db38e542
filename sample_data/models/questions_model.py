"""The sample text model: question type from word pieces (4 classes), for configs/questions.yaml.

``forward(ids, mask)`` takes token ids [B, L] and an attention mask [B, L]; igcli attributes at
the ``embed`` layer (``model.embedding_layer: embed``).
"""
import torch
from torch import nn

VOCAB_SIZE = 600
DIM = 32


class QuestionNet(nn.Module):
    def __init__(self, vocab_size: int = VOCAB_SIZE, dim: int = DIM, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, 48, kernel_size=3, padding=1)
        self.out = nn.Linear(48, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.conv(self.embed(ids).transpose(1, 2)))  # [B, 48, L]
        weights = mask.to(hidden.dtype).unsqueeze(1)
        pooled = (hidden * weights).sum(-1) / weights.sum(-1).clamp(min=1)
        return self.out(pooled)


def build_model() -> nn.Module:
    return QuestionNet()
