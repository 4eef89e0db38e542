"""RuntimeOptions (igcli/runtime/options.py) reach the stages they set, with nothing patched in igcli."""
from __future__ import annotations

import json

from igcli.config import load_config
from igcli.pipeline import run as run_module
from igcli.pipeline.overlap import ordered_map
from igcli.results import writer as writer_module
from igcli.runtime.options import RuntimeOptions

from .conftest import DIGITS_CONFIG, SAMPLE_DATA


def test_a_run_uses_the_options_it_is_given_and_writes_the_same_records(tmp_path, monkeypatch):
    seen: dict[str, int] = {}

    def recording_map(work, items, in_flight):
        seen["in_flight"] = in_flight
        return ordered_map(work, items, in_flight)

    def recording_prefetch(items, depth):
        seen["read_ahead"] = depth
        return real_prefetch(items, depth)

    class RecordingPool(writer_module.ThreadPoolExecutor):
        def __init__(self, workers, prefix):
            seen["writer_threads"] = workers
            super().__init__(workers, prefix)

    real_prefetch = run_module.prefetched
    monkeypatch.setattr(run_module, "ordered_map", recording_map)
    monkeypatch.setattr(run_module, "prefetched", recording_prefetch)
    monkeypatch.setattr(writer_module, "ThreadPoolExecutor", RecordingPool)
    config = load_config(DIGITS_CONFIG, [("device=cpu", "--set"), ("steps=8", "--set")])
    options = RuntimeOptions(chunks_in_flight=3, read_ahead=5, writer_threads=1)
    summary = run_module.explain_inputs(config, [str(SAMPLE_DATA / "images")], tmp_path / "given", options=options)
    assert seen == {"in_flight": 3, "read_ahead": 5, "writer_threads": 1}
    assert summary.failed == 0 and summary.records == 12

    seen.clear()
    plain = RuntimeOptions(chunks_in_flight=1, read_ahead=0, writer_threads=0)
    run_module.explain_inputs(config, [str(SAMPLE_DATA / "images")], tmp_path / "plain", options=plain)
    assert seen == {"in_flight": 1, "read_ahead": 0}  # no writer pool at all

    def records(out):
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    # Fixed steps: each path's points do not depend on its batch mates, so the records agree.
    given, alone = records(tmp_path / "given"), records(tmp_path / "plain")
    assert [r["relpath"] for r in given] == [r["relpath"] for r in alone]
    assert [r["target"] for r in given] == [r["target"] for r in alone]
