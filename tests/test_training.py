"""The committed training script rebuilds the sample model reproducibly, in every format."""
import subprocess
import sys

import torch

from igcli.backends.loading import load_model

from .conftest import SAMPLE_DATA

CPU = torch.device("cpu")


def train(out):
    subprocess.run([sys.executable, str(SAMPLE_DATA / "train_digits.py"), "--epochs", "1", "--out", str(out)],
                   check=True, capture_output=True)
    return torch.load(out / "models" / "digits_cnn_state.pt", weights_only=True)


def test_training_is_reproducible_and_formats_agree(tmp_path):
    first, second = train(tmp_path / "a"), train(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    models = tmp_path / "a" / "models"
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    exported = load_model(models / "digits_cnn.pt2", None, "logits", CPU).scores(x)
    scripted = load_model(models / "digits_cnn.ts", None, "logits", CPU).scores(x)
    factory = load_model(models / "digits_cnn_state.pt", f"{SAMPLE_DATA / 'models' / 'digits_cnn.py'}:build_model",
                         "logits", CPU).scores(x)
    torch.testing.assert_close(scripted, exported)
    torch.testing.assert_close(factory, exported)
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 12


def test_question_model_training_is_reproducible(tmp_path):
    def train_questions(out):
        subprocess.run([sys.executable, str(SAMPLE_DATA / "train_questions.py"), "--epochs", "1", "--out", str(out)],
                       check=True, capture_output=True)
        return torch.load(out / "models" / "questions_state.pt", weights_only=True)

    first, second = train_questions(tmp_path / "a"), train_questions(tmp_path / "b")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "a" / "text" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "text" / "tokenizer.json").read_bytes()
    assert len(list((tmp_path / "a" / "texts").glob("*.txt"))) == 8
