"""Models for benchmarks/peak_memory.py, built in torch code with seeded random weights (nothing downloaded).

- ``direction_classifier``: a MobileNetV3-small-like CNN (hard-swish, squeeze-excite, depthwise
  convolutions) for [3, 48, 192] text-line crops and 2 classes, ~150K parameters: the shape of
  PaddleOCR's 585 KB text-direction classifier (PP-LCNet and MobileNetV3 family).
- ``resnet50``: ResNet-50 (bottlenecks 3-4-6-3, batch norm, 1000 classes) for [3, 224, 224].
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // 4, 1), nn.ReLU(),
                                  nn.Conv2d(channels // 4, channels, 1), nn.Hardsigmoid())

    def forward(self, x):
        return x * self.gate(x)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, se: bool, act: type):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(_conv_bn(cin, hidden, 1, act=act), _conv_bn(hidden, hidden, kernel, stride, hidden, act),
                                  _SqueezeExcite(hidden) if se else nn.Identity(), _conv_bn(hidden, cout, 1, act=None))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def direction_classifier() -> nn.Module:
    torch.manual_seed(0)
    # (kernel, hidden, out, se, activation, stride): MobileNetV3-small at width 0.5; strides (2, 1)
    # keep the width of text lines, as PaddleOCR's classifier does.
    spec = [(3, 8, 8, True, nn.ReLU, 2), (3, 40, 16, False, nn.ReLU, (2, 1)), (3, 48, 16, False, nn.ReLU, 1),
            (5, 48, 24, True, nn.Hardswish, (2, 1)), (5, 120, 24, True, nn.Hardswish, 1),
            (5, 120, 24, True, nn.Hardswish, 1), (5, 64, 24, True, nn.Hardswish, 1), (5, 72, 24, True, nn.Hardswish, 1),
            (5, 96, 40, True, nn.Hardswish, (2, 1)), (5, 200, 40, True, nn.Hardswish, 1),
            (5, 200, 40, True, nn.Hardswish, 1)]
    layers, channels = [_conv_bn(3, 8, 3, 2, act=nn.Hardswish)], 8
    for kernel, hidden, out, se, act, stride in spec:
        layers.append(_InvertedResidual(channels, hidden, out, kernel, stride, se, act))
        channels = out
    layers += [_conv_bn(channels, 200, 1, act=nn.Hardswish), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(200, 2)]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride),
                                  _conv_bn(width, width * 4, 1, act=None))
        self.shortcut = _conv_bn(cin, width * 4, 1, stride, act=None) if stride != 1 or cin != width * 4 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet50() -> nn.Module:
    torch.manual_seed(0)
    layers, channels = [_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            layers.append(_Bottleneck(channels, width, stride if block == 0 else 1))
            channels = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1000)]
    model = nn.Sequential(*layers)
    for module in model.modules():  # random running statistics, so folded batch norms are not identities
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model
