"""keep_freed_memory: a freed large block is reused without faulting its pages in again (checked in a fresh process,
so the test's own allocator settings stay as they were)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from tripletkit_hpatches.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(64 << 20, dtype=np.uint8)
    a[::4096] = 1  # touch every page
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_block()
print(int(took), faults_of_a_fresh_block())
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    took, faults = map(int, out.split())
    return took, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_faults():
    took, kept = _probe("keep")
    _, default = _probe("default")
    assert took == 1
    # 64 MiB is 16,384 pages: by default the second block is a new mapping and faults (or, with transparent huge
    # pages, at least some of) them in again; kept, the heap already holds it
    assert kept < 100 and default > kept
