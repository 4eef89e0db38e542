"""What ``output.format: parquet`` adds to a run: the sample job with jsonl and with parquet, each
a fresh ``igcli explain`` process, alternating over ``--repeats``; medians of wall and CPU time
(user + system, less disturbed by other jobs on a shared machine). Then the parts alone, in this
process: importing pyarrow, and writing a part of the sample job's records. Record the figures in
docs/performance.md.

    PYTHONPATH=. python benchmarks/parquet_overhead.py [--repeats 9]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "igcli", "explain", "-c", "configs/digits.yaml", "sample_data/images", "-q"]


def one_run(out: Path, output_format: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one sample-job run into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    before, clock = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([*COMMAND, "-o", str(out), "--set", f"output.format={output_format}"], cwd=REPO, check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall, after = time.perf_counter() - clock, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def part_costs(lines: list[str], folder: Path) -> None:
    clock = time.perf_counter()
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    print(f"import pyarrow.parquet + pyarrow.json: {time.perf_counter() - clock:.3f} s")
    from igcli.results.parquet import ParquetParts

    parts = ParquetParts(folder)
    for rows in (len(lines), 1000):
        batch = (lines * (rows // len(lines) + 1))[:rows]
        times = []
        for _ in range(5):
            clock = time.perf_counter()
            parts.add(batch)
            parts.end_chunk()
            times.append(time.perf_counter() - clock)
        print(f"a part of {rows} records: {statistics.median(times) * 1000:.1f} ms (median of 5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"jsonl": [], "parquet": []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for output_format, times in runs.items():
                times.append(one_run(Path(scratch) / output_format, output_format))
        for output_format, times in runs.items():
            print(f"{output_format}: wall {statistics.median(t[0] for t in times):.3f} s, "
                  f"CPU {statistics.median(t[1] for t in times):.3f} s (medians of {args.repeats})")
        lines = (Path(scratch) / "parquet" / "results.jsonl").read_text(encoding="utf-8").splitlines()
        part_costs(lines, Path(scratch) / "parts")


if __name__ == "__main__":
    main()
