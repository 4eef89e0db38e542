"""Nightly jobs end to end: metrics in records, summary.json, and `igcli diff` with its exit codes,
on the sample models and real files in tmp_path (docs/nightly.md)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from igcli.attribution.faithfulness import deletion_insertion, pixel_units
from igcli.cli.commands import main
from igcli.config import load_config
from igcli.data.discover import InputRef
from igcli.errors import UsageError
from igcli.pipeline.image_job import ImageJob
from igcli.results.diff import average_ranks, spearman, top_overlap
from igcli.results.drift_rules import parse_rule

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA

QUESTIONS_CONFIG = REPO / "configs" / "questions.yaml"
IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))[:6]
METRICS = "metrics=[deletion, insertion, infidelity]"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sample digits explained with metrics, by the sample model and by a perturbed copy."""
    root = tmp_path_factory.mktemp("nightly")
    images = root / "images"
    images.mkdir()
    for image in IMAGES:
        (images / image.name).write_bytes(image.read_bytes())
    state = torch.load(SAMPLE_DATA / "models" / "digits_cnn_state.pt")
    generator = torch.Generator().manual_seed(0)
    perturbed = {key: value + 0.6 * value.std() * torch.randn(value.shape, generator=generator)
                 for key, value in state.items()}
    torch.save(perturbed, root / "perturbed.pt")
    common = ("-c", DIGITS_CONFIG, images, "-q", "--set", METRICS, "--set", "faithfulness.samples=4")
    assert run("explain", *common, "-o", root / "old").exit_code == 0
    assert run("explain", *common, "-o", root / "new", "--model", root / "perturbed.pt").exit_code == 0
    return root


def test_spearman_and_overlap_against_references():
    generator = np.random.default_rng(0)
    a = generator.integers(0, 5, 200).astype(float)  # many ties
    b = a + generator.normal(0, 2, 200)
    stats = pytest.importorskip("scipy.stats")
    assert np.array_equal(average_ranks(a), stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
    # Closed forms: a reversed order is -1, a constant map has no rank correlation.
    assert spearman(np.arange(7.0), -np.arange(7.0)) == pytest.approx(-1.0)
    assert spearman(np.ones(5), np.arange(5.0)) is None
    # Top 40% of 5 units = 2 units: {4, 3} against {4, 0}: IoU 1/3.
    assert top_overlap(np.array([0, 1, 2, 3, 4.0]), np.array([3, 0, 1, 2, 4.0]), 40) == pytest.approx(1 / 3)


def test_fail_on_rules_parse_or_name_the_problem():
    assert parse_rule("mean(top_overlap) >= 0.5").aggregate == "mean"
    for bad in ("rank_corr", "rank_cor<0.7", "median(rank_corr)<1", "rank_corr<<1", "mean(unmatched)>0"):
        with pytest.raises(UsageError, match="--fail-on"):
            parse_rule(bad)


def test_records_carry_metrics_and_the_manifest_their_distribution(runs):
    found = records(runs / "old")
    assert len(found) == len(IMAGES)
    for record in found:
        assert set(record["metrics"]) == {"deletion", "insertion", "infidelity"}
        assert 0 <= record["metrics"]["deletion"] <= 1 and record["metrics"]["infidelity"] >= 0
    totals = json.loads((runs / "old" / "manifest.json").read_text())["totals"]["metrics"]
    deletions = [record["metrics"]["deletion"] for record in found]
    assert totals["deletion"]["count"] == len(found)
    assert totals["deletion"]["mean"] == pytest.approx(sum(deletions) / len(deletions))
    assert totals["deletion"]["max"] == max(deletions)
    summary = json.loads((runs / "old" / "summary.json").read_text())
    assert summary["distributions"]["deletion"]["count"] == len(found)
    assert "<h2>Summary</h2>" in (runs / "old" / "report.html").read_text()


def test_a_records_deletion_and_insertion_recomputed_from_its_saved_map(runs, tmp_path):
    """The hook's numbers equal the metric computed by hand on the record's map, input and fill."""
    config = load_config(DIGITS_CONFIG, [(METRICS, "--set"), ("faithfulness.fill=baseline", "--set")])
    folder = tmp_path / "baseline-fill"
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", folder, "-q", "--set", METRICS,
               "--set", "faithfulness.fill=baseline").exit_code == 0
    record = records(folder)[0]
    job = ImageJob(config)
    sample = next(job.read([InputRef(IMAGES[0], IMAGES[0].name)]))
    attributions = torch.from_numpy(np.load(folder / record["outputs"]["attributions"]))
    fill = torch.full_like(sample.x, -1.0)  # black in the digits config's model space: (0 - 0.5) / 0.5
    _, expand = pixel_units(tuple(sample.x.shape))
    deletion, insertion = deletion_insertion(job.backend, sample.x[None], fill[None], attributions.sum(0).flatten()[None],
                                             torch.tensor([record["target"]["index"]]), expand, steps=20)
    assert record["metrics"]["deletion"] == pytest.approx(deletion.item(), rel=1e-6)
    assert record["metrics"]["insertion"] == pytest.approx(insertion.item(), rel=1e-6)


def test_without_metrics_records_have_no_new_keys(tmp_path):
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", tmp_path / "plain", "-q").exit_code == 0
    record = records(tmp_path / "plain")[0]
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "metrics" not in record and "metrics" not in manifest["totals"]
    assert "metrics" not in manifest["config"] and "faithfulness" not in manifest["config"]


def test_summary_means_equal_a_hand_computation_and_rebuild_the_same(runs, tmp_path):
    folder = runs / "old"
    summary = json.loads((folder / "summary.json").read_text())
    by_class: dict[int, list[np.ndarray]] = {}
    for record in records(folder):
        by_class.setdefault(record["target"]["index"], []).append(
            np.load(folder / record["outputs"]["attributions"]).astype(np.float64))
    assert sorted(int(k) for k in summary["classes"]) == sorted(by_class)
    for index, maps in by_class.items():
        entry = summary["classes"][str(index)]
        mean = np.load(folder / entry["mean_map"]["npy"])
        np.testing.assert_allclose(mean, sum(maps) / len(maps), rtol=1e-12)
        expected = [float(np.mean([np.abs(m[c]).mean() for m in maps])) for c in range(maps[0].shape[0])]
        assert entry["mean_abs_per_channel"] == pytest.approx(expected, rel=1e-12)
        assert entry["records"] == len(maps)
    worst = max(records(folder), key=lambda r: r["completeness"]["rel_error"])
    assert summary["worst"]["completeness"][0]["relpath"] == worst["relpath"]
    before = (folder / "summary.json").read_bytes()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("results.jsonl",):
        (copy / name).write_bytes((folder / name).read_bytes())
    (copy / "attributions").mkdir()
    for path in (folder / "attributions").iterdir():
        (copy / "attributions" / path.name).write_bytes(path.read_bytes())
    assert run("summary", copy).exit_code == 0
    assert (copy / "summary.json").read_bytes() == before


def test_text_summary_lists_top_tokens_by_mean_attribution(tmp_path):
    folder = tmp_path / "texts"
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", folder, "-q",
                 "--set", "metrics=[deletion, insertion]", "--set", "faithfulness.steps=8")
    assert result.exit_code == 0
    found = records(folder)
    assert all(set(record["metrics"]) == {"deletion", "insertion"} for record in found)
    sums: dict[tuple[int, str], list[float]] = {}
    for record in found:
        for token in record["tokens"]:
            if not token["special"]:
                sums.setdefault((record["target"]["index"], token["token"]), []).append(token["score"])
    summary = json.loads((folder / "summary.json").read_text())
    for index, entry in summary["classes"].items():
        means = sorted(((sum(v) / len(v), -len(v), t) for (c, t), v in sums.items() if c == int(index)),
                       key=lambda item: (-item[0], item[1], item[2]))
        top = entry["top_tokens"][0]
        assert (top["text"], top["count"]) == (means[0][2], -means[0][1])
        assert top["mean"] == pytest.approx(means[0][0], rel=1e-12)
    # A text run against itself: every map's order is the same.
    result = run("diff", folder, folder, "-o", tmp_path / "drift", "--fail-on", "rank_corr<0.999")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "drift" / "diff.jsonl").read_text().splitlines()]
    assert len(rows) == len(found) and all(row["rank_corr"] == pytest.approx(1.0) for row in rows)


def test_diff_of_a_run_with_itself_is_no_drift(runs, tmp_path):
    before = tree(runs / "old")
    result = run("diff", runs / "old", runs / "old", "-o", tmp_path / "same", "--fail-on", "rank_corr<0.999",
                 "--fail-on", "top_overlap<1", "--fail-on", "max(prediction_changed)>0")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "same" / "diff.jsonl").read_text().splitlines()]
    assert all(row["drift"] == pytest.approx(0.0, abs=1e-12) and row["deletion_change"] == 0 for row in rows)
    assert tree(runs / "old") == before  # nothing written outside -o
    assert {p.name for p in (tmp_path / "same").iterdir()} == {"diff.jsonl", "diff.html", "pictures"}


def test_diff_against_a_perturbed_model_flags_drift(runs, tmp_path):
    out = tmp_path / "drift"
    result = run("diff", runs / "old", runs / "new", "-o", out, "--fail-on", "rank_corr<0.9", "--fail-on",
                 "mean(top_overlap)<0.2")
    assert result.exit_code == 1
    assert "drift: rank_corr<0.9" in result.stderr
    rows = [json.loads(line) for line in (out / "diff.jsonl").read_text().splitlines()]
    assert len(rows) == len(IMAGES) and all(row["match"] == "both" for row in rows)
    drifts = [row["drift"] for row in rows]
    assert drifts == sorted(drifts, reverse=True) and min(row["rank_corr"] for row in rows) < 0.9
    page = (out / "diff.html").read_text(encoding="utf-8")
    assert page.count("<img") == 2 * len(rows) and (out / "pictures" / "1.old.png").is_file()
    assert all(math.isfinite(row["completeness_change"]) for row in rows)


def test_diff_usage_errors_exit_2_in_one_line(runs, tmp_path):
    bad_rule = run("diff", runs / "old", runs / "new", "-o", tmp_path / "a", "--fail-on", "rank_cor<0.7")
    assert bad_rule.exit_code == 2 and "unknown name 'rank_cor'" in bad_rule.stderr
    missing = run("diff", runs / "old", tmp_path / "nowhere", "-o", tmp_path / "b")
    assert missing.exit_code == 2 and f"{tmp_path / 'nowhere'}: no such folder" in missing.stderr
    no_maps = tmp_path / "no-maps"
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", no_maps, "-q",
               "--set", "output.attributions=none").exit_code == 0
    result = run("diff", runs / "old", no_maps, "-o", tmp_path / "c")
    assert result.exit_code == 2 and "output.attributions=npy" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    into_run = run("diff", runs / "old", runs / "new", "-o", runs / "new")
    assert into_run.exit_code == 2 and "one of the runs" in into_run.stderr


def test_max_sensitivity_in_a_run_grows_with_the_radius(tmp_path):
    """The run's own rule re-explains each perturbed input: a vanishing radius leaves the map as it was."""
    found = {}
    for radius in (1e-6, 0.3):
        folder = tmp_path / str(radius)
        assert run("explain", "-c", DIGITS_CONFIG, *IMAGES[:2], "-o", folder, "-q", "--method", "gausslegendre",
                   "--steps", 16, "--set", "metrics=[sensitivity]", "--set", "faithfulness.samples=2",
                   "--set", f"faithfulness.radius={radius}").exit_code == 0
        found[radius] = [record["metrics"]["sensitivity"] for record in records(folder)]
    assert max(found[1e-6]) < 1e-3 and min(found[0.3]) > 10 * max(found[1e-6])


def test_a_records_perturbations_do_not_depend_on_its_chunk(runs, tmp_path):
    """Infidelity's noise is seeded by the input's name and target: chunks of 2 give the run's numbers."""
    folder = tmp_path / "chunks"
    assert run("explain", "-c", DIGITS_CONFIG, runs / "images", "-o", folder, "-q", "--batch-size", 16, "--set",
               "chunk_inputs=2", "--set", METRICS, "--set", "faithfulness.samples=4").exit_code == 0
    for ours, theirs in zip(records(folder), records(runs / "old")):
        assert ours["relpath"] == theirs["relpath"]
        assert ours["metrics"]["infidelity"] == pytest.approx(theirs["metrics"]["infidelity"], rel=1e-3, abs=1e-9)


def test_a_rule_that_nothing_can_be_checked_against_is_a_breach(runs, tmp_path):
    """A run whose inputs all failed matches nothing; a metric rule against runs without metrics has
    no value: either way the nightly check must not pass."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    (empty / "attributions").mkdir()
    nothing = run("diff", runs / "old", empty, "-o", tmp_path / "a", "--fail-on", "rank_corr<0.7")
    assert nothing.exit_code == 1, nothing.stderr
    assert "no value to check (0 matched" in nothing.stderr
    plain = tmp_path / "plain"
    assert run("explain", "-c", DIGITS_CONFIG, *IMAGES[:2], "-q", "-o", plain).exit_code == 0
    unmetered = run("diff", plain, plain, "-o", tmp_path / "b", "--fail-on", "deletion_change>0.1",
                    "--fail-on", "max(drift)>0.5")
    assert unmetered.exit_code == 1, unmetered.stderr
    assert "deletion_change missing for all" in unmetered.stderr and "max(drift)" not in unmetered.stderr
