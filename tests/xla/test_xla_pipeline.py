"""The HPatches pipeline with --device xla on torch-xla's CPU backend: every preset, exact resume, --xla-launch.

Runs in the torch-floor lane of .ci/run; skipped where torch-xla is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("PJRT_DEVICE", "CPU")
torch_xla = pytest.importorskip("torch_xla")

from tripletkit_hpatches.config import PRESETS  # noqa: E402
from tripletkit_hpatches.train import main  # noqa: E402

pytestmark = pytest.mark.xla
DEV = torch_xla.device()  # the runtime starts before any backward pass (autograd sizes its device queues then)
ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--device",
    "xla",
    "--stages",
    "denoise,descriptor",
    "--denoise-steps",
    "2",
    "--denoise-batch",
    "8",
    "--steps",
    "4",
    "--stages-sk",
    "2x2,4x2",
    "--patience",
    "2",
    "--checkpoint-every",
    "2",
    "--threads",
    "1",
    "--quiet",
]


def test_every_preset_trains_on_xla(tiny, tmp_path):
    main(["--data", str(tiny), "--out", str(tmp_path), "--experiment", "all"] + FAST)
    for name in PRESETS:
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["device_used"].startswith("xla")
        losses = [float(r.split(",")[1]) for r in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
        assert len(losses) == 4 and all(np.isfinite(losses)), (name, losses)
        assert (tmp_path / name / "descriptor.pt").exists()


def test_resume_on_xla_is_exact(tiny, tmp_path):
    args = ["--data", str(tiny), "--experiment", "bh128"] + FAST
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b"), "--steps", "2"])
    main(args + ["--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


def test_xla_launch_starts_and_trains(tiny, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "hpatches" / "train.py"),
        "--data",
        str(tiny),
        "--out",
        str(tmp_path),
        "--xla-launch",
    ]
    done = subprocess.run(
        cmd + FAST, env=dict(os.environ, PJRT_DEVICE="CPU"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 4
