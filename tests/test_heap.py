"""igcli/heap.py: `igcli explain` fixes glibc's malloc thresholds so that what a batch frees, the
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
from igcli.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "fixed" else None
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
