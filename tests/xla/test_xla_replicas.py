"""Several XLA replicas, as far as torch-xla's CPU backend allows.

On the CPU backend ``torch_xla.launch`` (``CPU_NUM_DEVICES=2``) runs the replicas as threads of one process
(torch-xla 2.9's ``run_multiprocess`` starts one process for a CPU host and a thread per device) and forms the
``xla`` process group, but its collectives do not work there: each process sees both devices as local and
XLA's rendezvous waits for a thread that never comes (we ran it: "Expected 2 threads to join the rendezvous").
So what runs here is the start of a multi-replica job: `setup_runtime` under the launcher gives each replica its
rank in a world of 2, and a launcher that hands each process its own world of one is refused before anything is
written. Training with all-reduce across replicas needs a TPU or GPU host.

Runs in the torch-floor lane of .ci/run; skipped where torch-xla is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PJRT_DEVICE", "CPU")
pytest.importorskip("torch_xla")

pytestmark = pytest.mark.xla
ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, os, sys, threading
from pathlib import Path
import torch_xla
import torch_xla.runtime as xr

def replica(index, out):
    os.environ.update(WORLD_SIZE=str(xr.world_size()), RANK=str(xr.global_ordinal()),
                      LOCAL_RANK=str(xr.local_ordinal()))
    from tripletkit_hpatches.runtime import setup_runtime
    rt = setup_runtime("xla", "auto", False)
    row = json.dumps({"rank": rt.rank, "world": rt.world, "device": str(rt.device), "ddp": rt.ddp})
    # one file per replica (process and thread: the launcher may run replicas as threads of one process), since
    # replicas printing to one pipe can interleave their lines
    tmp = Path(out) / f"{index}-{os.getpid()}-{threading.get_ident()}.json.tmp"
    tmp.write_text(row)
    tmp.rename(tmp.with_suffix(""))
    rt.close()

if __name__ == "__main__":
    torch_xla.launch(replica, args=(sys.argv[1],))
"""


def test_the_launcher_gives_each_replica_its_rank_in_one_world(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="2")
    rows = tmp_path / "rows"
    rows.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(rows)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads(p.read_text()) for p in sorted(rows.glob("*.json"))]
    assert sorted(r["rank"] for r in seen) == [0, 1], (
        sorted(p.name for p in rows.iterdir()),
        seen,
        done.stdout[-2000:],
    )
    assert all(r["world"] == 2 and r["ddp"] and r["device"].startswith("xla") for r in seen), seen


def test_processes_that_each_get_a_world_of_one_are_refused(tiny, tmp_path):
    """torchrun with --device xla on a backend without a shared runtime: two worlds of one, which used to write
    every log row twice as two rank 0s. It stops with the reason, and no log is written."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(ROOT / "examples" / "hpatches" / "train.py"), "--data", str(tiny), "--out", str(tmp_path / "run")]
    cmd += ["--device", "xla", "--stages", "denoise,descriptor", "--steps", "2", "--threads", "1", "--quiet"]
    env = dict(os.environ, PJRT_DEVICE="CPU", OMP_NUM_THREADS="1")
    env.pop("CPU_NUM_DEVICES", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "WORLD_SIZE is 2 but the process group has 1 process" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "log.csv").exists()
