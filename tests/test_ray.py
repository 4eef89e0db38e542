"""--ray: chunks on Ray actors (a local Ray on 2 CPUs) write the bytes of a one-process run."""
import pytest
from click.testing import CliRunner

from igcli.cli.commands import main

from .conftest import DIGITS_CONFIG, REPO
from .test_workers import SMALL_CHUNKS, assert_same_tree


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_ray_actors_write_the_bytes_of_one_process(sample_tree, tmp_path):
    ray = pytest.importorskip("ray")
    one, on_ray = tmp_path / "one", tmp_path / "ray"
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", one, *SMALL_CHUNKS, "-q").exit_code == 0
    # The actors import igcli from this checkout, as a cluster's nodes import the installed one.
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", on_ray, *SMALL_CHUNKS, "-q",
                     "--ray", "auto", "--workers", 2)
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert_same_tree(one, on_ray)


def test_without_ray_the_flag_is_one_line_naming_the_extra(sample_tree, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    result = CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), str(sample_tree), "-o",
                                       str(tmp_path / "out"), "--ray", "auto", *SMALL_CHUNKS])
    assert result.exit_code == 2 and "pip install 'igcli[ray]'" in result.output
