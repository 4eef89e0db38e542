"""Every accepted model format loads to the same function; refused ones say how to proceed."""
import pytest
import torch

from igcli.backends.base import ScoreKind, apply_score, end_slopes
from igcli.backends.loading import load_model, resolve_device
from igcli.errors import ModelError, UsageError

from .conftest import SAMPLE_DATA

MODELS = SAMPLE_DATA / "models"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_batch():
    return torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("path,factory", [
    (MODELS / "digits_cnn.ts", None),
    (MODELS / "digits_cnn_state.pt", f"{MODELS / 'digits_cnn.py'}:build_model"),
])
def test_formats_compute_the_same_function_as_the_exported_program(path, factory, digits_batch):
    reference = load_model(MODELS / "digits_cnn.pt2", None, "logits", CPU).scores(digits_batch)
    other = load_model(path, factory, "logits", CPU).scores(digits_batch)
    torch.testing.assert_close(other, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["digits_cnn.pt2", "digits_cnn.ts", "digits_cnn.onnx"])
def test_a_whole_model_file_is_loaded_as_it_is_when_a_factory_is_configured(name, digits_batch):
    """The sample config names a factory for its state_dict; `--model digits_cnn.pt2` replaces both."""
    factory = f"{MODELS / 'digits_cnn.py'}:build_model"
    reference = load_model(MODELS / "digits_cnn_state.pt", factory, "logits", CPU).scores(digits_batch)
    other = load_model(MODELS / name, factory, "logits", CPU).scores(digits_batch)
    torch.testing.assert_close(other, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_exported_program_has_a_dynamic_batch(batch):
    runner = load_model(MODELS / "digits_cnn.pt2", None, "softmax", CPU)
    scores = runner.scores(torch.zeros(batch, 1, 32, 32))
    assert scores.shape == (batch, 10)
    torch.testing.assert_close(scores.sum(1), torch.ones(batch))


def test_score_kinds(digits_batch):
    logits = load_model(MODELS / "digits_cnn.pt2", None, "logits", CPU).scores(digits_batch)
    softmax = load_model(MODELS / "digits_cnn.pt2", None, "softmax", CPU).scores(digits_batch)
    sigmoid = load_model(MODELS / "digits_cnn.pt2", None, "sigmoid", CPU).scores(digits_batch)
    torch.testing.assert_close(softmax, torch.softmax(logits, 1))
    torch.testing.assert_close(sigmoid, torch.sigmoid(logits))


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), path)
    with pytest.raises(ModelError, match="trust_pickle: true"):
        load_model(path, None, "logits", CPU)
    runner = load_model(path, None, "logits", CPU, trust_pickle=True)
    assert runner.scores(torch.zeros(3, 1, 2, 2)).shape == (3, 2)


def test_state_dict_without_factory_says_what_to_set():
    with pytest.raises(ModelError, match="set model.factory"):
        load_model(MODELS / "digits_cnn_state.pt", None, "logits", CPU)


@pytest.mark.parametrize("setup,message", [
    (lambda d: d / "missing.pt2", "model file not found"),
    (lambda d: (d / "junk.pt").write_bytes(b"not a model") and d / "junk.pt", "not a model file"),
])
def test_bad_model_files(tmp_path, setup, message):
    with pytest.raises(ModelError, match=message):
        load_model(setup(tmp_path), None, "logits", CPU)


def test_bad_factories(tmp_path):
    with pytest.raises(ModelError, match="cannot import"):
        load_model(None, "no_such_package.mod:build", "logits", CPU)
    with pytest.raises(ModelError, match="has no function 'nope'"):
        load_model(None, f"{MODELS / 'digits_cnn.py'}:nope", "logits", CPU)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("import torch\ndef build():\n    return torch.nn.Linear(3, 2)\n")
    with pytest.raises(ModelError, match="does not fit"):
        load_model(MODELS / "digits_cnn_state.pt", f"{wrong}:build", "logits", CPU)


def test_device_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_end_slopes_match_the_derivative_along_a_path_where_the_outputs_move_linearly(score):
    # A linear model's outputs move linearly along a straight path, so the head's own prediction
    # of dF/dalpha at the ends is exact there: checked against autograd's derivative in alpha.
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(5, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 5, generator=g, dtype=torch.float64) * 2)
    x, baseline = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    kind = ScoreKind(score)

    def along(alpha):  # F on each path at its own alpha: [3] -> [3]
        points = baseline + alpha.view(-1, 1) * (x - baseline)
        return apply_score(kind, model(points)).gather(1, target.view(-1, 1)).squeeze(1)

    expected = torch.stack([torch.autograd.functional.jacobian(along, torch.full((3,), a, dtype=torch.float64)).diagonal()
                            for a in (0.0, 1.0)], dim=1)
    with torch.no_grad():
        slopes = end_slopes(kind, apply_score(kind, model(baseline)), apply_score(kind, model(x)), target)
    torch.testing.assert_close(slopes, expected)
    assert torch.isnan(end_slopes(ScoreKind.logits, model(baseline), model(x), target)).all()
