"""Train the sample model on scikit-learn's bundled digits (UCI, 1,797 real 8x8 scans; offline).

Reproducible: seeded, deterministic algorithms, CPU. Writes into sample_data/:
  models/digits_cnn.pt2        torch.export program, dynamic batch  (model.path)
  models/digits_cnn.ts         TorchScript                          (model.path)
  models/digits_cnn_state.pt   state_dict for model.factory         (models/digits_cnn.py:build_model)
  models/digits_cnn.onnx       plain forward-only ONNX (logits)     (model.path; gradients built by igcli)
  labels.txt, images/*.png     ten held-out digits, one per class, plus two more

Usage: pip install -e ".[train]" && python sample_data/train_digits.py [--epochs N] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SIZE = 64  # stored sample images; igcli resizes them to MODEL_SIZE as configured
MODEL_SIZE = 32
SEED = 0


def digit_image(digit: np.ndarray) -> Image.Image:
    """An 8x8 scan (values 0..16) as a 64x64 greyscale image, the way the sample files are stored."""
    array = np.rint(digit.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(array, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def model_input(image: Image.Image) -> np.ndarray:
    """What igcli feeds the model under configs/digits.yaml: resize to 32x32, (p - 0.5) / 0.5."""
    small = image.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR)
    return (np.asarray(small, dtype=np.float32) / 255.0 - 0.5) / 0.5


def load_dataset():
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SEED).permutation(len(digits.target))
    images = [digit_image(digits.data[i]) for i in order]
    x = torch.from_numpy(np.stack([model_input(image) for image in images])).unsqueeze(1)
    y = torch.from_numpy(digits.target[order].astype(np.int64))
    split = int(0.8 * len(y))
    return images, x, y, split


def build_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("digits_cnn", HERE / "models" / "digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def save(model: torch.nn.Module, images, x, y, split: int, out: Path) -> dict:
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    example = x[:2].clone()  # a view would save the whole dataset as the sample input
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "models" / "digits_cnn.pt2"))
    torch.jit.script(model).save(str(out / "models" / "digits_cnn.ts"))
    onnx_program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                     input_names=["image"], output_names=["logits"])
    onnx_program.save(str(out / "models" / "digits_cnn.onnx"))
    torch.save(model.state_dict(), out / "models" / "digits_cnn_state.pt")
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    chosen = _sample_indices(y, split)
    for i in chosen:
        images[i].save(out / "images" / f"{LABELS[int(y[i])]}_{i:04d}.png", optimize=True)
    with torch.no_grad():
        accuracy = (model(x[split:]).argmax(1) == y[split:]).float().mean().item()
    return {"test_accuracy": round(accuracy, 4), "train": split, "test": len(y) - split,
            "samples": [f"{LABELS[int(y[i])]}_{i:04d}.png" for i in chosen]}


def _sample_indices(y: torch.Tensor, split: int) -> list[int]:
    """The first held-out image of each class, then the next two held-out images."""
    held_out = list(range(split, len(y)))
    first = [next(i for i in held_out if int(y[i]) == c) for c in range(10)]
    extra = [i for i in held_out if i not in first][:2]
    return sorted(first + extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    images, x, y, split = load_dataset()
    model = train(x[:split], y[:split], args.epochs)
    print(json.dumps(save(model, images, x, y, split, args.out), indent=2))


if __name__ == "__main__":
    main()
