"""Errors are part of the interface: each bad device, key, option or folder gets one line on
stderr naming what was wrong and the fix, and the exit code README.md gives (2: nothing ran)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import DIGITS_CONFIG, SAMPLE_DATA, one_error_line
from .conftest import invoke as igcli

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")


def digits_config_with(tmp_path: Path, extra: str) -> Path:
    """The sample config with ``extra`` YAML lines appended, its paths still pointing at sample_data."""
    text = DIGITS_CONFIG.read_text().replace("../sample_data", str(SAMPLE_DATA)).replace("device: auto\n", "")
    config = tmp_path / "cfg.yaml"
    config.write_text(text + extra)
    return config


@NO_CUDA
@pytest.mark.parametrize("args,named", [
    (["--device", "cuda"], "--device cuda:"),
    (["--device", "cuda:1"], "--device cuda:1:"),
    (["--device", "cuda:all"], "--device cuda:all:"),
    (["--device", "cuda:0,cuda:2"], "--device cuda:0,cuda:2:"),
    (["--set", "device=cuda"], "--set device=cuda:"),
    (["--workers", "2", "--set", "device=cuda:0"], "--set device=cuda:0:"),
])
def test_a_cuda_device_without_cuda_is_a_usage_error_naming_where_it_was_asked(tmp_path, args, named):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out", *args)
    line = one_error_line(result)
    assert result.exit_code == 2
    assert named in line and f"no CUDA device here (torch {torch.__version__})" in line and "--device cpu" in line
    assert not (tmp_path / "out").exists()


@NO_CUDA
def test_a_cuda_device_in_the_yaml_names_its_line(tmp_path):
    config = digits_config_with(tmp_path, "device: cuda\n")
    line_number = config.read_text().splitlines().index("device: cuda") + 1
    result = igcli("explain", "-c", config, SAMPLE_DATA / "images", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"igcli: error: {config}:{line_number}: device cuda: no CUDA device here")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: names a device index past the last")
def test_a_cuda_index_past_the_last_device_is_a_usage_error(tmp_path):
    past = f"cuda:{torch.cuda.device_count()}"
    for args in (["--device", past], ["--device", f"cuda:0,{past}"]):
        result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out", *args)
        assert result.exit_code == 2 and f"{past} is not here" in one_error_line(result)


@pytest.mark.parametrize("sets,key,fix", [
    (["smoothgrad={samples: 4, sigma: 25}"], "smoothgrad.sigma", "; 25/255 = 0.098 (got 25)"),
    (["baseline.kind=gaussian", "baseline.sigma=51"], "baseline.sigma", "; 51/255 = 0.2 (got 51)"),
    (["smoothgrad={samples: 4, sigma: 1.5}"], "smoothgrad.sigma", "(0.1 to 0.2 is usual) (got 1.5)"),  # no 0-255 guess
])
def test_a_noise_sigma_over_the_pixel_range_is_refused_with_the_unit_it_takes(sets, key, fix):
    result = igcli("validate-config", DIGITS_CONFIG, *[arg for text in sets for arg in ("--set", text)])
    line = one_error_line(result)
    assert result.exit_code == 2 and line.endswith(fix)
    assert f"--set: '{key}': the noise std is a fraction of the pixel range [0, 1]" in line


def test_noise_sigmas_within_the_pixel_range_and_blur_sigmas_in_pixels_pass():
    for sets in (["smoothgrad={samples: 4, sigma: 1}"], ["baseline.kind=gaussian", "baseline.sigma=0.2"],
                 ["baseline.kind=blur", "baseline.sigma=20"]):
        assert igcli("validate-config", DIGITS_CONFIG, *[a for text in sets for a in ("--set", text)]).exit_code == 0


@pytest.mark.parametrize("args,line", [
    (["--workers", "0"], "igcli: error: --workers: got '0'; give the number of worker processes: an integer of 1 or more"),
    (["--workers", "-2"], "igcli: error: --workers: got '-2'; give the number of worker processes"),
    (["--max-errors", "-1"], "igcli: error: --max-errors: got '-1'; give how many failed inputs to allow"),
    (["--shard", "4/4"], "igcli: error: --shard: expected I/N with 0 <= I < N, e.g. 0/4"),
    (["--bogus"], "igcli: error: No such option '--bogus'"),
])
def test_option_errors_are_one_line_naming_the_option_and_the_fix(tmp_path, args, line):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and one_error_line(result).startswith(line)
    assert not (tmp_path / "out").exists()


def test_a_missing_argument_or_command_is_one_line_pointing_at_help():
    for args, line in ((["diff", "a"], "Missing argument 'NEW'; see "), (["nope"], "No such command 'nope'; see ")):
        result = igcli(*args)
        assert result.exit_code == 2 and line in one_error_line(result) and "--help'" in result.stderr


@pytest.mark.parametrize("command", ["summary", "report", "diff"])
def test_run_folders_that_are_missing_files_or_empty_are_told_apart(tmp_path, command):
    empty, afile, broken = tmp_path / "empty", tmp_path / "afile", tmp_path / "broken"
    empty.mkdir()
    afile.write_text("")
    broken.symlink_to(tmp_path / "gone")
    cases = {tmp_path / "missing": "no such folder;", broken: "no such folder (a broken link);",
             afile: "a file, not a folder;", empty: "no results.jsonl in this folder;"}
    for folder, says in cases.items():
        args = ["diff", folder, empty, "-o", tmp_path / "drift"] if command == "diff" else [command, folder]
        result = igcli(*args)
        assert result.exit_code == 2
        assert one_error_line(result) == f"igcli: error: {folder}: {says} give the -o folder of an igcli explain run"
    assert not (tmp_path / "drift").exists()


def test_a_broken_rule_across_keys_names_where_its_culprit_was_set(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("model: {path: m.pt2}\nbaseline: {kind: black}\nsmoothgrad: {samples: 2, sigma: 0.1}\n")
    cases = [
        (["--set", "path=guided"], "--set: set one of path and smoothgrad: they do not combine yet"),
        (["--set", "baseline.kind=file"], "--set: baseline.kind 'file' needs baseline.path"),
        (["--set", "input.kind=text", "--set", "smoothgrad=null"], "--set: baseline.kind 'black' does not apply to text"),
        (["--set", "baseloine.kind=x"], "--set: unknown key 'baseloine'; did you mean 'baseline'?"),
        (["--set", "path=guided", "--set", "smoothgrad=null", "--set", "baseline.samples=3"],
         "--set: path guided takes one baseline per input"),
    ]
    for sets, line in cases:
        result = igcli("validate-config", config, *sets)
        assert result.exit_code == 2 and one_error_line(result).startswith(f"igcli: error: {line}"), sets
    config.write_text(config.read_text() + "path: guided\n")  # both in the file: the line of the first named
    result = igcli("validate-config", config)
    assert one_error_line(result) == f"igcli: error: {config}:4: set one of path and smoothgrad: they do not combine yet"


def test_validate_config_checks_a_layer_name_against_the_model_where_it_is_here(tmp_path):
    # The sample model is an nn.Sequential: its modules are named 0..9 (10 is none of them).
    found = igcli("validate-config", DIGITS_CONFIG, "--set", "layer=3")
    assert found.exit_code == 0 and "layer: '3'" in found.stdout
    assert one_error_line(found) == "igcli: layer '3': found in the model (Conv2d)"
    wrong = igcli("validate-config", DIGITS_CONFIG, "--set", "layer=features.3")
    assert wrong.exit_code == 2 and wrong.stdout == ""
    assert one_error_line(wrong).startswith("igcli: error: --set: layer 'features.3': no such module in the model;")
    elsewhere = igcli("validate-config", DIGITS_CONFIG, "--set", "layer=3", "--set", f"model.path={tmp_path / 'm.pt'}")
    assert elsewhere.exit_code == 0 and "layer: '3'" in elsewhere.stdout
    assert one_error_line(elsewhere) == (f"igcli: layer '3': not checked, {tmp_path / 'm.pt'} is not here; "
                                         "explain checks it before any work")


@pytest.mark.parametrize("text,line", [
    ("..=3", "--set '..=3': an empty part in the key; name it like baseline.kind=blur"),
    ("baseline..kind=blur", "--set 'baseline..kind=blur': an empty part in the key"),
    ("model.path.x=3", "--set: 'model.path': Input is not a valid path"),  # the file's scalar became --set's section
])
def test_set_keys_with_empty_parts_or_that_replace_a_files_value_name_the_set(text, line):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", text)
    assert result.exit_code == 2 and one_error_line(result).startswith(f"igcli: error: {line}")


@pytest.mark.parametrize("text,key,says", [
    ("steps=yes", "steps", "true/false where a number is due (YAML reads yes, no, on, off as true/false"),
    ("max_steps=on", "max_steps", "true/false where a number is due"),
    ("target=no", "target", "true/false where a number or a name is due"),
    ("model.path=", "model.path", "an empty path; give a file or folder, or leave the key out"),
    ("input.resize=[0, 0]", "input.resize", "sizes are positive pixel counts: N, or [H, W]"),
    ("input.crop=-3", "input.crop", "sizes are positive pixel counts"),
])
def test_yaml_booleans_for_numbers_empty_paths_and_sizes_below_one_are_config_errors(text, key, says):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", text)
    assert result.exit_code == 2 and one_error_line(result).startswith(f"igcli: error: --set: '{key}': {says}")


def test_booleans_stay_booleans_and_sizes_stay_sizes():
    result = igcli("validate-config", DIGITS_CONFIG, "--set", "output.records=no", "--set", "input.crop=[28, 28]")
    assert result.exit_code == 0 and "records: false" in result.stdout and "crop:\n  - 28\n  - 28" in result.stdout


def test_a_key_written_one_section_too_high_is_pointed_to_its_section(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("model: {path: m.pt}\nheatmap: {style: bare}\n")
    result = igcli("validate-config", config)
    assert one_error_line(result) == f"igcli: error: {config}:2: unknown key 'heatmap'; did you mean 'output.heatmap'?"
    result = igcli("validate-config", DIGITS_CONFIG, "--set", "output.style=bare")
    assert one_error_line(result).endswith("unknown key 'output.style'; did you mean 'output.heatmap.style'?")


def test_an_input_folder_that_is_also_the_output_folder_is_refused_before_any_output(sample_tree):
    before = sorted(path.name for path in sample_tree.iterdir())
    for spec in (sample_tree, f"{sample_tree}/**/*.png"):
        result = igcli("explain", "-c", DIGITS_CONFIG, spec, "-o", sample_tree, "-q")
        assert result.exit_code == 2 and one_error_line(result) == (
            f"igcli: error: {spec}: the inputs' folder is also the output folder (-o), so a rerun would read its "
            f"heatmaps as inputs; give -o a folder of its own, e.g. {sample_tree / 'explained'}")
    assert sorted(path.name for path in sample_tree.iterdir()) == before  # nothing written


def test_an_empty_output_folder_name_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", "", "-q")
    assert result.exit_code == 2 and one_error_line(result) == "igcli: error: -o '': an empty folder name; give -o a folder, e.g. -o out/"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target,line", [
    ("{top_k: 0}", "--set: 'target.top_k': Input should be greater than or equal to 1 (got 0)"),
    ("{top_k: 2, above: 0.5}", "--set: 'target.above' does not go with the other keys of 'target'; keep one form's keys"),
    ("{tpo_k: 2}", "--set: unknown key 'target.tpo_k'; did you mean 'target.top_k'?"),
])
def test_a_target_form_error_names_its_key_not_a_key_of_another_form(target, line):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", f"target={target}")
    assert result.exit_code == 2 and one_error_line(result) == f"igcli: error: {line}"


@pytest.mark.parametrize("text,line", [
    ("regions=none", "'regions': Input should be 'xrai' (got 'none'); null (or leaving the key out) turns regions off"),
    ("regions=off", "(got False); null (or leaving the key out) turns regions off"),  # YAML's off is false
    ("smoothgrad=none", "'smoothgrad' is a section: give its keys (smoothgrad.samples, smoothgrad.sigma, "
                        "smoothgrad.seed, ...), not a value; null (or leaving the key out) turns smoothgrad off"),
    ("map_tolerance=off", "(got False); null (or leaving the key out) turns map_tolerance off"),
    ("model=", "'model' is a section: give its keys (model.path, model.factory, model.score, ...), not a value"),
    ("input=gray", "'input' is a section: give its keys (input.kind, "),
    ("steps=99999999999", "'steps': at most 65536; gausslegendre with 1024 steps is a reference map already"),
    ("max_steps=65537", "'max_steps': at most 65536;"),
])
def test_a_word_for_off_a_value_for_a_section_and_endless_steps_get_the_fix(text, line):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", text)
    assert result.exit_code == 2 and line in one_error_line(result)
    assert "ModelSection" not in result.stderr


def test_the_steps_cap_itself_and_null_regions_pass():
    assert igcli("validate-config", DIGITS_CONFIG, "--set", "steps=65536", "--set", "regions=null").exit_code == 0


def test_the_regions_rules_name_the_set_that_broke_them(tmp_path):
    config = digits_config_with(tmp_path, "regions: xrai\n")
    for sets, says in ((["--set", "layer=conv1"], "regions ranks regions of a map shaped like the input"),
                       (["--set", "target.class=1", "--set", "target.region=predicted"], "regions applies to image")):
        result = igcli("validate-config", config, *sets)
        assert result.exit_code == 2 and one_error_line(result).startswith(f"igcli: error: --set: {says}"), sets


@pytest.mark.parametrize("url,says", [
    ("S3://bucket/x", "S3://bucket/x: URL schemes are lower case here; did you mean s3://?"),
    ("Memory://x", "did you mean memory://?"),
    ("s4://bucket/x", "fsspec knows no 's4' filesystem; known: s3, gs, "),
])
def test_an_output_url_with_a_mistyped_scheme_gets_the_likely_one(tmp_path, url, says, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", url)
    assert result.exit_code == 2 and says in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_a_label_target_not_in_the_labels_file_is_caught_by_validate_config_with_the_nearest_label(tmp_path):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", "target=sevn")
    assert result.exit_code == 2
    assert one_error_line(result) == ("igcli: error: target 'sevn': not among the 10 labels in the labels file (did "
                                      "you mean 'seven'?); a label name, a class index, predicted, or {top_k: k}")
    explained = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out", "--set",
                      "target=sevn")
    assert explained.exit_code == 2 and one_error_line(explained) == one_error_line(result)
    assert igcli("validate-config", DIGITS_CONFIG, "--set", "target=seven").exit_code == 0


def test_quiet_runs_that_exit_1_say_why_in_one_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "zero.png").write_bytes((SAMPLE_DATA / "images" / "zero_1437.png").read_bytes())
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = igcli("explain", "-c", DIGITS_CONFIG, folder, "-o", out, "--steps", "8", "-q", "--strict")
    assert result.exit_code == 1
    assert one_error_line(result) == (f"igcli: error: 1 of 2 inputs failed (their error records are in "
                                      f"{out}/results.jsonl); 1 records did not converge (--strict)")
    clean = igcli("explain", "-c", DIGITS_CONFIG, folder / "zero.png", "-o", tmp_path / "ok", "--steps", "8", "-q")
    assert clean.exit_code == 0 and clean.stderr == ""
