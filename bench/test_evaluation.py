"""Evaluation suite: the HPatches tasks, ours against the reference benchmark's algorithm (tripletkit/testing/hpatches_reference.py,
the same definitions at the original's speed), on one synthetic split; and ours alone on a split-a-sized one.

The reduced split (8 sequences with split-a patch counts, 100k verification pairs per file, 1,000 queries, 20,000
distractors) keeps the reference side to about a minute; the equality of the numbers is recorded beside the times.
Ours runs on TRIPLETKIT_BENCH_EVAL_THREADS threads (default 2, the 2-core target); the reference algorithm is
single-threaded Python/scipy whatever the setting."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tripletkit.testing import hpatches_reference as ref
from tripletkit_hpatches.evaluate import evaluate

from .hpatches_synthetic import full_benchmark_counts, make_split, split_a_counts, write_synthetic_set

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


# ------------------------------------------------------------------------------------------------ end to end, on disk
def _cache(tmp_path_factory, name: str) -> Path:
    """Where a synthetic set on disk lives: TRIPLETKIT_BENCH_CACHE/<name> when set (kept between runs; a set is
    reused only when its completion marker matches its parameters), else a fresh temporary folder."""
    base = os.environ.get("TRIPLETKIT_BENCH_CACHE")
    return Path(base) / name if base else tmp_path_factory.mktemp(name)


def _run(cmd: list[str], cwd: Path = ROOT, env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds from launch to exit, the command's own peak RSS in bytes (through bench.peak_rss, since a peak
    survives exec and pytest is big), and its stdout."""
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "peak_rss.py"), str(report), "--", *cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:])
        rec = json.loads(report.read_text())
    finally:
        report.unlink(missing_ok=True)
    return rec["wall_s"], rec["peak_rss_bytes"], proc.stdout


def _ours_cmd(root: Path, json_out: Path, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "examples/hpatches/evaluate.py", "--descr-dir", str(root / "descr"), "--tasks"]
    cmd += [str(root / "tasks"), "--split", "syn", "--json", str(json_out)]
    return cmd + (["--threads", str(threads)] if threads else [])


# pandas ≥ 1.0 dropped DataFrame.as_matrix, which the benchmark's descriptor loader calls; a sitecustomize on the
# benchmark's PYTHONPATH adds it back as .values in every process it starts (joblib's workers included), so the
# benchmark's own files run unchanged
_AS_MATRIX_SHIM = """import pandas
if not hasattr(pandas.DataFrame, "as_matrix"):
    pandas.DataFrame.as_matrix = lambda self: self.values
"""


def _literal_benchmark(root: Path, tmp: Path) -> tuple[float, dict] | None:
    """The reference benchmark's own code, unchanged, when TRIPLETKIT_HPATCHES_BENCHMARK names a checkout of
    hpatches/hpatches-benchmark and TRIPLETKIT_HPATCHES_BENCHMARK_PYTHON an interpreter with its requirements
    (numpy < 2.4, which still has np.trapz; pandas, scipy, joblib, tqdm, dill, opencv-python-headless): its
    ``python/`` folder is copied, with the set's task files in the ``tasks/`` folder its code looks in, and
    ``hpatches_eval.py`` runs all three tasks. Returns its launch-to-exit wall time and its numbers, read back from
    the result files it wrote (without running their code). None when not configured."""
    checkout, python = (
        os.environ.get(k) for k in ("TRIPLETKIT_HPATCHES_BENCHMARK", "TRIPLETKIT_HPATCHES_BENCHMARK_PYTHON")
    )
    if not checkout or not python:
        return None
    from tripletkit_hpatches.reference_results import read_reference_results, reference_summary

    work = tmp / "literal"
    shutil.copytree(Path(checkout) / "python", work / "python")
    (work / "tasks" / "splits").mkdir(parents=True)
    for f in (root / "tasks").glob("*.csv"):
        (work / "tasks" / f.name).symlink_to(f)
    (work / "tasks" / "splits" / "splits.json").symlink_to(root / "tasks" / "splits.json")
    (work / "descriptors").mkdir()
    (work / "descriptors" / "syn").symlink_to(root / "descr")
    (work / "shim").mkdir()
    (work / "shim" / "sitecustomize.py").write_text(_AS_MATRIX_SHIM)
    cmd = [python, "hpatches_eval.py", "--descr-name=syn", f"--descr-dir={work / 'descriptors'}"]
    cmd += [f"--results-dir={work / 'results'}", "--split=syn"]
    cmd += ["--task=verification", "--task=matching", "--task=retrieval"]
    wall, _, _ = _run(cmd, cwd=work / "python", env={**os.environ, "PYTHONPATH": str(work / "shim")})
    summary = reference_summary(read_reference_results(work / "results", "syn", "syn"))  # ×100, as its tools
    return wall, {task: value / 100 for task, value in summary.items()}


@pytest.fixture(scope="module")
def issue_sized(tmp_path_factory):
    # the size of the set the issue measured the reference on: 16 sequences × 800 patches, 200k pairs per
    # verification file, 2,000 queries, 8,000 distractors, descriptors as %.9g CSVs
    root = _cache(tmp_path_factory, "eval-16x800")
    names = list(split_a_counts(16))
    return write_synthetic_set(
        root, dict.fromkeys(names, 800), n_pairs=200_000, n_queries=2000, n_distractors=8000, seed=3
    )


def test_evaluation_end_to_end_fresh_processes(benchmark, issue_sized, tmp_path):
    """Both sides as a user runs them: a new process from its start to its last number (imports, reading the CSVs and
    task files, all three tasks). Ours three times, then our restatement of the reference once (about a minute), then
    the benchmark's own code once when it is configured (`_literal_benchmark`), then ours three times again; the
    median of ours counts."""
    ours: list[tuple[float, int, str]] = []
    # pytest-benchmark's own timing is of the whole subprocess call; the launch-to-exit wall time is recorded beside
    benchmark.pedantic(
        lambda: ours.append(_run(_ours_cmd(issue_sized, tmp_path / f"ours{len(ours)}.json", threads()))),
        rounds=3,
        iterations=1,
    )
    ref_wall, _, ref_out = _run(
        [
            sys.executable,
            "-m",
            "bench.reference_evaluate",
            "--descr-dir",
            str(issue_sized / "descr"),
            "--tasks",
            str(issue_sized / "tasks"),
            "--split",
            "syn",
        ]
    )
    reference = json.loads(ref_out.strip().splitlines()[-1])
    literal = _literal_benchmark(issue_sized, tmp_path)
    # ours again after the references, so that a drift in the machine's speed shows in the spread of ours
    for _ in range(3):
        ours.append(_run(_ours_cmd(issue_sized, tmp_path / f"ours{len(ours)}.json", threads())))
    got = json.loads((tmp_path / "ours0.json").read_text())
    walls = [w for w, _, _ in ours]
    benchmark.group = "hpatches-evaluation"
    benchmark.extra_info.update(
        suite="evaluation-e2e",
        size="16 seq × 800, 200k pairs, 2k queries",
        threads=threads(),
        ours_wall_s=statistics.median(walls),
        ours_walls_s=walls,
        ours_peak_rss_mib=max(r for _, r, _ in ours) / 2**20,
        reference_wall_s=ref_wall,
        reference_parts_s=reference["timing_s"],
        ours_parts_s=got["timing_s"],
        speedup=ref_wall / statistics.median(walls),
    )
    if literal is not None:
        benchmark.extra_info.update(literal_wall_s=literal[0], literal_speedup=literal[0] / statistics.median(walls))
    for task in ("verification", "matching", "retrieval"):
        benchmark.extra_info[f"{task}_abs_diff"] = abs(got[task] - reference[task])
        assert abs(got[task] - reference[task]) < 1e-6, task  # the numbers must agree for the timing to count
        if literal is not None:
            benchmark.extra_info[f"{task}_literal_abs_diff"] = abs(got[task] - literal[1][task])
            assert abs(got[task] - literal[1][task]) < 1e-6, task


def test_evaluation_full_benchmark_size_time_and_memory(benchmark, tmp_path_factory, request, tmp_path):
    """The full benchmark's size: the 116 sequences of split `full` with their patch counts, 1M pairs per
    verification file, 10,000 queries and 20,000 distractors; ours in a fresh process, its wall time and peak RSS.
    Writing the set takes minutes (5.5 GB of CSV); TRIPLETKIT_BENCH_CACHE keeps it between runs."""
    if request.config.getoption("--bench-profile") != "large":
        pytest.skip("the full-size evaluation (minutes to write the set) runs in --bench-profile large")
    root = write_synthetic_set(
        _cache(tmp_path_factory, "eval-full"),
        full_benchmark_counts(),
        n_pairs=1_000_000,
        n_queries=10_000,
        n_distractors=20_000,
    )
    runs: list[tuple[float, int, str]] = []
    benchmark.pedantic(lambda: runs.append(_run(_ours_cmd(root, tmp_path / "full.json", threads()))), rounds=1)
    (wall, rss, _), got = runs[0], json.loads((tmp_path / "full.json").read_text())
    benchmark.group = "hpatches-evaluation"
    benchmark.extra_info.update(
        suite="evaluation-full",
        size=f"{got['sequences']} seq, 1M pairs, 10k queries",
        threads=threads(),
        ours_wall_s=wall,
        ours_peak_rss_mib=rss / 2**20,
        ours_parts_s=got["timing_s"],
    )
    assert np.isfinite([got["verification"], got["matching"], got["retrieval"]]).all()
