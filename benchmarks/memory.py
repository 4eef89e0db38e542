"""Peak memory against the number of inputs: `igcli explain` on 100 and on 10,000 small images.

Each run is a fresh `python -m igcli explain` process over copies of the sample digit scans (the
sample CNN, CPU, every output written: heatmap PNG, .npy, JSON record, results.jsonl, report.html);
its peak resident set size comes from the kernel (wait4's ru_maxrss). Memory is flat when the
10,000-image peak is within 10% of the 100-image one.

    python benchmarks/memory.py [--counts 100 10000] [--set key=value ...] [--malloc-cache]

``--malloc-cache`` runs igcli with glibc's per-thread cache left on (the thresholds still fixed),
as igcli ran before it turned the cache off (igcli/runtime/heap.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from end_to_end import CONFIG, REPO, make_inputs

from igcli.runtime.heap import THRESHOLD_TUNABLES


def peak_rss(folder: Path, out: Path, sets: list[str], environment: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one explain run in a child process."""
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(CONFIG), str(folder), "-o", str(out), "-q",
               "--set", "output.attributions=npy", *(arg for text in sets for arg in ("--set", text))]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"igcli exited with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides")
    parser.add_argument("--malloc-cache", action="store_true", help="leave glibc's per-thread cache on")
    args = parser.parse_args()
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if args.malloc_cache:
        environment["GLIBC_TUNABLES"] = THRESHOLD_TUNABLES  # set by the user, so igcli adds no cache setting
    print(f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"overrides: {' '.join(args.sets) or 'none'}, malloc: "
          f"{'per-thread cache on' if args.malloc_cache else 'as igcli explain sets it'}")
    print("| inputs | peak RSS (MiB) | vs first | seconds |")
    print("|---|---|---|---|")
    first = None
    for count in args.counts:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "images"
            folder.mkdir()
            make_inputs(folder, count)
            peak, seconds = peak_rss(folder, Path(scratch) / "out", args.sets, environment)
        first = first or peak
        print(f"| {count:,} | {peak:,.0f} | {peak / first:.3f}x | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
