"""Keep freed memory in the process during an evaluation, where the C library allows it.

An evaluation allocates and frees the same large temporaries over and over: a level's stacked table, the
verification distance chunks, matching's Gram blocks, retrieval's query blocks. glibc serves blocks above its mmap
threshold (128 KiB, adapting up to 32 MiB) with fresh mappings and returns them to the system on free, so each reuse
faults its pages in again. On the 2-core VMs we measure on, a fault-in costs about as much as the work on the
memory: ``keep_freed_memory`` made the issue-sized evaluation 7 % faster (median of 8 alternating fresh runs:
2.45 s against 2.64 s; minor faults 52k against 78k) at the same peak RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Serve allocations up to ``limit_bytes`` from the heap and never trim it, so freed blocks are reused without
    new page faults. Returns whether it took effect (glibc only; elsewhere it does nothing and returns False).
    Peak memory is unchanged: memory that was freed is reused, not added."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(limit_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
