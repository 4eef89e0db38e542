"""Config: defaults < YAML < --set < flags; every problem is one line naming the key and place."""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igcli.attribution.baselines import BaselineKind
from igcli.attribution.quadrature import Rule
from igcli.config import TopK, load_config
from igcli.errors import ConfigError

from .conftest import DIGITS_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, list(overrides))
    return str(caught.value)


def test_sample_config_loads_with_paths_taken_from_its_folder():
    config = load_config(DIGITS_CONFIG)
    models = DIGITS_CONFIG.parent.parent / "sample_data" / "models"
    assert config.model.path.resolve() == (models / "digits_cnn_state.pt").resolve()
    assert config.model.factory == f"{models / 'digits_cnn.py'}:build_model"
    assert config.model.path.exists() and config.model.labels.exists()
    assert config.method is Rule.adaptive and config.steps == "auto"


def test_unknown_key_names_key_line_and_nearest_valid_key(tmp_path):
    path = write(tmp_path, "model:\n  path: m.pt2\n  scroe: softmax\n")
    assert error_of(path) == f"{path}:3: unknown key 'model.scroe'; did you mean 'model.score'?"


def test_unknown_top_level_key_and_nested_union_key(tmp_path):
    path = write(tmp_path, "model: {path: m.pt2}\nstep: 4\n")
    assert error_of(path) == f"{path}:2: unknown key 'step'; did you mean 'steps'?"
    path = write(tmp_path, "model: {path: m.pt2}\ntarget: {top_kk: 3}\n")
    assert "unknown key 'target.top_kk'; did you mean 'target.top_k'?" in error_of(path)


def test_wrong_value_names_key_and_value(tmp_path):
    path = write(tmp_path, "model: {path: m.pt2}\nmethod: simpson\n")
    message = error_of(path)
    assert message.startswith(f"{path}:2: 'method'") and "simpson" in message


def test_duplicate_keys_and_tabs_are_refused(tmp_path):
    assert "duplicate key 'model.path' (first at line 2)" in error_of(write(tmp_path, "model:\n  path: a\n  path: b\n"))
    assert "tab character" in error_of(write(tmp_path, "model:\n\tpath: a\n"))


def test_missing_model_and_missing_file(tmp_path):
    assert "model.path" in error_of(write(tmp_path, "steps: 4\n"))
    assert "config file not found" in error_of(tmp_path / "nope.yaml")


def test_precedence_defaults_yaml_set_flags(tmp_path):
    path = write(tmp_path, "model: {path: m.pt2}\nsteps: 16\nbatch_size: 32\n")
    assert load_config(path).batch_size == 32
    config = load_config(path, [("steps=24", "--set"), ("baseline.kind=blur", "--set"),
                                ((("steps",), 40), "--steps")])
    assert config.steps == 40 and config.baseline.kind is BaselineKind.blur and config.tolerance == 0.01


def test_set_replaces_a_scalar_with_a_section_and_reports_its_origin(tmp_path):
    path = write(tmp_path, "model: {path: m.pt2}\ntarget: predicted\n")
    assert load_config(path, [("target.top_k=3", "--set")]).target == TopK(top_k=3)
    assert error_of(path, [("baseline.kindd=blur", "--set")]).startswith("--set: unknown key 'baseline.kindd'")


@settings(max_examples=60, deadline=None)
@given(steps=st.one_of(st.integers(-5, 5000), st.just("auto")), batch=st.integers(-3, 10_000),
       rule=st.sampled_from([r.value for r in Rule] + ["trapez"]))
def test_numbers_and_names_are_validated_not_trusted(tmp_path_factory, steps, batch, rule):
    path = write(tmp_path_factory.mktemp("c"), f"model: {{path: m.pt2}}\nsteps: {steps}\nbatch_size: {batch}\nmethod: {rule}\n")
    valid = (steps == "auto" or steps >= 1) and batch >= 1 and rule != "trapez"
    if valid:
        config = load_config(path)
        assert (config.steps, config.batch_size, config.method.value) == (steps, batch, rule)
    else:
        assert error_of(path).startswith(f"{path}:")


def test_adaptive_chunks_fill_four_batches_within_the_gradient_budget():
    from igcli.pipeline.image_job import ADAPTIVE_GRADIENT_BYTES, ADAPTIVE_POINTS_PER_PATH, _inputs_per_chunk

    def chunk(*sets: str) -> int:
        config = load_config(DIGITS_CONFIG, [(text, "--set") for text in sets])
        return _inputs_per_chunk(config, config.batch_size)

    # The sample config: adaptive, a first round of 5 points per input; batches of 64 (each of two
    # chunks in flight on the CPU).
    assert chunk("batch_size=64") == -(-4 * 64 // 5) == 52 and chunk("batch_size=32") == -(-4 * 32 // 5)
    assert chunk() == chunk("batch_size=256") == 96  # at most MAX_INPUTS_PER_CHUNK
    assert chunk("method=gausslegendre", "steps=50") == -(-128 // 51)  # fixed rules: one batch
    assert chunk("target.top_k=3") == -(-4 * 128 // 15)
    large = ("input.mode=RGB", "input.resize=[512, 512]", "input.mean=[0.5, 0.5, 0.5]", "input.std=[0.5, 0.5, 0.5]")
    assert 1 <= chunk(*large) < chunk()
    assert chunk(*large) * ADAPTIVE_POINTS_PER_PATH * 3 * 512 * 512 * 4 <= ADAPTIVE_GRADIENT_BYTES


def test_chunk_inputs_sets_the_chunk_of_image_and_text_jobs(tmp_path):
    from igcli.pipeline.image_job import ImageJob, _inputs_per_chunk
    from igcli.pipeline.text_job import TEXT_INPUTS_PER_CHUNK, TextJob

    from .test_text import QUESTIONS_CONFIG

    def config(path: Path, *sets: str):
        return load_config(path, [(text, "--set") for text in ("device=cpu",) + sets])

    large = ("input.mode=RGB", "input.resize=[512, 512]", "input.mean=[0.5, 0.5, 0.5]", "input.std=[0.5, 0.5, 0.5]")
    # What the user asks for wins over the auto size, its memory budget included.
    assert _inputs_per_chunk(config(DIGITS_CONFIG, "chunk_inputs=200", *large), 128) == 200
    assert ImageJob(config(DIGITS_CONFIG, "chunk_inputs=5")).chunk_size == 5
    job = ImageJob(config(DIGITS_CONFIG))
    assert job.chunk_size == _inputs_per_chunk(config(DIGITS_CONFIG), job.batch.points)
    assert TextJob(config(QUESTIONS_CONFIG, "chunk_inputs=7")).chunk_size == 7
    assert TextJob(config(QUESTIONS_CONFIG)).chunk_size == TEXT_INPUTS_PER_CHUNK
    for wrong in ("0", "-3"):
        message = error_of(DIGITS_CONFIG, [(f"chunk_inputs={wrong}", "--set")])
        assert message.startswith("--set: 'chunk_inputs'") and "positive integer or 'auto'" in message, message
    assert error_of(DIGITS_CONFIG, [("chunk_inputs=many", "--set")]).startswith("--set: 'chunk_inputs'")
