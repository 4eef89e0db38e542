"""The adaptive rule at its defaults on real models, against 1,024-step Gauss-Legendre references,
with captum's IntegratedGradients (Gauss-Legendre, 50 steps) on the same inputs for comparison.

Models: the sample digit CNN (held-out digits) and the sample question classifier (the bundled
questions, on its embeddings, against the PAD baseline); a ResNet-18, a MobileNetV3-style
network (depthwise convolutions, hard-swish, squeeze-excite) and a small ViT built here in torch
with seeded weights whose last layer is scaled for confident predictions (on tinted digits); and
PaddleOCR's text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx`` from the PyPI wheel
rapidocr-onnxruntime, run by igcli's torch route for plain ONNX) on rendered black-on-white text
lines, half of them upside down. Every image model is explained for its predicted class against
the black baseline; softmax models on the softmax, the ONNX one on its own output (probabilities).

Per model: gradient evaluations per input, the relative L2 map error ||A - A_ref|| / ||A_ref||
(median, 95th percentile, max over inputs), the relative completeness error (median, max) and how
many records say converged; then the same for captum. ``--variant`` measures other settings
against the same references (``tolerance=0.02 map_tolerance=0.05``), so they are cheap.

    wget-free setup: pip download rapidocr-onnxruntime==1.4.4 --no-deps -d /tmp/rapidocr
                     && unzip -o /tmp/rapidocr/*.whl -d /tmp/rapidocr
    python benchmarks/real_models.py [--images 16] [--models digits,questions,resnet18,mobilenet,vit,ppocr_cls]
        [--ppocr /tmp/rapidocr/rapidocr_onnxruntime/models] [--variant "map_tolerance=0.05" ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from end_to_end import CONFIG, REPO
from evaluations import write_held_out
from PIL import Image, ImageDraw, ImageFont
from text_end_to_end import encoded, sample_texts
from torch import nn

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.base import ScoreKind
from igcli.backends.loading import load_model, load_module
from igcli.backends.torch_backend import TorchBackend
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob
from igcli.pipeline.text_job import TextJob

REFERENCE = Quadrature(Rule.gausslegendre, 1024)
CAPTUM_STEPS = 50


@dataclasses.dataclass
class Case:
    """One input of a model: what igcli explains and what captum gets."""

    backend: object
    x: torch.Tensor  # [1, ...] model space
    baseline: torch.Tensor  # [1, 1, ...]
    captum: Callable[[int], torch.Tensor]  # target -> captum's attributions, shaped like x[0]


# -- models built here -------------------------------------------------------------------------

def _basic_block(cin: int, cout: int, stride: int) -> nn.Module:
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    return Block()


def resnet18(classes: int = 10) -> nn.Module:
    """ResNet-18's layout: 7x7 stem, max pool, four stages of two basic blocks, average pool."""
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [_basic_block(cin, cout, stride), _basic_block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, expand: int, cout: int, stride: int, squeeze: bool):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(expand, expand, 3, stride, 1, groups=expand, bias=False),
                                       nn.BatchNorm2d(expand), nn.Hardswish())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expand, max(8, expand // 4), 1), nn.ReLU(),
                                     nn.Conv2d(max(8, expand // 4), expand, 1), nn.Hardsigmoid()) if squeeze else None
        self.project = nn.Sequential(nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        if self.squeeze is not None:
            y = y * self.squeeze(y)
        y = self.project(y)
        return x + y if self.residual else y


def mobilenet_v3ish(classes: int = 10) -> nn.Module:
    """MobileNetV3-Small's kinds of layer: hard-swish stem, inverted residuals with squeeze-excite."""
    blocks = [(16, 16, 16, 2, True), (16, 72, 24, 2, False), (24, 88, 24, 1, False), (24, 96, 40, 2, True),
              (40, 240, 40, 1, True), (40, 120, 48, 1, True), (48, 288, 96, 2, True)]
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                         *[_InvertedResidual(*block) for block in blocks],
                         nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 256), nn.Hardswish(),
                         nn.Linear(256, classes))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small ViT: 4x4 patches, a class token, learned positions, pre-norm encoder blocks."""

    def __init__(self, size: int = 32, patch: int = 4, dim: int = 96, depth: int = 4, heads: int = 4,
                 classes: int = 10):
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, patch)
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_EncoderBlock(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.token.expand(len(x), -1, -1), tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights, and batch-norm statistics that are not the identity."""
    torch.manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.normal_(layer.bias, std=0.05)
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.normal_(0, 0.1)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.normal_(0, 0.1)
    return module.eval()


def _confident(module: nn.Module, xs: torch.Tensor, spread: float = 4.0) -> nn.Module:
    """Scale the last linear layer so that the logits on ``xs`` have standard deviation ``spread``
    per input (softmax maxima mostly 0.5-0.99, as a trained classifier's)."""
    last = [layer for layer in module.modules() if isinstance(layer, nn.Linear)][-1]
    with torch.no_grad():
        logits = module(xs)
        scale = spread / float((logits - logits.mean(1, keepdim=True)).std(1).mean())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return module


def tinted_digits(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Held-out digits upscaled to ``size`` and coloured (a random tint on a random background),
    normalised to [-1, 1]: [count, 3, size, size]."""
    with tempfile.TemporaryDirectory() as folder:
        write_held_out(Path(folder), count)
        images = [Image.open(path).convert("L").resize((size, size), Image.BILINEAR)
                  for path in sorted(Path(folder).glob("*.png"))]
    generator = torch.Generator().manual_seed(seed)
    result = []
    for image in images:
        gray = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]
        ink, paper = torch.rand(3, 1, 1, generator=generator), torch.rand(3, 1, 1, generator=generator)
        result.append((gray * ink + (1 - gray) * paper) * 2 - 1)
    return torch.stack(result)


def text_lines(count: int, height: int = 48, width: int = 192, seed: int = 0) -> torch.Tensor:
    """Rendered black-on-white text lines, every other one upside down, in PaddleOCR's input space
    ((x - 0.5) / 0.5): [count, 3, height, width]."""
    import matplotlib

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 28)
    rng = np.random.default_rng(seed)
    words = ["invoice", "total", "2024-05-17", "Hello world", "receipt", "No. 4471", "amount due", "PaddleOCR",
             "Main Street", "quantity", "igcli", "page 3 of 9", "tax 7.5%", "signature"]
    result = []
    for index in range(count):
        image = Image.new("RGB", (width, height), (255, 255, 255))
        ImageDraw.Draw(image).text((int(rng.integers(2, 20)), int(rng.integers(4, 12))),
                                   str(rng.choice(words)), fill=(0, 0, 0), font=font)
        if index % 2:
            image = image.rotate(180)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        result.append((pixels - 0.5) / 0.5)
    return torch.stack(result)


# -- the cases ---------------------------------------------------------------------------------

def image_cases(module: nn.Module, backend, xs: torch.Tensor, softmax: bool) -> list[Case]:
    """Black-baseline cases of an image model (black is -1 in every model space here)."""
    head = (lambda x: torch.softmax(module(x), dim=1)) if softmax else module
    ig = IntegratedGradients(head)
    cases = []
    for x in xs:
        x, baseline = x[None], torch.full_like(x, -1.0)[None]
        cases.append(Case(backend, x, baseline[None], lambda target, x=x, baseline=baseline: ig.attribute(
            x, baselines=baseline, target=target, n_steps=CAPTUM_STEPS, internal_batch_size=CAPTUM_STEPS)[0].detach()))
    return cases


def built_model_cases(name: str, count: int) -> list[Case]:
    size = 64 if name == "mobilenet" else 32
    xs = tinted_digits(count, size)
    build = {"resnet18": resnet18, "mobilenet": mobilenet_v3ish, "vit": ViT}[name]
    module = _confident(_randomized(build(), seed=1), xs)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return image_cases(module, TorchBackend(module, ScoreKind.softmax, "cpu"), xs, softmax=True)


def digits_cases(count: int) -> list[Case]:
    job = ImageJob(load_config(CONFIG, [("device=cpu", "--set")]))
    with tempfile.TemporaryDirectory() as folder:
        write_held_out(Path(folder), count)
        xs = torch.stack([next(job.read([ref])).x for ref in discover_inputs([folder], (".png",))])
    return image_cases(load_module(job.config.model.path, job.config.model.factory), job.backend, xs, softmax=True)


def ppocr_cases(count: int, folder: Path) -> list[Case]:
    path = folder / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.exists():
        raise SystemExit(f"{path}: not found; see the setup line in this script's docstring")
    backend = load_model(path, None, ScoreKind.logits, torch.device("cpu"), backend="torch")
    return image_cases(backend.module, backend, text_lines(count), softmax=False)


def questions_cases(count: int) -> list[Case]:
    job = TextJob(load_config(REPO / "configs" / "questions.yaml", [("device=cpu", "--set")]))
    module = job.model.module
    lig = LayerIntegratedGradients(lambda ids, mask: torch.softmax(module(ids, mask), dim=1), module.embed)
    cases = []
    for text in sample_texts()[:count]:
        ids, mask, baseline_ids, _ = encoded(job, text)
        backend = job.model.backend_for(ids[0], mask[0])
        x, baseline = job.model.embed(ids[0])[None], job.model.embed(baseline_ids[0])[None, None]

        def captum(target, ids=ids, mask=mask, baseline_ids=baseline_ids):
            return lig.attribute(ids, baselines=baseline_ids, target=target, additional_forward_args=(mask,),
                                 n_steps=CAPTUM_STEPS)[0].detach()

        cases.append(Case(backend, x.detach(), baseline.detach(), captum))
    return cases


# -- measuring ---------------------------------------------------------------------------------

def run_igcli(cases: list[Case], quad: Quadrature) -> list:
    """Explanations per case; image cases of one backend are explained together, as a job does."""
    if all(case.backend is cases[0].backend for case in cases):
        xs, baselines = torch.cat([c.x for c in cases]), torch.cat([c.baseline for c in cases])
        return attribute(cases[0].backend, xs, baselines, TargetSpec("predicted"), quad, batch_size=128)
    return [attribute(c.backend, c.x, c.baseline, TargetSpec("predicted"), quad, batch_size=128)[0] for c in cases]


def errors(maps: list[np.ndarray], reference: list) -> tuple[np.ndarray, np.ndarray]:
    """Relative L2 map errors and relative completeness errors, per input."""
    map_errors = np.array([np.linalg.norm(a - r.attributions.numpy()) / np.linalg.norm(r.attributions.numpy())
                           for a, r in zip(maps, reference)])
    completeness = np.array([abs(a.sum() - (r.f_input - r.f_baseline)) / abs(r.f_input - r.f_baseline)
                             for a, r in zip(maps, reference)])
    return map_errors, completeness


def row(name: str, evals: float, map_errors: np.ndarray, completeness: np.ndarray, converged: str) -> str:
    p50, p95, worst = np.percentile(map_errors, 50), np.percentile(map_errors, 95), map_errors.max()
    return (f"| {name} | {evals:.1f} | {evals / CAPTUM_STEPS:.2f}x | {p50:.2%} | {p95:.2%} | {worst:.2%} | "
            f"{np.median(completeness):.1e} | {completeness.max():.1e} | {converged} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="inputs per model")
    parser.add_argument("--models", default="digits,questions,resnet18,mobilenet,vit,ppocr_cls")
    parser.add_argument("--ppocr", type=Path, default=Path("/tmp/rapidocr/rapidocr_onnxruntime/models"))
    parser.add_argument("--variant", action="append", default=[],
                        help="Quadrature settings to measure besides the defaults: 'tolerance=0.02 map_tolerance=0.05'")
    args = parser.parse_args()
    torch.manual_seed(0)
    builders = {"digits": lambda: digits_cases(args.images), "questions": lambda: questions_cases(args.images),
                "ppocr_cls": lambda: ppocr_cases(args.images, args.ppocr)}
    variants = {"defaults": Quadrature(Rule.adaptive)}
    for text in args.variant:
        settings = {k: (None if v == "none" else float(v)) for k, _, v in (t.partition("=") for t in text.split())}
        variants[text] = dataclasses.replace(Quadrature(Rule.adaptive), **settings)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.images} inputs per model, predicted class; "
          f"adaptive defaults: {Quadrature(Rule.adaptive)}")
    print("| model | run | evaluations/input | vs captum's 50 | map error p50 | p95 | max | completeness p50 | max "
          "| converged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    pooled: dict[str, list[np.ndarray]] = {}
    for name in args.models.split(","):
        started = time.perf_counter()
        cases = builders[name]() if name in builders else built_model_cases(name, args.images)
        reference = run_igcli(cases, REFERENCE)
        captum_maps = [c.captum(r.target).numpy() for c, r in zip(cases, reference)]
        print(row(f"{name} | captum GL {CAPTUM_STEPS}", CAPTUM_STEPS, *errors(captum_maps, reference), "-"))
        for label, quad in variants.items():
            explained = run_igcli(cases, quad)
            assert [e.target for e in explained] == [r.target for r in reference]
            map_errors, completeness = errors([e.attributions.numpy() for e in explained], reference)
            pooled.setdefault(label, []).append(map_errors)
            converged = sum(e.converged for e in explained)
            capped = sum(e.stopped_by == "max_steps" for e in explained)
            print(row(f"{name} | igcli {label}", np.mean([e.gradient_evals for e in explained]), map_errors,
                      completeness, f"{converged}/{len(explained)}" + (f" ({capped} at max_steps)" if capped else "")),
                  flush=True)
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)
    for label, parts in pooled.items():
        every = np.concatenate(parts)
        print(f"\nall models, igcli {label}: map error p50 {np.percentile(every, 50):.2%}, "
              f"p95 {np.percentile(every, 95):.2%}, max {every.max():.2%} over {len(every)} inputs")


if __name__ == "__main__":
    main()
