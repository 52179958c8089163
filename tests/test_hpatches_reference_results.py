"""The reference benchmark's per-task result files (written, read without running code) and the published numbers."""

from __future__ import annotations

import collections
import csv
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.test_hpatches_evaluate import SEQS, make_descriptors, tasks_dir  # noqa: F401  (fixture)
from tripletkit_hpatches.descriptors import write_descriptor_dir
from tripletkit_hpatches.evaluate import evaluate, main
from tripletkit_hpatches.published import PUBLISHED, published_for
from tripletkit_hpatches.reference_results import (
    UnsafePickleError,
    read_reference_results,
    reference_summary,
    write_reference_results,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_CSV = ROOT.parent / "shared" / "data" / "hpatches-reference-results" / "published_numbers.csv"


def test_written_files_have_the_benchmark_layout_and_read_back(tasks_dir, tmp_path):  # noqa: F811
    result = evaluate(make_descriptors(), tasks_dir, "x", progress=False)
    paths = write_reference_results(result, tmp_path / "results", "mine")
    assert sorted(p.name for p in paths) == ["mine_matching_x.p", "mine_retrieval_x.p", "mine_verification_x.p"]
    # the keys hpatches_results.py reads, opened with plain pickle as the benchmark's tools would
    v = pickle.loads((tmp_path / "results" / "mine_verification_x.p").read_bytes())
    m = pickle.loads((tmp_path / "results" / "mine_matching_x.p").read_bytes())
    r = pickle.loads((tmp_path / "results" / "mine_retrieval_x.p").read_bytes())
    vd = result["verification_detail"]
    assert v["h"]["inter"]["imbalanced"]["ap"] == vd["h"]["inter"]["ap"]
    assert v["t"]["intra"]["balanced"]["auc"] == vd["t"]["intra"]["auc"]
    assert m["v_gamma"]["e"][3]["ap"] == result["matching_detail"]["per_sequence"]["v_gamma"]["e"][3]["ap"]
    assert sorted(r) == list(range(20)) and sorted(r[7]["t"]) == [100, 500, 1000, 5000, 10000, 15000, 20000]
    assert r[7]["t"][500]["ap"] == result["retrieval_detail"]["per_query"][7, 2, 1]
    summary = reference_summary(read_reference_results(tmp_path / "results", "mine", "x"))
    # 2 i_ and 2 v_ sequences: the benchmark's i/v average equals the plain mean over sequences
    assert summary["verification"] == pytest.approx(100 * result["verification"], abs=1e-12)
    assert summary["matching"] == pytest.approx(100 * result["matching"], abs=1e-12)
    assert summary["retrieval"] == pytest.approx(100 * result["retrieval"], abs=1e-12)


def test_cli_writes_and_reads_the_layout(tasks_dir, tmp_path, capsys):  # noqa: F811
    write_descriptor_dir(make_descriptors(), tmp_path / "descr" / "mine")
    args = ["--descr-dir", str(tmp_path / "descr" / "mine"), "--tasks", str(tasks_dir), "--split", "x"]
    assert main(args + ["--results-dir", str(tmp_path / "res")]) == 0
    assert len(list((tmp_path / "res").glob("mine_*_x.p"))) == 3
    capsys.readouterr()
    assert main(["--read-results", "--results-dir", str(tmp_path / "res"), "--descr-name", "mine", "--split", "x"]) == 0
    out = capsys.readouterr().out
    assert "verification:" in out and "matching:" in out and "retrieval:" in out
    assert main(["--read-results", "--results-dir", str(tmp_path / "res"), "--descr-name", "other"]) == 2


class _Planted:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    planted = _Planted()
    planted.marker = marker
    (tmp_path / "evil_matching_a.p").write_bytes(pickle.dumps({"v_x": planted}))
    with pytest.raises(UnsafePickleError, match=r"evil_matching_a\.p: refuses to load .*system"):
        read_reference_results(tmp_path, "evil", "a")
    assert not marker.exists()
    (tmp_path / "bad_matching_a.p").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="bad_matching_a.p: not a readable result pickle"):
        read_reference_results(tmp_path, "bad", "a")


def test_the_benchmarks_own_files_read_with_their_lambdas_left_unbuilt(tmp_path, monkeypatch):
    """The benchmark pickles defaultdicts whose default factories are lambdas (dill writes them as calls to
    dill._dill._create_function). A stand-in module records whether anything of it runs."""
    fake = types.ModuleType("dill._dill")
    calls = []

    def _create_function(*args):
        calls.append(args)
        return lambda: None

    _create_function.__module__ = "dill._dill"
    _create_function.__qualname__ = "_create_function"
    fake._create_function = _create_function
    monkeypatch.setitem(sys.modules, "dill", types.ModuleType("dill"))
    monkeypatch.setitem(sys.modules, "dill._dill", fake)

    class Lambda:
        def __call__(self):
            return {}

        def __reduce__(self):
            return (_create_function, (b"code object bytes",))

    def dd(items):
        return collections.defaultdict(Lambda(), items)

    verification = dd(
        {
            lv: dd(
                {
                    kind: dd(
                        {
                            "balanced": {"auc": np.float64(0.9), "fpr": np.linspace(0, 1, 5)},
                            "imbalanced": {"ap": np.float64(0.5 if kind == "intra" else 0.7)},
                        }
                    )
                    for kind in ("intra", "inter")
                }
            )
            for lv in "eht"
        }
    )
    (tmp_path / "sift_verification_a.p").write_bytes(pickle.dumps(verification, protocol=2))
    res = read_reference_results(tmp_path, "sift", "a")
    assert calls == []  # the stand-in for dill's function builder was never called
    assert reference_summary(res) == {"verification": pytest.approx(60.0)}
    assert res["verification"]["e"]["intra"]["balanced"]["fpr"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.skipif(not PUBLISHED_CSV.exists(), reason="../shared/data is not present")
def test_published_numbers_equal_the_gathered_file():
    with PUBLISHED_CSV.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(PUBLISHED)
    for row, p in zip(rows, PUBLISHED):
        assert (row["descriptor"], row["split"], row["source"]) == (p.descriptor, p.split, p.source)
        for task in ("verification", "matching", "retrieval"):
            cell = row[f"{task}_mAP"]
            assert (float(cell) if cell else None) == getattr(p, task), (p.descriptor, task)


def test_published_rows_follow_the_split():
    a = published_for("a")
    assert {p.descriptor for p in a} >= {"SIFT", "HardNet+", "BinBoost", "ORB", "BRIEF"}
    assert all(p.split == "a" or p.split.startswith("a (N-HPatches") for p in a)
    assert all(p.split == "full" for p in published_for("full"))
    assert published_for("default") == []


BENCHMARK_FILES = ROOT / "tests" / "data" / "hpatches-benchmark-results"


def test_files_the_benchmark_itself_wrote_read_back_to_our_numbers(tasks_dir):  # noqa: F811
    """The benchmark's own dill pickles (see the folder's README): real lambdas, module namespaces and dill's array
    constructor, read without building any of them; their numbers are the benchmark's, computed by its code, and
    equal tripletkit's on the same descriptors and task files."""
    got = read_reference_results(BENCHMARK_FILES, "noisy", "x")
    v = got["verification"]
    assert isinstance(v["e"]["inter"]["balanced"]["fpr"], np.ndarray)  # rebuilt from its state
    assert v["e"]["inter"]["balanced"]["fpr"].shape == v["e"]["inter"]["balanced"]["tpr"].shape
    with pytest.raises(KeyError, match="not rebuilt"):
        got["matching"]["no_such_sequence"]  # the default factory is a stand-in, never the benchmark's lambda
    summary = reference_summary(got)
    ours = evaluate(make_descriptors(), tasks_dir, "x", progress=False)
    # 2 i_ and 2 v_ sequences: the benchmark's i/v average equals the plain mean over sequences
    assert summary["verification"] == pytest.approx(100 * ours["verification"], abs=1e-6)
    assert summary["matching"] == pytest.approx(100 * ours["matching"], abs=1e-6)
    assert summary["retrieval"] == pytest.approx(100 * ours["retrieval"], abs=1e-6)
