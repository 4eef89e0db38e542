"""igcli/runtime/heap.py: `igcli explain` fixes glibc's malloc thresholds so that what a batch frees, the
next batch reuses without faulting the pages in again. Each check runs in a fresh process:
malloc's settings are the whole process's."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Five 4 MiB arrays made (and written) and freed, round after round, as a batch's activations are.
# glibc by default maps the first, then serves them from the heap and hands the freed top of the
# heap back to the system each round, so every round faults ~5,000 pages in again.
PROBE = """
import resource, sys
import numpy as np
from igcli.runtime.heap import set_up_malloc
applied = set_up_malloc("mallopt") if sys.argv[1] == "fixed" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(12):
    if round == 2:
        start = faults()
    blocks = [np.ones(1 << 19) for _ in range(5)]
    del blocks
print(applied, faults() - start)
"""


def probe(setting: str, **environment: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True,
                            env={**os.environ, **environment})
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_freed_batches_are_reused_without_page_faults():
    applied, fixed = probe("fixed")
    _, default = probe("default")
    assert applied == "True"
    assert default > 10_000  # ten rounds of ~20 MiB faulted in again: the pattern the setting is for
    assert fixed < 500


def test_malloc_settings_from_the_environment_are_left_alone():
    applied, faults = probe("fixed", MALLOC_TRIM_THRESHOLD_="1000000")
    assert applied == "False" and faults > 10_000
    applied, _ = probe("fixed", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")
    assert applied == "False"


# Each start of an interpreter appends its pid and GLIBC_TUNABLES to a file (a sitecustomize on
# PYTHONPATH), so a test sees whether `igcli` started itself again, and with what.
STARTS = """
import os
with open(os.environ["IGCLI_TEST_STARTS"], "a") as log:
    log.write(f"{os.getpid()} {os.environ.get('GLIBC_TUNABLES')}\\n")
"""


def starts(tmp_path, *args: str, **environment: str) -> list[list[str]]:
    (tmp_path / "sitecustomize.py").write_text(STARTS)
    log = tmp_path / "starts.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "IGCLI_TEST_STARTS": str(log), **environment}
    for name in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        if name not in environment:
            env.pop(name, None)
    subprocess.run([sys.executable, "-m", "igcli", *args], env=env, capture_output=True)
    return [line.split(" ", 1) for line in log.read_text().splitlines()]


def test_explain_starts_itself_again_once_with_the_malloc_tunables(tmp_path):
    from igcli.runtime.heap import MALLOC_TUNABLES

    [(first_pid, first), (second_pid, second)] = starts(tmp_path, "explain")
    assert first_pid == second_pid  # replaced, not a child: signals and $! still reach the run
    assert first == "None" and second == MALLOC_TUNABLES


def test_the_users_tunables_are_kept(tmp_path):
    from igcli.runtime.heap import MALLOC_TUNABLES

    other = "glibc.rtld.optional_static_tls=4096"  # not malloc's: ours are added to it
    assert [t for _, t in starts(tmp_path, "explain", GLIBC_TUNABLES=other)] == \
        [other, f"{other}:{MALLOC_TUNABLES}"]
    (tmp_path / "starts.txt").unlink()
    own = "glibc.malloc.trim_threshold=1000000"  # malloc's: left as they are, no restart
    assert [t for _, t in starts(tmp_path, "explain", GLIBC_TUNABLES=own)] == [own]
    (tmp_path / "starts.txt").unlink()
    assert len(starts(tmp_path, "explain", MALLOC_TRIM_THRESHOLD_="1000000")) == 1


def test_only_explain_starts_itself_again(tmp_path):
    assert len(starts(tmp_path, "--version")) == 1
    (tmp_path / "starts.txt").unlink()
    assert len(starts(tmp_path, "explain", "--help")) == 1  # answered before the command runs


def test_a_program_calling_the_commands_keeps_its_process(tmp_path):
    from click.testing import CliRunner

    from igcli.cli.commands import main
    from igcli.runtime.options import RuntimeOptions

    # "none": the process keeps malloc as it is; the command still runs (and here finds no input).
    result = CliRunner().invoke(main, ["explain"], obj=RuntimeOptions(malloc="none"))
    assert result.exit_code == 2 and "give at least one input" in result.output


# glibc ignores a tunable it does not know, silently: check that the per-thread cache is really off.
# A freed small piece kept in the cache still counts as in use (mallinfo2's uordblks).
CACHE_PROBE = """
import ctypes
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.mallinfo2.restype = [ctypes.c_void_p], Info
held = [libc.malloc(200) for _ in range(7)]  # takes what the cache already holds of this size
pieces = [libc.malloc(200) for _ in range(7)]
before = libc.mallinfo2().uordblks
for piece in pieces:
    libc.free(piece)
print(before - libc.mallinfo2().uordblks)
"""


def test_the_tunables_take_effect():
    from igcli.runtime.heap import MALLOC_TUNABLES

    _, faults = probe("default", GLIBC_TUNABLES=MALLOC_TUNABLES)  # the thresholds, as mallopt sets them
    assert faults < 500

    def freed(tunables: str | None) -> int:
        env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        run = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True, check=True)
        return int(run.stdout)

    assert freed(None) == 0  # all seven held by the cache
    assert freed(MALLOC_TUNABLES) >= 7 * 200
