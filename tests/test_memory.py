"""batch_size auto: the activation memory it is measured from, the batch it picks, and the peak
memory of a whole run at the defaults."""
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from torch import nn

from igcli.backends import memory
from igcli.backends.base import ScoreKind
from igcli.backends.torch_backend import TorchBackend
from igcli.config import Config
from igcli.pipeline.image_job import ImageJob

from .conftest import REPO

FEATURES = 1000


class SquaredTanh(nn.Module):
    """tanh saves its output y, and y * y saves y twice: three saves of one storage, counted once.
    The product with a frozen parameter saves the parameter only (the model's, not the batch's)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((FEATURES,), 0.5))

    def forward(self, x):
        y = torch.tanh(x.flatten(1))
        return y * y * self.scale


def test_saved_bytes_count_each_activation_once_per_point():
    backend = TorchBackend(SquaredTanh(), ScoreKind.logits)
    # Per point: y (FEATURES float32), and the engine's weights [B, 1], saved by its weighted sum.
    expected = FEATURES * 4 + 4
    assert memory.bytes_per_point(backend, torch.zeros(FEATURES)) == expected
    assert memory.saved_bytes(backend, torch.zeros(3, FEATURES)) == 3 * expected


def test_auto_batch_follows_the_measured_activations(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 64.0 * 2**30)
    small = TorchBackend(nn.Sequential(nn.Flatten(), nn.Tanh()), ScoreKind.logits)
    assert memory.auto_points(small, torch.zeros(16), torch.device("cpu")) == memory.MAX_POINTS
    wide = TorchBackend(nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Tanh(), nn.Tanh()), ScoreKind.logits)
    example = torch.zeros(4, 256, 256)  # 3 saved tanh outputs of 1 MiB each per point (and the weights' 4 bytes)
    per_point = 3 * 2**20 + 4
    assert memory.bytes_per_point(wide, example) == per_point
    points = int(memory.BUDGET_BYTES // (per_point * memory.PEAK_OVER_SAVED))
    assert memory.auto_points(wide, example, torch.device("cpu")) == points - points % 8 < memory.MAX_POINTS
    monkeypatch.setattr(memory, "available_bytes", lambda: 256.0 * 2**20)  # little memory left: a smaller batch
    assert memory.auto_points(wide, example, torch.device("cpu")) < points
    assert memory.auto_points(wide, example, torch.device("cuda")) == memory.GPU_POINTS


def test_image_job_measures_auto_and_an_integer_wins(tmp_path):
    (tmp_path / "wide.py").write_text("from torch import nn\n\ndef build():\n"
                                      "    return nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), "
                                      "nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
                                      "nn.Linear(64, 3))\n")
    data = {"model": {"factory": f"{tmp_path / 'wide.py'}:build", "score": "logits"},
            "input": {"mode": "L", "resize": [96, 96]}, "device": "cpu"}
    job = ImageJob(Config.model_validate(data))
    measured = memory.auto_points(job.backend, torch.zeros(1, 96, 96), torch.device("cpu"))
    assert measured < memory.MAX_POINTS  # ~5 MiB of activations a point: not the old 256
    assert job.batch.points == max(1, measured // job.in_flight)
    explicit = ImageJob(Config.model_validate(data | {"batch_size": 40}))
    assert explicit.batch.points == 40 // explicit.in_flight


def test_peak_memory_of_a_small_cnn_at_48x192_stays_under_1_5_gb(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(0)
    for index in range(6):
        coarse = generator.integers(0, 256, (7, 25, 3), dtype=np.uint8)
        Image.fromarray(coarse, mode="RGB").resize((192, 48), Image.Resampling.BILINEAR).save(images / f"{index}.png")
    config = tmp_path / "cls.yaml"
    config.write_text(f"model: {{factory: '{REPO / 'benchmarks' / 'memory_models.py'}:direction_classifier'}}\n"
                      "input: {mode: RGB, resize: [48, 192], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n")
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(config), str(images), "-o", str(tmp_path / "out"),
               "-q", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 6
    assert usage.ru_maxrss * 1024 <= 1.5e9
