"""Peak memory of one forward + backward, measured as RSS growth in a fresh subprocess.

torch's CPU allocations do not show in ``torch.cuda`` statistics or in tracemalloc, so the probe resets the kernel's
resident-set high-water mark (``echo 5 > /proc/self/clear_refs``) just before the call, and reports ``VmHWM`` after it
minus ``VmRSS`` before it: the inputs, the imports and any earlier transient peak are in the baseline, not the growth.
Where the reset is not available, ``ru_maxrss`` (the peak since the process started) is used instead and the result
says so.

    python -m bench.memory --impl ours --loss batch_all --margin hinge --n 4096
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_here(impl: str, loss: str, margin: str, n: int, dtype: str) -> dict:
    import torch

    from bench.cases import make_case, make_inputs, step, threads

    torch.set_num_threads(threads())
    fn = make_case(impl, loss, margin)
    # warm up lazily initialised state (thread pools, BLAS buffers) on a tiny batch
    step(fn, *make_inputs(16, getattr(torch, dtype)))
    x, y = make_inputs(n, getattr(torch, dtype))
    gc.collect()
    reset = _reset_peak()
    before = _status_mib("VmRSS")
    step(fn, x, y)
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": impl,
        "loss": loss,
        "margin": margin,
        "n": n,
        "dtype": dtype,
        "peak_growth_mib": max(peak - before, 0.0),
        "method": "VmHWM reset" if reset else "ru_maxrss",
    }


def measure(impl: str, loss: str, margin: str, n: int, dtype: str = "float32", timeout: float = 300) -> float | None:
    """Peak RSS growth in MiB, from a fresh interpreter; None if the probe failed (e.g. out of memory)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.memory",
        "--impl",
        impl,
        "--loss",
        loss,
        "--margin",
        margin,
        "--n",
        str(n),
        "--dtype",
        dtype,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", required=True, choices=["ours", "naive", "pml", "oml", "floor"])
    p.add_argument("--loss", required=True, choices=["batch_hard", "batch_all", "random", "semihard"])
    p.add_argument("--margin", default="hinge", choices=["hinge", "softplus"])
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    print(json.dumps(measure_here(a.impl, a.loss, a.margin, a.n, a.dtype)))


if __name__ == "__main__":
    main()
