"""ONNX end to end: gradient graphs from torch and from plain ONNX on onnxruntime, converted graphs on torch."""
import json

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.base import ScoreKind
from igcli.backends.loading import build_gradient_graph, load_model
from igcli.backends.onnx.format import read_info
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.torch_backend import TorchBackend
from igcli.cli.commands import main
from igcli.errors import ModelError

from .conftest import DIGITS_CONFIG, SAMPLE_DATA, needs_maxpool_export
from .onnx_models import opset11_cnn, single_op_model

CPU = torch.device("cpu")
MODELS = SAMPLE_DATA / "models"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))


def ig(backend, x, rule=Rule.riemann_middle, steps=32):
    baselines = torch.zeros_like(x)[:, None]
    return attribute(backend, x, baselines, TargetSpec("predicted"), Quadrature(rule, steps), batch_size=50)


@needs_maxpool_export
def test_opset11_cnn_with_constant_weights_ig_on_onnxruntime_equals_torch(tmp_path):
    path = tmp_path / "vendor.onnx"
    onnx.save(opset11_cnn(), path)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    on_ort = ig(load_model(path, None, "logits", CPU, backend="onnxruntime"), x)
    on_torch = ig(load_model(path, None, "logits", CPU), x)  # auto: a free batch axis runs on torch
    for a, b in zip(on_ort, on_torch):
        assert a.target == b.target
        assert float((a.attributions - b.attributions).abs().max() / b.attributions.abs().max()) <= 1e-4
        assert a.attribution_sum == pytest.approx(b.attribution_sum, rel=1e-4)


@needs_maxpool_export
@pytest.mark.parametrize("source", ["digits_cnn.pt2", "digits_cnn.onnx"])
def test_sample_model_exported_both_ways_runs_any_batch_size(source):
    graph, check = build_gradient_graph(MODELS / source, None, ScoreKind.softmax)
    assert check.error < 1e-4
    info = read_info(graph)
    assert info.input_shape == (1, 32, 32) and info.score is ScoreKind.softmax
    runtime = OnnxRuntimeBackend(graph.SerializeToString(), info, CPU)
    reference = load_model(MODELS / "digits_cnn.pt2", None, "softmax", CPU)
    for batch in (1, 7, 64):
        x = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch))
        weights = torch.zeros(batch, 10)
        weights[:, 3] = 1
        scores, grads = runtime.scores_and_grads(x, weights)
        expected_scores, expected_grads = reference.scores_and_grads(x, weights)
        torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-6)
        assert float((grads - expected_grads).abs().max() / expected_grads.abs().max()) < 1e-4


def test_fixed_batch_models_are_padded(tmp_path):
    model = single_op_model("Tanh", (4,))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3  # a graph fixed at batch 3
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    backend = load_model(path, None, "logits", CPU)
    assert backend.fixed_batch == 3
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(7, 4)
    scores, grads = backend.scores_and_grads(x, weights)
    torch.testing.assert_close(scores, torch.tanh(x))
    torch.testing.assert_close(grads, 1 - torch.tanh(x) ** 2)


def test_unsupported_op_is_named_with_its_node_and_a_way_to_learn_more(tmp_path):
    model = single_op_model("Tanh", (4,))
    model.graph.node.insert(0, helper.make_node("FancyOp", ["x"], ["x2"], name="fancy_1", domain="vendor.ops"))
    model.graph.node[1].input[0] = "x2"
    model.opset_import.append(helper.make_opsetid("vendor.ops", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError) as caught:
        load_model(path, None, "logits", CPU, input_shape=(4,))
    message = str(caught.value)
    assert "FancyOp (fancy_1)" in message and f"igcli inspect {path}" in message


def test_token_id_inputs_point_to_text_support(tmp_path):
    model = single_op_model("Cast", (6,), input_dtype=TensorProto.INT64, to=TensorProto.FLOAT)
    path = tmp_path / "text.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="token ids.*embedding layer"):
        load_model(path, None, "logits", CPU)


def test_free_spatial_dims_need_a_configured_size_for_a_gradient_graph(tmp_path):
    model = single_op_model("Relu", ("H", "W"))
    path = tmp_path / "free.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="set input.resize"):
        load_model(path, None, "logits", CPU, backend="onnxruntime")
    backend = load_model(path, None, "logits", CPU, backend="onnxruntime", input_shape=(3, 5))
    assert backend.scores(torch.ones(2, 3, 5)).shape == (2, 15)
    # On torch (the default for a free batch axis) the converted graph takes any size.
    assert load_model(path, None, "logits", CPU).scores(torch.ones(2, 4, 6)).shape == (2, 24)


@needs_maxpool_export
def test_auto_backend_runs_free_batch_onnx_on_torch_and_the_rest_on_onnxruntime(tmp_path):
    assert isinstance(load_model(MODELS / "digits_cnn.onnx", None, "softmax", CPU), TorchBackend)
    graph, _ = build_gradient_graph(MODELS / "digits_cnn.pt2", None, ScoreKind.softmax)
    onnx.save(graph, tmp_path / "digits.grad.onnx")
    assert isinstance(load_model(tmp_path / "digits.grad.onnx", None, "softmax", CPU), OnnxRuntimeBackend)
    fixed = single_op_model("Tanh", (4,))
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(fixed, tmp_path / "fixed.onnx")
    assert isinstance(load_model(tmp_path / "fixed.onnx", None, "logits", CPU), OnnxRuntimeBackend)


@needs_maxpool_export
def test_gradient_graph_score_must_match_config(tmp_path):
    graph, _ = build_gradient_graph(MODELS / "digits_cnn.pt2", None, ScoreKind.logits)
    path = tmp_path / "digits.grad.onnx"
    onnx.save(graph, path)
    with pytest.raises(ModelError, match="exported with score 'logits'"):
        load_model(path, None, "softmax", CPU)


@needs_maxpool_export
def test_cli_export_inspect_and_explain_on_onnx(tmp_path):
    runner = CliRunner()
    grad = tmp_path / "digits.grad.onnx"
    result = runner.invoke(main, ["export", str(MODELS / "digits_cnn.onnx"), "-o", str(grad), "--score", "logits"])
    assert result.exit_code == 0, result.output
    assert "torch autograd" in result.stderr
    report = json.loads(runner.invoke(main, ["inspect", str(grad), "--json"]).stdout)
    assert report["igcli_gradient_graph"] and report["gradient_graph"]["score"] == "logits"
    plain = json.loads(runner.invoke(main, ["inspect", str(MODELS / "digits_cnn.onnx"), "--json"]).stdout)
    assert plain["unsupported_ops"] == {} and plain["inputs"][0]["shape"][1:] == [1, 32, 32]

    outputs = {}
    runs = {"grad": (grad, "auto"), "plain": (MODELS / "digits_cnn.onnx", "onnxruntime"),
            "plain on torch": (MODELS / "digits_cnn.onnx", "auto")}
    for name, (model, backend) in runs.items():
        out = tmp_path / name
        result = runner.invoke(main, ["explain", "-c", str(DIGITS_CONFIG), str(SAMPLE_DATA / "images"), "-o", str(out),
                                      "--model", str(model), "--set", "model.score=logits", "--steps", "32", "-q",
                                      "--set", f"model.backend={backend}"])
        assert result.exit_code == 0, result.output
        outputs[name] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        expected = "torch" if name == "plain on torch" else "onnxruntime"
        assert json.loads((out / "manifest.json").read_text())["runtime"] == expected
    assert len(outputs["grad"]) == 12
    for a, b, c in zip(outputs["grad"], outputs["plain"], outputs["plain on torch"]):
        assert a["score"] == "logits" and a["attribution_sum"] == pytest.approx(b["attribution_sum"], rel=1e-5)
        assert c["attribution_sum"] == pytest.approx(b["attribution_sum"], rel=1e-5)
        assert a["attribution_sum"] == pytest.approx(a["f_input"] - a["f_baseline"], rel=0.05)
    assert list((tmp_path / "cache" / "gradient-graphs").glob("digits_cnn-*.grad.onnx"))  # built once, cached


@needs_maxpool_export
def test_torch_model_on_the_onnxruntime_backend_matches_torch():
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    on_ort = ig(load_model(MODELS / "digits_cnn.pt2", None, "softmax", CPU, backend="onnxruntime"), x)
    on_torch = ig(load_model(MODELS / "digits_cnn.pt2", None, "softmax", CPU), x)
    for a, b in zip(on_ort, on_torch):
        assert float((a.attributions - b.attributions).abs().max() / b.attributions.abs().max()) <= 1e-4
