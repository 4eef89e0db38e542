"""The ONNX corpus: models other tools wrote (tests/data/onnx/README.md names each source), each
through `igcli export` (the gradient graph and its float64 check) and IG on both routes.

IG on onnxruntime must equal IG on the torch route within 1e-4 relative (per map, ||a - b|| / ||b||),
or else be within ten times the torch route's own float32 error (its distance from the same IG
computed in float64) of that float64 IG. One exception, measured and explained in docs/onnx.md:
the PaddleOCR classifier's last max-pool holds windows whose two largest values lie within 6e-7
of each other, so float32 rounding decides which one takes the gradient; both routes are right
to float32 there, and they are held to 1e-2 without a float64 run (float64 depthwise convolutions
take minutes on the CPU)."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.base import ScoreKind
from igcli.backends.loading import build_gradient_graph, load_model
from igcli.backends.onnx.format import read_info
from igcli.backends.onnx.grad import to_float64
from igcli.backends.onnx.source import onnx_to_torch
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.torch_backend import TorchBackend
from igcli.cli.commands import main
from igcli.errors import ModelError, root_cause

from .onnx_models import single_op_model

CORPUS = Path(__file__).parent / "data" / "onnx"
CPU = torch.device("cpu")
MODELS = {  # file: (input shape without batch, score)
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ((3, 48, 192), "logits"),  # see the module docstring
    "keras_cnn_nhwc_opset9.onnx": ((32, 32, 3), "logits"),
    "keras_mobilenet_nchw_opset13.onnx": ((3, 32, 32), "softmax"),
    "sklearn_mlp_digits.onnx": ((64,), "logits"),
    "torch_resnet.onnx": ((3, 32, 32), "softmax"),
    "torch_mobilenetv3.onnx": ((3, 32, 32), "softmax"),
    "torch_efficientnet.onnx": ((3, 32, 32), "softmax"),
    "torch_vit.onnx": ((3, 32, 32), "softmax"),
    "torch_convnext.onnx": ((3, 32, 32), "softmax"),
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))


def ig(backend, x):
    records = attribute(backend, x, torch.zeros_like(x)[:, None], TargetSpec("predicted"),
                      Quadrature(Rule.gausslegendre, 6), batch_size=16)
    return torch.stack([record.attributions.double() for record in records])


def relative(a, b):
    difference = (a.double() - b.double()).flatten(1).norm(dim=1)
    return float((difference / b.double().flatten(1).norm(dim=1)).max())


@pytest.mark.parametrize("file", list(MODELS))
def test_corpus_model_exports_and_ig_on_onnxruntime_equals_the_torch_route(file):
    path, (shape, score) = CORPUS / file, MODELS[file]
    graph, check = build_gradient_graph(path, None, ScoreKind(score), input_shape=shape)
    assert check.error <= check.tolerance and read_info(graph).input_shape == shape

    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(0))
    on_ort = ig(OnnxRuntimeBackend(graph.SerializeToString(), read_info(graph), CPU), x)
    model = onnx.load(str(path))
    on_torch = ig(TorchBackend(onnx_to_torch(model, path), score), x)
    if file.startswith("ch_ppocr"):
        assert relative(on_ort, on_torch) <= 1e-2
    elif relative(on_ort, on_torch) > 1e-4:
        in_float64 = ig(TorchBackend(onnx_to_torch(to_float64(model), path).double(), score), x.double())
        assert relative(on_ort, in_float64) <= 10 * relative(on_torch, in_float64)


def test_explain_on_onnxruntime_runs_the_checked_graph_that_export_writes(tmp_path):
    """`--set model.backend=onnxruntime` builds the same graph as `igcli export`, through the same check."""
    path = CORPUS / "keras_cnn_nhwc_opset9.onnx"
    result = CliRunner().invoke(main, ["export", str(path), "--score", "logits", "-o", str(tmp_path / "g.onnx")])
    assert result.exit_code == 0, result.output
    backend = load_model(path, None, "logits", CPU, backend="onnxruntime")
    exported = onnx.load(str(tmp_path / "g.onnx"))
    x = torch.randn(3, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    weights = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(3)), 1)
    written = OnnxRuntimeBackend(exported.SerializeToString(), read_info(exported), CPU)
    # load_model adapts the NHWC graph to the engine's NCHW tensors (backends/layout.py).
    scores, grads = backend.scores_and_grads(x.permute(0, 3, 1, 2), weights)
    torch.testing.assert_close((scores, grads.permute(0, 2, 3, 1)), written.scores_and_grads(x, weights))


def test_a_wrong_gradient_graph_is_refused_before_anyone_uses_it(monkeypatch, tmp_path):
    """Break one rule (ReLU passes every gradient): the float64 check refuses the graph, in export and explain."""
    from igcli.backends.onnx import vjp as onnx_vjp
    from igcli.backends.onnx.vjp import elementwise

    monkeypatch.setitem(onnx_vjp.RULES, "Relu", elementwise._unary(elementwise._identity))
    path = CORPUS / "torch_resnet.onnx"
    with pytest.raises(ModelError, match="differ from float64 autograd"):
        build_gradient_graph(path, None, ScoreKind.softmax, input_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="differ from float64 autograd"):
        load_model(path, None, "softmax", CPU, backend="onnxruntime", input_shape=(3, 32, 32))
    assert not list((tmp_path / "cache").glob("**/*.onnx"))  # nothing unchecked was cached


def test_fixed_batch_onnx_runs_at_its_batch_with_one_warning(tmp_path, caplog):
    """A graph fixed to batch 2 (as Paddle and Caffe2 exports often are) runs 2 inputs at a time on both routes."""
    model = onnx.load(str(CORPUS / "torch_resnet.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weights = torch.softmax(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)), 1)
    with caplog.at_level("WARNING", logger="igcli"):
        on_ort = load_model(path, None, "softmax", CPU, backend="onnxruntime")
    assert [r.getMessage() for r in caplog.records if "fixed to batch 2" in r.getMessage()] != []
    assert len([r for r in caplog.records if "fixed to batch" in r.getMessage()]) == 1
    on_torch = load_model(path, None, "softmax", CPU, backend="torch")
    free = load_model(CORPUS / "torch_resnet.onnx", None, "softmax", CPU, backend="torch")
    expected_scores, expected_grads = free.scores_and_grads(x, weights)
    for backend in (on_ort, on_torch):
        scores, grads = backend.scores_and_grads(x, weights)
        torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-6)
        assert relative(grads, expected_grads) < 1e-4


def test_root_cause_is_the_deepest_exception_on_one_line():
    try:
        try:
            try:
                raise AttributeError("graph._tensor_constant0 references nonexistent attribute\nmore detail")
            except AttributeError as inner:
                raise RuntimeError("step 2/3 failed") from inner
        except RuntimeError:
            raise ValueError("export failed\nNext steps: ...")
    except ValueError as error:
            assert root_cause(error) == "graph._tensor_constant0 references nonexistent attribute"


def test_a_model_that_fails_in_onnxruntime_is_reported_in_one_line(tmp_path):
    model = single_op_model("Reshape", (6,), {"shape": np.array([4, -1], np.int64)})
    path = tmp_path / "reshape.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError) as caught:
        build_gradient_graph(path, None, ScoreKind.logits)
    message = str(caught.value)
    assert "\n" not in message and "onnxruntime cannot run the model" in message and "Reshape" in message
