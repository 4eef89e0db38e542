"""The speed levers keep the numbers: channels-last, autocast precisions, padded batches, read-ahead."""
import threading

import pytest
import torch

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends import batching, torch_backend
from igcli.backends.base import Precision
from igcli.backends.batching import BatchSize, padded_size
from igcli.backends.loading import load_model
from igcli.backends.torch_backend import TorchBackend
from igcli.data.prefetch import prefetched
from igcli.errors import ModelError

from .conftest import SAMPLE_DATA
from .nets import small_cnn, smooth_mlp


def _points(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 1, 8, 8, generator=g)
    weights = torch.zeros(6, 4)
    weights[torch.arange(6), torch.arange(6) % 4] = 1
    return x, weights


def _plain_scores_and_grads(module, x, weights):
    x = x.clone().requires_grad_(True)
    scores = torch.softmax(module(x), 1)
    (grads,) = torch.autograd.grad((scores * weights).sum(), x)
    return scores.detach(), grads


def test_convolutional_models_run_channels_last_with_the_same_numbers():
    x, weights = _points()
    reference = _plain_scores_and_grads(small_cnn(dtype=torch.float32), x, weights)
    backend = TorchBackend(small_cnn(dtype=torch.float32), "softmax", channels_last=True)
    assert backend.channels_last and not TorchBackend(smooth_mlp(), "softmax", channels_last=True).channels_last
    assert TorchBackend(small_cnn(dtype=torch.float32), "softmax").channels_last  # the default
    assert not TorchBackend(small_cnn(dtype=torch.float32), "softmax", channels_last=False).channels_last
    scores, grads = backend.scores_and_grads(x, weights)
    torch.testing.assert_close(scores, reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads, reference[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_lower_precision_runs_the_path_under_autocast_and_keeps_the_end_points_float32(precision):
    x, weights = _points(1)
    exact = TorchBackend(small_cnn(dtype=torch.float32), "softmax")
    low = TorchBackend(small_cnn(dtype=torch.float32), "softmax", precision=precision)
    assert torch.equal(low.scores(x), exact.scores(x))  # F(x), F(x') stay float32
    scores, grads = low.scores_and_grads(x, weights)
    exact_scores, exact_grads = exact.scores_and_grads(x, weights)
    assert grads.dtype == scores.dtype == torch.float32
    assert not torch.equal(grads, exact_grads)  # autocast did run
    assert float((grads - exact_grads).norm() / exact_grads.norm()) < 0.05
    torch.testing.assert_close(scores, exact_scores, rtol=0.05, atol=0.01)


def test_float16_falls_back_to_float32_where_the_gradient_scale_overflows(monkeypatch):
    x, weights = _points(2)
    monkeypatch.setattr(torch_backend, "FLOAT16_GRAD_SCALE", 1e38)
    low = TorchBackend(small_cnn(dtype=torch.float32), "softmax", precision="float16")
    exact = TorchBackend(small_cnn(dtype=torch.float32), "softmax")
    torch.testing.assert_close(low.scores_and_grads(x, weights), exact.scores_and_grads(x, weights))


def test_lower_precision_needs_the_torch_backend():
    for path in (SAMPLE_DATA / "models" / "digits_cnn.onnx", SAMPLE_DATA / "models" / "digits_cnn.pt2"):
        with pytest.raises(ModelError, match="model.precision bfloat16 runs on the torch backend only"):
            load_model(path, None, "softmax", torch.device("cpu"), backend="onnxruntime", precision=Precision.bfloat16)
    # A plain ONNX model with a free batch axis runs on torch by default, so it may.
    backend = load_model(SAMPLE_DATA / "models" / "digits_cnn.onnx", None, "softmax", torch.device("cpu"),
                         precision=Precision.bfloat16)
    assert backend.precision is Precision.bfloat16


def test_read_ahead_keeps_order_and_raises_where_the_reader_failed():
    assert list(prefetched(iter(range(100)), 4)) == list(range(100))

    def failing():
        yield from range(3)
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(failing(), 2):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_leaving_early_stops_the_reader():
    produced = []

    def counting():
        for i in range(10_000):
            produced.append(i)
            yield i

    for item in prefetched(counting(), 3):
        if item == 5:
            break
    assert not any(t.name == "igcli-read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) < 20


def test_padded_sizes_are_few_and_never_smaller_than_the_batch():
    for batch_size in (1, 7, 64, 256, 1000):
        sizes = {padded_size(rows, batch_size) for rows in range(1, batch_size + 1)}
        assert all(rows <= padded_size(rows, batch_size) <= batch_size for rows in range(1, batch_size + 1))
        assert len(sizes) <= batching.SHAPE_BUCKETS + 1 and batch_size in sizes


class ShapeRecorder:
    """A real backend that notes the batch sizes it is asked for."""

    def __init__(self, backend):
        self.inner, self.sizes = backend, set()
        self.device, self.dtype, self.score_kind = backend.device, backend.dtype, backend.score_kind

    def scores(self, x):
        self.sizes.add(len(x))
        return self.inner.scores(x)

    def scores_and_grads(self, x, weights):
        self.sizes.add(len(x))
        return self.inner.scores_and_grads(x, weights)


def test_padded_batches_meet_few_shapes_and_change_no_number(monkeypatch):
    module = small_cnn()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(9, 1, 8, 8, generator=g, dtype=torch.float64)
    quad = Quadrature(Rule.adaptive, None, 0.001, 8, 512, 0.01)
    results = {}
    for buckets in (64, 4):  # 64: batches of any size (1 point per step); 4: sizes 16, 32, 48, 64
        monkeypatch.setattr(batching, "SHAPE_BUCKETS", buckets)
        recorder = ShapeRecorder(TorchBackend(module, "softmax"))
        results[buckets] = [attribute(recorder, x[:n], torch.zeros(n, 1, 1, 8, 8, dtype=torch.float64),
                                    TargetSpec("predicted"), quad, batch_size=BatchSize(64)) for n in range(1, 10)]
        results[buckets, "sizes"] = recorder.sizes
    assert results[4, "sizes"] <= {16, 32, 48, 64} and len(results[64, "sizes"]) > 8
    for unpadded, padded in zip(results[64], results[4]):
        for a, b in zip(unpadded, padded):
            assert (a.target, a.steps, a.gradient_evals) == (b.target, b.steps, b.gradient_evals)
            torch.testing.assert_close(b.attributions, a.attributions, rtol=1e-9, atol=1e-12)
