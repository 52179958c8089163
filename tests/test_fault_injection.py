"""Fault injection on the HPatches pipeline (tiny data, under 2 minutes): kills, damaged and planted files, and a
bad-input matrix over the public API.

Kills are real SIGKILLs of a ``train.py`` process: at the k-th atomic rename (after an output's temporary file is
complete, before it replaces the target), at the k-th fsync (while an output is being written), and at random times.
One chain of killed runs, each resuming the last, must end with the same weights, logs, task files and results as
an uninterrupted run. The hooks live in the test's wrapper process (they patch ``os.replace``/``os.fsync``); the
library has no test-only code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tripletkit_hpatches.train import main

FAST = [
    "--denoise-steps", "3", "--denoise-batch", "16", "--steps", "6", "--stages-sk", "2x2,4x2", "--patience", "2",
    "--checkpoint-every", "2", "--monitor-every", "2", "--eval-every", "2", "--verification-pairs", "200",
    "--queries", "5", "--threads", "1", "--quiet",
]  # fmt: skip

WRAPPER = r"""
import os, signal, sys
mode, n = os.environ["TK_FAULT"].split(":")
n, seen = int(n), [0]
def hit():
    seen[0] += 1
    if seen[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if mode in ("replace", "fsync"):
    real = getattr(os, mode)
    def patched(*args, **kwargs):
        hit()
        return real(*args, **kwargs)
    setattr(os, mode, patched)
from tripletkit_hpatches.train import main
main(sys.argv[1:])
"""

OUTPUTS_TEXT = ("log.csv", "map_log.csv", "denoise_log.csv", "results.json", "results.md")


def _args(tiny: Path, out: Path) -> list[str]:
    return ["--data", str(tiny), "--out", str(out)] + FAST


def _killed_run(args: list[str], fault: str, timeout: float = 120) -> int:
    env = dict(os.environ, TK_FAULT=fault if not fault.startswith("time") else "none:0")
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *args], env=env, stdout=subprocess.DEVNULL)
    if fault.startswith("time"):
        try:
            return proc.wait(timeout=float(fault.split(":")[1]))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=timeout)


def _same_outputs(a: Path, b: Path) -> None:
    wa = torch.load(a / "descriptor.pt", weights_only=True)
    wb = torch.load(b / "descriptor.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "descriptor weights differ"
    with np.load(a / "denoised.npz") as za, np.load(b / "denoised.npz") as zb:
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files), "denoised patches differ"
    for name in OUTPUTS_TEXT:
        assert (a / name).read_text() == (b / name).read_text(), name
    for f in sorted((a / "tasks").iterdir()):
        assert f.read_bytes() == (b / "tasks" / f.name).read_bytes(), f.name


@pytest.fixture(scope="module")
def reference_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    main(_args(tiny, out))
    return out


def test_a_chain_of_kills_resumes_to_the_uninterrupted_result(tiny, reference_run, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(2026)  # seeded: CI replays the same chain
    faults = [f"replace:{rng.randint(1, 6)}" for _ in range(3)]
    faults += [f"fsync:{rng.randint(1, 8)}" for _ in range(3)]
    faults += [f"time:{rng.uniform(4.0, 9.0):.1f}" for _ in range(2)]
    rng.shuffle(faults)
    killed = 0
    for i, fault in enumerate(faults):
        rc = _killed_run(_args(tiny, out) + (["--resume"] if i else []), fault)
        assert rc in (0, -signal.SIGKILL), (fault, rc)
        killed += rc == -signal.SIGKILL
    main(_args(tiny, out) + ["--resume"])
    _same_outputs(reference_run, out)
    print(f"fault injection: {len(faults)} kills tried ({killed} landed before the run ended), resumed exactly")
    assert killed >= len(faults) // 2  # the chain really was interrupted, not a string of finished runs


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_kill_inside_each_output_write_never_leaves_a_torn_file(tiny, reference_run, tmp_path, k):
    # a kill at the k-th fsync: the file being written is a temporary one; every output that exists is complete
    out = tmp_path / "torn"
    assert _killed_run(_args(tiny, out), f"fsync:{k}") == -signal.SIGKILL
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            if path.suffix == ".pt":
                torch.load(path, weights_only=True)
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    [z[key] for key in z.files]
            elif path.suffix == ".json":
                json.loads(path.read_text())
    main(_args(tiny, out) + ["--resume"])
    _same_outputs(reference_run, out)


def test_damaged_outputs_are_redone_not_trusted(tiny, reference_run, tmp_path):
    out = tmp_path / "damaged"
    main(_args(tiny, out))
    # damage after the run: a truncated descriptor, a truncated denoiser output, a partial task set
    (out / "descriptor.pt").write_bytes((out / "descriptor.pt").read_bytes()[:100])
    (out / "denoised.npz").write_bytes((out / "denoised.npz").read_bytes()[:200])
    (out / "tasks" / "verif_neg_inter_split-default.csv").unlink()
    with pytest.warns(UserWarning, match="does not load"):
        main(_args(tiny, out) + ["--resume"])
    _same_outputs(reference_run, out)


def test_a_planted_pickle_in_a_checkpoint_never_runs(tiny, tmp_path):
    import pickle

    out = tmp_path / "planted"
    main(_args(tiny, out) + ["--stages", "denoise,descriptor", "--steps", "2"])
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = {"format": 2, "model": Evil()}
    (out / "checkpoint.pt").write_bytes(pickle.dumps(state))
    (out / "checkpoint.pt.prev").write_bytes(pickle.dumps(state))
    with pytest.raises(SystemExit):
        main(_args(tiny, out) + ["--stages", "denoise,descriptor", "--steps", "4", "--resume"])
    assert not marker.exists()


def test_orphaned_temporary_files_are_ignored(tiny, reference_run, tmp_path):
    out = tmp_path / "orphans"
    out.mkdir()
    # what a kill between an output's write and its rename leaves behind; a planted symlink with the old
    # predictable name must not be followed either
    (out / ".descriptor.pt.abcd1234.tmp").write_bytes(b"half a file")
    (out / "descriptor.pt.tmp").symlink_to(tmp_path / "elsewhere")
    main(_args(tiny, out))
    _same_outputs(reference_run, out)
    assert not (tmp_path / "elsewhere").exists()
