"""Peak RSS and wall time of `igcli explain` under each way of setting up malloc.

Each run is a fresh child process on copies of the sample digit scans (configs/digits.yaml, CPU);
its peak resident set size comes from the kernel (wait4's ru_maxrss). The set-ups:

- ``default``: what ``igcli explain`` does (igcli/runtime/heap.py).
- ``tunables``: started under GLIBC_TUNABLES: mmap and trim thresholds fixed, per-thread cache off.
- ``mallopt``: the same thresholds fixed by mallopt in the process; glibc's per-thread cache left on.
- ``glibc``: malloc as glibc sets it (a GLIBC_TUNABLES setting of the user's, so igcli changes nothing).
- ``jemalloc``, ``tcmalloc``: LD_PRELOAD of Debian's libjemalloc2 / libtcmalloc-minimal4.

    python benchmarks/malloc.py [--counts 12 2000] [--repeats 3] [--setups default mallopt ...]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
LIBRARIES = Path("/usr/lib/x86_64-linux-gnu")
TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"
UNSET = "glibc.malloc.check=0"  # a malloc setting of the user's: igcli then sets nothing itself
MAIN = "import sys; from igcli.cli.commands import main; main(sys.argv[1:], prog_name='igcli')"
MALLOPT = ("import ctypes, os; mallopt = ctypes.CDLL(None).mallopt; mallopt(-3, 32 << 20); mallopt(-1, 64 << 20); "
           f"os.environ['GLIBC_TUNABLES'] = '{UNSET}'; " + MAIN)
# set-up: (python arguments before the command's, environment changes)
SETUPS = {
    "default": (["-m", "igcli"], {}),
    "tunables": (["-c", MAIN], {"GLIBC_TUNABLES": TUNABLES}),
    "mallopt": (["-c", MALLOPT], {}),
    "glibc": (["-c", MAIN], {"GLIBC_TUNABLES": UNSET}),
    "jemalloc": (["-c", MAIN], {"GLIBC_TUNABLES": UNSET, "LD_PRELOAD": str(LIBRARIES / "libjemalloc.so.2")}),
    "tcmalloc": (["-c", MAIN], {"GLIBC_TUNABLES": UNSET, "LD_PRELOAD": str(LIBRARIES / "libtcmalloc_minimal.so.4")}),
}


def run(setup: str, folder: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one explain run in a child process."""
    prefix, changes = SETUPS[setup]
    environment = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    environment |= changes
    command = [sys.executable, *prefix, "explain", "-c", str(CONFIG), str(folder), "-o", str(out), "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{setup}: igcli exited with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[12, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args()
    sources = sorted((REPO / "sample_data" / "images").glob("*.png"))
    print(f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"median (min-max) of {args.repeats} runs, set-ups interleaved")
    print("| inputs | set-up | peak RSS (MiB) | seconds |")
    print("|---|---|---|---|")
    for count in args.counts:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "images"
            folder.mkdir()
            for index in range(count):
                shutil.copy(sources[index % len(sources)], folder / f"{index:05d}_{sources[index % len(sources)].name}")
            figures: dict[str, list[tuple[float, float]]] = {setup: [] for setup in args.setups}
            for repeat in range(args.repeats):
                for setup in args.setups:
                    out = Path(scratch) / f"out-{setup}-{repeat}"
                    figures[setup].append(run(setup, folder, out))
                    print(f"# {count} {setup} run {repeat}: {figures[setup][-1][0]:,.0f} MiB, "
                          f"{figures[setup][-1][1]:.1f} s", file=sys.stderr, flush=True)
                    shutil.rmtree(out)
            for setup, runs in figures.items():
                peaks, seconds = [r[0] for r in runs], [r[1] for r in runs]
                print(f"| {count:,} | {setup} | {statistics.median(peaks):,.0f} ({min(peaks):,.0f}-{max(peaks):,.0f}) "
                      f"| {statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f}) |", flush=True)


if __name__ == "__main__":
    main()
