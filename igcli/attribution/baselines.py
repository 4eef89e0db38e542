"""Baselines x' for image inputs, built in pixel space and normalised like the input.

Every kind returns ``samples`` baselines shaped like the input; random kinds draw from a
generator seeded per input, so an input's baselines do not depend on which inputs came before.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from igcli.attribution.kinds import TEXT_BASELINES, BaselineKind  # noqa: F401 - defined without torch

RANDOM_KINDS = {BaselineKind.uniform, BaselineKind.gaussian}


def text_baseline_ids(ids: Tensor, special: Tensor, fill_id: int) -> Tensor:
    """Baseline token ids: special tokens kept in place, every other token replaced by ``fill_id``."""
    return torch.where(special, ids, torch.full_like(ids, fill_id))


@dataclass(frozen=True)
class BaselinePlan:
    """A resolved baseline choice; ``fixed`` holds the model-space tensor for ``file``."""

    kind: BaselineKind
    samples: int = 1
    seed: int = 0
    value: float = 0.5
    sigma: float | None = None
    fixed: Tensor | None = None

    @property
    def same_for_every_input(self) -> bool:
        """True where the baselines depend only on the inputs' shape, not their pixels or path."""
        return self.kind not in RANDOM_KINDS and self.kind not in (BaselineKind.blur, BaselineKind.auto)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std that map pixels in [0, 1] to the model's input space."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, pixels: Tensor) -> Tensor:
        """Normalise [C, H, W] pixels; one mean/std value broadcasts over every channel."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device)
        view = (-1, 1, 1)
        return (pixels - mean.view(view)) / std.view(view)


AUTO_CANDIDATES = ("black", "white", "mean colour")


def auto_candidates(pixels: Tensor, norm: Normalization) -> Tensor:
    """The constant baselines ``auto`` chooses among (AUTO_CANDIDATES, in that order) for one input
    of [C, H, W] pixels in [0, 1]: [3, C, H, W] in model space."""
    mean_colour = pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels)
    return torch.stack([norm.apply(p) for p in (torch.zeros_like(pixels), torch.ones_like(pixels), mean_colour)])


def make_baselines(plan: BaselinePlan, pixels: Tensor, norm: Normalization, key: str) -> Tensor:
    """``plan.samples`` baselines for one input, shaped [samples, C, H, W] in model space.

    ``pixels`` is the image the model saw, [C, H, W] in [0, 1]; ``key`` (the input's relative
    path) seeds the random kinds together with ``plan.seed``.
    """
    count = plan.samples
    if plan.kind is BaselineKind.auto:
        raise ValueError("baseline kind 'auto' is chosen with the model (ImageJob._auto_baselines)")
    if plan.kind is BaselineKind.zeros:
        return torch.zeros((count,) + pixels.shape, dtype=pixels.dtype)
    if plan.kind is BaselineKind.file:
        if plan.fixed is None:
            raise ValueError("baseline kind 'file' needs its tensor loaded")
        return plan.fixed.to(pixels.dtype).expand((count,) + pixels.shape).clone()
    return torch.stack([norm.apply(p) for p in _pixel_baselines(plan, pixels, key)])


def _pixel_baselines(plan: BaselinePlan, pixels: Tensor, key: str) -> list[Tensor]:
    kind, count = plan.kind, plan.samples
    if kind is BaselineKind.black:
        return [torch.zeros_like(pixels)] * count
    if kind is BaselineKind.white:
        return [torch.ones_like(pixels)] * count
    if kind is BaselineKind.constant:
        return [torch.full_like(pixels, plan.value)] * count
    if kind is BaselineKind.blur:
        sigma = plan.sigma if plan.sigma is not None else max(pixels.shape[-2:]) / 8
        return [gaussian_blur(pixels, sigma)] * count
    generator = torch.Generator().manual_seed(plan.seed * 1_000_003 + zlib.crc32(key.encode()))
    if kind is BaselineKind.uniform:
        return [torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype) for _ in range(count)]
    sigma = plan.sigma if plan.sigma is not None else 0.1
    noise = [torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype) for _ in range(count)]
    return [(pixels + sigma * n).clamp(0.0, 1.0) for n in noise]


def gaussian_blur(pixels: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [C, H, W] with reflect padding; sigma in pixels. Along an axis
    the kernel (cut at 3 sigma) would overrun, the exact Gaussian of the endlessly mirrored image
    applies instead (_mirrored_gaussian): memory like the image's for any sigma."""
    if sigma <= 0:
        return pixels.clone()
    kernel = None
    channels = pixels.shape[0]
    image = pixels.unsqueeze(0)
    for dim in (-1, -2):
        size = image.shape[dim]
        if size == 1:  # nothing to blur along
            continue
        if 3 * sigma > size - 1:
            image = _mirrored_gaussian(image, sigma, dim)
            continue
        if kernel is None:
            radius = max(1, math.ceil(3 * sigma))
            offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype)
            kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
            kernel = kernel / kernel.sum()
        shape = (1, 1, 1, -1) if dim == -1 else (1, 1, -1, 1)
        padding = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        image = torch.nn.functional.pad(image, padding, mode="reflect")
        weights = (kernel / kernel.sum()).view(shape).repeat(channels, 1, 1, 1)
        image = torch.nn.functional.conv2d(image, weights, groups=channels)
    return image.squeeze(0)


def _mirrored_gaussian(image: Tensor, sigma: float, dim: int) -> Tensor:
    """``image`` blurred along ``dim`` by the sampled Gaussian (normalised, uncut) over the image
    mirrored endlessly as reflect padding mirrors it: a circular convolution over one mirror period,
    by FFT. The period's spectrum of the Gaussian (Poisson summation) underflows to the mean's alone
    as sigma grows, so sigma 1e9 gives the period's mean, where the edge rows count half."""
    size = image.shape[dim]
    period = 2 * (size - 1)
    line = image.movedim(dim, -1).double()
    mirrored = torch.cat([line, line[..., 1:-1].flip(-1)], dim=-1)
    frequency = torch.fft.rfftfreq(period, dtype=torch.float64)
    aliases = torch.arange(-6, 7, dtype=torch.float64)[:, None]  # sampling's images of the spectrum
    # (sigma * f)^2 overflows to inf for huge sigma, and exp(-inf) = 0: only f = 0 keeps its weight.
    gain = torch.exp(-2 * math.pi ** 2 * (sigma * (frequency + aliases)) ** 2).sum(0)
    gain = gain / torch.exp(-2 * math.pi ** 2 * (sigma * aliases[:, 0]) ** 2).sum()
    blurred = torch.fft.irfft(torch.fft.rfft(mirrored) * gain, n=period)[..., :size]
    return blurred.to(image.dtype).movedim(-1, dim).contiguous()
