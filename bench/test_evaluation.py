"""Evaluation suite: the HPatches tasks, ours against the reference benchmark's algorithm (tripletkit/testing/hpatches_reference.py,
the same definitions at the original's speed), on one synthetic split; and ours alone on a split-a-sized one.

The reduced split (8 sequences with split-a patch counts, 100k verification pairs per file, 1,000 queries, 20,000
distractors) keeps the reference side to about a minute; the equality of the numbers is recorded beside the times.
Ours runs on TRIPLETKIT_BENCH_EVAL_THREADS threads (default 2, the 2-core target); the reference algorithm is
single-threaded Python/scipy whatever the setting."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tripletkit.testing import hpatches_reference as ref
from tripletkit_hpatches.evaluate import evaluate

from .hpatches_synthetic import make_split

ROOT = Path(__file__).resolve().parents[1]


def threads() -> int:
    return int(os.environ.get("TRIPLETKIT_BENCH_EVAL_THREADS", "2"))


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reduced")
    desc = make_split(tmp, n_pairs=100_000, n_queries=1000, n_distractors=20_000, n_sequences=8, seed=1)
    return tmp, desc


def _reference_all(tmp: Path, desc) -> dict:
    # the task files are read inside the timed part, as both the reference benchmark and ours do
    def rows(name):
        return list(pd.read_csv(tmp / name).itertuples(index=False, name=None))

    seqs = sorted(desc)
    out = {}
    for task, fn in (
        (
            "verification",
            lambda: ref.verification_at_reference_speed(
                desc, {k: rows(f"verif_{k}_split-syn.csv") for k in ("pos", "neg_intra", "neg_inter")}
            ),
        ),
        ("matching", lambda: ref.matching_at_reference_speed(desc, seqs)),
        (
            "retrieval",
            lambda: ref.retrieval_at_reference_speed(
                desc, rows("retr_queries_split-syn.csv"), rows("retr_distractors_split-syn.csv")
            ),
        ),
    ):
        t0 = time.perf_counter()
        out[task] = fn()
        out[f"{task}_s"] = time.perf_counter() - t0
    return out


def test_evaluation_reduced_ours_vs_reference(benchmark, reduced):
    tmp, desc = reduced
    torch.set_num_threads(threads())
    reference = _reference_all(tmp, desc)
    result = benchmark.pedantic(evaluate, args=(desc, tmp, "syn"), kwargs={"progress": False}, rounds=1, iterations=1)
    benchmark.group = "hpatches-evaluation"
    benchmark.extra_info.update(suite="evaluation", size="reduced", threads=torch.get_num_threads())
    for task in ("verification", "matching", "retrieval"):
        benchmark.extra_info[f"{task}_ours_s"] = result["timing_s"][task]
        benchmark.extra_info[f"{task}_reference_s"] = reference[f"{task}_s"]
        benchmark.extra_info[f"{task}_abs_diff"] = abs(result[task] - reference[task])
        assert abs(result[task] - reference[task]) < 1e-6, task  # the numbers must agree for the timing to count


def test_evaluation_split_a_size(benchmark, tmp_path, request):
    if request.config.getoption("--bench-profile") != "large":
        pytest.skip("the split-a-sized evaluation (about a minute) runs in --bench-profile large")
    torch.set_num_threads(threads())
    desc = make_split(tmp_path)
    result = benchmark.pedantic(
        evaluate, args=(desc, tmp_path, "syn"), kwargs={"progress": False}, rounds=1, iterations=1
    )
    benchmark.group = "hpatches-evaluation"
    benchmark.extra_info.update(
        suite="evaluation",
        size="split-a",
        threads=torch.get_num_threads(),
        **{f"{k}_ours_s": v for k, v in result["timing_s"].items()},
    )
    assert np.isfinite([result["verification"], result["matching"], result["retrieval"]]).all()
