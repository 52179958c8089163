"""Graphs, transfers and compiles per training step of ``train.py --device xla``, read from torch_xla.debug.metrics.

The targets: a steady-state descriptor step executes one graph, compiles nothing and makes no device-to-host
transfer, except the steps after which the losses are read (``--judge-every``): one transfer, and no graph. Each
scheduler stage compiles at most two graphs (its step, and once per run the eval-mode graph the collapse probe and
the mAP curve share). Every count is taken after ``wait_device_ops`` so that asynchronous execution cannot move a
graph into the next step's count.

Runs in the torch-floor lane of .ci/run; skipped where torch-xla is absent."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PJRT_DEVICE", "CPU")
torch_xla = pytest.importorskip("torch_xla")
met = pytest.importorskip("torch_xla.debug.metrics")
xm = pytest.importorskip("torch_xla.core.xla_model")

from tripletkit_hpatches import runtime  # noqa: E402
from tripletkit_hpatches.train import main  # noqa: E402

pytestmark = pytest.mark.xla
DEV = torch_xla.device()
COMMON = ["--device", "xla", "--experiment", "bh128", "--denoise-steps", "2", "--denoise-batch", "8"]
COMMON += ["--threads", "1", "--quiet"]


def _count(name: str) -> int:
    data = met.metric_data(name)
    return data[0] if data else 0


@pytest.fixture
def step_counts(monkeypatch):
    """(graphs executed, device-to-host transfers, compiles, fallback ops) after every step boundary."""
    snaps: list[tuple[int, int, int, int]] = []
    original = runtime.Runtime.end_step

    def end_step(self):
        original(self)
        xm.wait_device_ops()
        snaps.append(
            (
                _count("ExecuteTime"),
                _count("TransferFromDeviceTime"),
                _count("CompileTime"),
                len(met.executed_fallback_ops()),
            )
        )

    monkeypatch.setattr(runtime.Runtime, "end_step", end_step)
    met.clear_all()
    return snaps


def _descriptor_intervals(snaps, steps):
    """Per descriptor step k = 1..steps: the counts between boundary k-1 (the setup sync for k = 1) and k, i.e.
    what ran after step k-1 (reads, probe, curve) plus step k itself."""
    base = len(snaps) - steps - 1  # the descriptor stage's setup sync, then one boundary per step
    return {k: tuple(b - a for a, b in zip(snaps[base + k - 1], snaps[base + k])) for k in range(1, steps + 1)}


@pytest.mark.parametrize(
    "judge_every, extra",
    [(1, []), (4, []), (4, ["--weight-ema", "0.99"])],
    ids=["judge-1", "judge-4", "judge-4-weight-ema"],  # the average's update is part of the step's one graph
)
def test_a_steady_state_step_is_one_graph_and_at_most_one_transfer(tiny, tmp_path, step_counts, judge_every, extra):
    steps = 14
    main(
        ["--data", str(tiny), "--out", str(tmp_path), "--stages", "denoise,descriptor", "--stages-sk", "4x2"]
        + ["--steps", str(steps), "--judge-every", str(judge_every), "--checkpoint-every", "100"]
        + ["--monitor-every", "100", "--eval-every", "0"]
        + extra
        + COMMON
    )
    per_step = _descriptor_intervals(step_counts, steps)
    for k in range(2, steps + 1):  # step 1 compiles the step's graph
        graphs, transfers, compiles, fallbacks = per_step[k]
        read_before = (k - 1) % judge_every == 0  # the losses were read after step k-1
        assert (graphs, compiles, fallbacks) == (1, 0, 0), (k, per_step[k])
        assert transfers == (1 if read_before else 0), (k, per_step[k])
    graphs, transfers, compiles, fallbacks = per_step[1]
    assert (graphs, compiles, transfers) == (1, 1, 0), per_step[1]  # the first step is the same graph: compiled once
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, steps + 1))  # every step's loss is still logged


def test_each_stage_compiles_at_most_two_graphs(tiny, tmp_path, step_counts):
    steps = 16
    main(
        ["--data", str(tiny), "--out", str(tmp_path), "--stages", "denoise,descriptor", "--stages-sk", "2x2,4x2"]
        + ["--steps", str(steps), "--patience", "1", "--judge-every", "2", "--checkpoint-every", "100"]
        + ["--monitor-every", "3", "--eval-every", "5"]
        + COMMON
    )
    rows = [r.split(",") for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    used = [0] + [int(r[2]) for r in rows[:-1]]  # the stage of step k's batch: as judged after step k-1
    assert set(used) == {0, 1}, used  # both stages ran
    per_step = _descriptor_intervals(step_counts, steps)
    compiles = {0: 0, 1: 0}
    for k, stage in enumerate(used, start=1):
        compiles[stage] += per_step[k][2]
        assert per_step[k][3] == 0, (k, per_step[k])  # no CPU fallback anywhere
    assert all(n <= 2 for n in compiles.values()), compiles
    # two step graphs and one eval graph (the probe and the curve share it); fewer when an earlier test in this
    # process compiled the same graph (the XLA compile cache is per process)
    assert 1 <= sum(compiles.values()) <= 3, compiles
    curve = (tmp_path / "map_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in curve] == [5, 10, 15, 16]  # the learning curve runs on XLA
    assert all(0.0 <= float(r.split(",")[1]) <= 1.0 for r in curve)
