"""examples/stepped_batch.py: stages advance only under the threshold; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from tripletkit_hpatches.data import write_hpatches_sequence
from tripletkit_hpatches.descriptors import IMAGE_TYPES

ROOT = Path(__file__).resolve().parents[1]

# a script, not a package module: loaded from its file as `python examples/stepped_batch.py` would run it
run = runpy.run_path(str(ROOT / "examples" / "stepped_batch.py"))["run"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for s in range(3):
        base = rng.integers(0, 256, (12, 9, 9)).astype(float)
        big = np.kron(base, np.ones((8, 8)))[:, :65, :65]
        big = np.pad(big, ((0, 0), (0, 65 - big.shape[1]), (0, 65 - big.shape[2])), mode="edge")
        seq = {
            t: np.clip(big + rng.normal(0, 6 + 4 * "rehtx".index(t[0]), big.shape), 0, 255).astype(np.uint8)
            for t in IMAGE_TYPES
        }
        write_hpatches_sequence(root, f"v_tiny{s}", seq)
    return root


ARGS = [
    "--steps",
    "12",
    "--stages",
    "4x2,4x4,8x4",
    "--patience",
    "2",
    "--smoothing",
    "0.5",
    "--checkpoint-every",
    "4",
    "--monitor-every",
    "4",
    "--threads",
    "1",
    "--quiet",
    "--lr",
    "1e-3",
]


def test_resume_gives_the_same_run(tiny_data, tmp_path):
    full = run(["--data", str(tiny_data), "--out", str(tmp_path / "a")] + ARGS)
    run(["--data", str(tiny_data), "--out", str(tmp_path / "b")] + ARGS[:1] + ["8"] + ARGS[2:])  # killed after step 8
    resumed = run(["--data", str(tiny_data), "--out", str(tmp_path / "b"), "--resume"] + ARGS)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    batches_a, batches_b = a["ranks"][0]["stateful"]["batches"], b["ranks"][0]["stateful"]["batches"]
    assert batches_a["scheduler"] == batches_b["scheduler"] and batches_a["sampler"] == batches_b["sampler"]
    assert list(csv.reader((tmp_path / "a" / "log.csv").open())) == list(
        csv.reader((tmp_path / "b" / "log.csv").open())
    )
    assert full["stage_changes"] == resumed["stage_changes"]


def test_stages_advance_only_below_the_threshold(tiny_data, tmp_path):
    summary = run(["--data", str(tiny_data), "--out", str(tmp_path / "c")] + ARGS)
    rows = list(csv.DictReader((tmp_path / "c" / "log.csv").open()))
    assert len(rows) == 12
    assert summary["stage_changes"], "the tiny run is built to advance; no change means the test checks nothing"
    for e in summary["stage_changes"]:
        if e["reason"] == "advance":
            assert e["smoothed_loss"] < summary["threshold"]
    # the batch in the log follows the stage: S×K of the stage in force after each step
    stages = [(4, 2), (4, 4), (8, 4)]
    for r in rows:
        s, k = stages[int(r["stage"])]
        assert int(r["batch"]) == s * k
