"""bench/gpu.py, the one script the GPU section of docs/benchmarks.md comes from, runs on the CPU (its dry run) and
records what the time budget left out as skipped, never as a number."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytorch_metric_learning")
gpu = pytest.importorskip("bench.gpu")


def test_dry_run_with_a_spent_budget_writes_checks_and_skips(tmp_path):
    out = tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--quick", "--budget", "0", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["correctness"] and all(r["abs_diff"] < 1e-4 for r in results["correctness"])
    rows = results["losses"] + results["throughput"] + results["denoise_epoch"]
    assert rows and all(r.get("skipped") == "time budget" for r in rows)
    assert not any(k in r for r in rows for k in ("ours_ms", "step_ms", "epoch_s"))
    assert results["targets"]["l2net_target_met"] is False and results["targets"]["batch_hard_16384_ms"] is None
    assert "time budget" in out.with_suffix(".md").read_text()


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu.main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
