"""How many threads the evaluation's GIL-releasing work (pandas' CSV parser, numpy's gathers and reductions) uses."""

from __future__ import annotations

import os


def worker_threads(requested: int | None = None) -> int:
    """``requested`` when given (≥ 1), else the cores this process may run on, at most 4: past that the parsing and
    gathers are bound by memory bandwidth, not cores."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
