"""Run a command and report its peak resident memory: ``python -m bench.peak_rss OUT.json -- CMD ARGS...``.

A process's peak RSS (``ru_maxrss``) survives ``exec``, so a command started straight from a big process (pytest
holding a synthetic set) would report its parent's size. This launcher is small: it forks, the child execs the
command, and the peak that ``wait4`` returns is the command's own (the largest of it and the children it waited
for). Writes {"returncode", "peak_rss_bytes", "wall_s"} to OUT.json; the command's output passes through.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    out, sep, cmd = argv[0], argv[1], argv[2:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: python -m bench.peak_rss OUT.json -- CMD ARGS...")
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"returncode": code, "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": wall}, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
