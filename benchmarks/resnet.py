"""ResNet-18/50-shaped classifiers for the benchmarks (no torchvision, no downloads).

The layer shapes are He et al.'s (2016): a 7x7 stem, four stages of basic (18) or bottleneck (50)
blocks, global average pooling and a 1,000-way linear layer. Weights are random (seeded) and then
calibrated on the benchmark's own images: batch-norm statistics are measured on them, and the last
layer is scaled so the logits spread like a trained model's (standard deviation 3), which makes the
softmax confident on some images and not on others instead of uniform. Each residual branch ends in
a batch norm of gain 0.1 (as in SkipInit/Fixup-style initialisations): with gain 1 the random
network is chaotic along IG paths -- captum's 50-step completeness error was 3 to 45 times
|F(x) - F(x')| on ResNet-50 -- while with 0.1 it was 4-28%, closer to what trained models show. igcli loads these as
``model.factory: benchmarks/resnet.py:resnet50`` with the calibrated state_dict as ``model.path``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LOGIT_SPREAD = 3.0
RESIDUAL_GAIN = 0.1


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, 1, 1, bias=False), _last_norm(planes))
        self.shortcut = _shortcut(inplanes, planes * self.expansion, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), _last_norm(out))
        self.shortcut = _shortcut(inplanes, out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _last_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    nn.init.constant_(norm.weight, RESIDUAL_GAIN)
    return norm


def _shortcut(inplanes: int, out: int, stride: int) -> nn.Module:
    if stride == 1 and inplanes == out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, inplanes = [], 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            for b in range(blocks):
                stages.append(block(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


def resnet18() -> ResNet:
    torch.manual_seed(0)
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> ResNet:
    torch.manual_seed(0)
    return ResNet(Bottleneck, [3, 4, 6, 3])


@torch.no_grad()
def calibrate(model: ResNet, images: Tensor) -> ResNet:
    """Batch-norm statistics from ``images`` (cumulative, no gradient steps), then logits spread 3."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for batch in images.split(16):
        model(batch)
    model.eval()
    logits = torch.cat([model(batch) for batch in images.split(16)])
    scale = LOGIT_SPREAD / float(logits.std())
    model.fc.weight.mul_(scale)
    model.fc.bias.mul_(scale)
    return model
