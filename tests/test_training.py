"""tripletkit.training: SteppedBatches, CollapseProbe, TrainingCheckpoint, atomic writes, RNG states."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tripletkit import BatchHardLoss, RandomMiner, SteppedBatchScheduler, SymmetricSampler
from tripletkit.training import (
    CheckpointError,
    CollapseProbe,
    SteppedBatches,
    TrainingCheckpoint,
    atomic_open,
    atomic_write_text,
    load_checkpoint,
    probe_indices,
    rng_state,
    set_rng_state,
)

ROOT = Path(__file__).resolve().parents[1]
LABELS = np.repeat(np.arange(40), 6)  # 40 classes × 6 samples
STAGES = [(4, 2), (4, 4), (8, 4)]


def _losses(n, seed=0):
    # below the hinge threshold 0.2 for a while, then above it (the guard steps back), then below again
    rng = np.random.default_rng(seed)
    base = np.concatenate([np.full(n // 3, 0.05), np.full(n // 3, 0.5), np.full(n - 2 * (n // 3), 0.05)])
    return (base + 0.01 * rng.random(n)).tolist()


def _hand_wired(losses, **kw):
    """The wiring the training scripts used to copy: a sampler, a scheduler, and the hand-off between them."""
    sched = SteppedBatchScheduler(STAGES, margin_fn="hinge", patience=3, smoothing=0.5, guard=True, guard_patience=4)
    sampler = SymmetricSampler(LABELS, *STAGES[0], seed=7)
    it = iter(sampler)
    out = []
    for loss in losses:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(sampler)
            batch = next(it)
        out.append(batch)
        if sched.step(loss):
            sampler.set_batch_shape(sched.S, sched.K)
    return out, sched.events


def _batches(**kw):
    return SteppedBatches(
        LABELS, STAGES, margin_fn="hinge", patience=3, smoothing=0.5, guard=True, guard_patience=4, seed=7, **kw
    )


def test_equals_the_hand_wired_sampler_and_scheduler():
    losses = _losses(90)
    expected, events = _hand_wired(losses)
    sb = _batches()
    got = []
    for loss in losses:
        got.append(next(sb))
        sb.step(loss)
    assert got == expected
    assert sb.events == events
    assert {e.reason for e in events} == {"advance", "back"}, "the schedule is built to advance and go back"
    assert sb.epoch >= 2, "the run is built to cross epochs"


def test_batches_are_class_major_and_follow_the_stage():
    sb = _batches()
    for loss in _losses(60):
        batch = next(sb)
        assert len(batch) == sb.batch_size == sb.S * sb.K
        y = LABELS[batch].reshape(sb.S, sb.K)
        assert (y == y[:, :1]).all() and len(set(y[:, 0])) == sb.S
        sb.step(loss)


def test_state_dict_resumes_exactly_at_any_step():
    losses = _losses(90)
    full = _batches()
    ref = []
    for loss in losses:
        ref.append(next(full))
        full.step(loss)
    for cut in (1, 17, 31, 50, 89):
        a = _batches()
        for loss in losses[:cut]:
            next(a)
            a.step(loss)
        state = pickle.loads(pickle.dumps(a.state_dict()))
        b = _batches()
        b.load_state_dict(state)
        rest = []
        for loss in losses[cut:]:
            rest.append(next(b))
            b.step(loss)
        assert ref[cut:] == rest, cut
        assert b.events == full.events


def test_judge_every_gives_the_same_decisions_with_one_transfer_per_n_steps():
    losses = _losses(90)
    one, many = _batches(), _batches(judge_every=5)
    reported = []
    for k, loss in enumerate(losses, 1):
        next(one)
        one.step(torch.tensor(loss))
        next(many)
        if many.step(torch.tensor(loss)) is not None:
            reported.append(k)
    # the scheduler sees the same losses in the same order: same changes, same smoothed values
    assert [(e.step, e.to_stage, e.reason) for e in many.events] == [(e.step, e.to_stage, e.reason) for e in one.events]
    assert many.scheduler.smoothed_loss == pytest.approx(one.scheduler.smoothed_loss)
    # ... judged at every 5th call, so the batch shape follows up to 4 steps later
    assert reported and all(k % 5 == 0 for k in reported)
    partial = _batches(judge_every=5)
    for loss in losses[:7]:
        next(partial)
        partial.step(torch.tensor(loss))
    assert partial.scheduler.steps == 5 and len(partial.state_dict()["pending"]) == 2


def test_sharded_replicas_split_one_sequence():
    one = SteppedBatches(LABELS, [(4, 2)], seed=3, rank=0, world_size=1)
    r0 = SteppedBatches(LABELS, [(4, 2)], seed=3, rank=0, world_size=2)
    r1 = SteppedBatches(LABELS, [(4, 2)], seed=3, rank=1, world_size=2)
    seq = [next(one) for _ in range(10)]  # 10 batches of one epoch (40 classes / 4)
    assert [next(r0) for _ in range(5)] == seq[0::2]
    assert [next(r1) for _ in range(5)] == seq[1::2]


def test_bad_configuration_and_state_are_clear_errors():
    with pytest.raises(ValueError, match="needs 64 classes"):
        SteppedBatches(LABELS, [(4, 2), (64, 2)], margin_fn="hinge")
    with pytest.raises(ValueError, match="judge_every"):
        SteppedBatches(LABELS, STAGES, margin_fn="hinge", judge_every=0)
    with pytest.raises(ValueError, match="give a threshold"):
        SteppedBatches(LABELS, STAGES)
    sb = _batches()
    for loss in _losses(12):
        next(sb)
        sb.step(loss)
    before = sb.state_dict()
    for field, value in (("stage", 99), ("stage", -1), ("ema", float("nan"))):
        bad = pickle.loads(pickle.dumps(before))
        bad["scheduler"][field] = value
        with pytest.raises(ValueError, match=field):
            sb.load_state_dict(bad)
        assert sb.state_dict() == before  # all or nothing
    bad = pickle.loads(pickle.dumps(before))
    bad["sampler"]["position"] = -5
    with pytest.raises(ValueError, match="position"):
        sb.load_state_dict(bad)
    assert sb.state_dict() == before
    with pytest.raises(ValueError, match="not a SteppedBatches state"):
        sb.load_state_dict({"sampler": {}})


def test_a_scalar_loss_is_required():
    sb = _batches()
    with pytest.raises(ValueError, match="scalar"):
        sb.step(torch.ones(3))


# ------------------------------------------------------------------ probe
def test_probe_indices_pick_s_by_k_and_shrink_when_classes_are_small():
    idx = probe_indices(LABELS, S=8, K=4, seed=0)
    y = LABELS[idx].reshape(8, 4)
    assert (y == y[:, :1]).all() and len(set(y[:, 0])) == 8
    small = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    idx = probe_indices(small, S=8, K=4, seed=0)
    assert len(idx) == 6 and sorted(small[idx]) == [0, 0, 0, 1, 1, 1]  # K 4 → 3, S → the 2 classes with 3
    with pytest.raises(ValueError, match="two classes"):
        probe_indices(np.array([0, 1, 2, 2]), S=4, K=2)


def test_probe_judges_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.lin(x)

    model = Recorder()
    labels = torch.arange(4).repeat_interleave(3)
    probe = CollapseProbe(BatchHardLoss(), torch.randn(12, 5), labels, every=3)
    for mode in (True, False):
        model.train(mode)
        assert probe(model, 1) is None and probe(model, 2) is None
        stats = probe(model, 3, loss=0.5)
        assert stats is not None and stats.loss == 0.5 and not stats.collapsed
        assert model.training is mode
    assert seen == [(False, False), (False, False)]
    assert len(probe.monitor.history) == 2


def test_probe_flags_a_collapsed_model_and_resumes_its_reference():
    labels = torch.arange(4).repeat_interleave(3)
    x = torch.randn(12, 5)
    healthy = torch.nn.Linear(5, 3)
    collapsed = torch.nn.Linear(5, 3)
    with torch.no_grad():
        collapsed.weight.zero_()
    probe = CollapseProbe(BatchHardLoss(), x, labels, every=1)
    assert not probe(healthy, 1).collapsed
    with pytest.warns(UserWarning, match="collapsed"):
        assert probe(collapsed, 2).collapsed
    state = probe.state_dict()
    other = CollapseProbe(BatchHardLoss(), x, labels, every=1)
    other.load_state_dict(state)
    assert other.monitor.reference_distance == probe.monitor.reference_distance and other.monitor.collapsed
    with pytest.raises(ValueError, match="CollapseProbe state"):
        other.load_state_dict({"reference_distance": -1.0, "collapsed": False})


# ------------------------------------------------------------------ checkpoint
def _setup(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Dropout(0.3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = SteppedBatches(LABELS, STAGES, margin_fn="hinge", patience=2, seed=1)
    miner = RandomMiner(seed=5)
    gen = torch.Generator().manual_seed(9)
    ckpt = TrainingCheckpoint(
        tmp_path / "ckpt.pt", model=model, optimizer=opt, stateful={"batches": batches, "miner": miner, "gen": gen}
    )
    return model, opt, batches, miner, gen, ckpt


def _train(model, opt, batches, miner, gen, steps):
    x = torch.randn(240, 6, generator=torch.Generator().manual_seed(0))
    y = torch.from_numpy(LABELS)
    loss_fn = BatchHardLoss()
    trace = []
    for _ in range(steps):
        idx = next(batches)
        emb = model(x[idx])
        loss = loss_fn(emb, y[idx]) + 0.0 * miner(emb.detach(), y[idx]).negative.float().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        batches.step(loss)
        trace.append(
            (float(loss.detach()), torch.rand(1, generator=gen).item(), float(np.random.rand()), random.random())
        )
    return trace


def test_restore_continues_exactly(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    parts = _setup(tmp_path / "a")
    full = _train(*parts[:5], steps=12)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    parts = _setup(tmp_path / "b")
    first = _train(*parts[:5], steps=5)
    parts[5].save(step=5)
    torch.manual_seed(123)  # the restore must bring back every generator, not rely on this process's state
    np.random.seed(123)
    random.seed(123)
    fresh = _setup(tmp_path / "b", seed=42)
    extra = fresh[5].restore()
    assert extra == {"step": 5}
    rest = _train(*fresh[:5], steps=7)
    assert first + rest == full
    ref_model = _setup(tmp_path / "c")[0]
    assert not all(torch.equal(p, q) for p, q in zip(ref_model.state_dict().values(), fresh[0].state_dict().values()))


def test_checkpoint_loads_without_unpickling_and_keeps_the_previous_one(tmp_path):
    model, opt, batches, miner, gen, ckpt = _setup(tmp_path)
    _train(model, opt, batches, miner, gen, 2)
    ckpt.save(step=2)
    _train(model, opt, batches, miner, gen, 2)
    ckpt.save(step=4)
    state = torch.load(ckpt.path, weights_only=True)
    assert state["extra"] == {"step": 4}
    assert torch.load(ckpt.path.with_name("ckpt.pt.prev"), weights_only=True)["extra"] == {"step": 2}
    assert not [p for p in tmp_path.iterdir() if p.name not in ("ckpt.pt", "ckpt.pt.prev")]


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model, opt, batches, miner, gen, ckpt = _setup(tmp_path)
    ckpt.save(step=1)
    ckpt.save(step=2)
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # a torn write
    with pytest.warns(UserWarning, match="previous checkpoint"):
        assert _setup(tmp_path)[5].restore() == {"step": 1}
    ckpt.path.with_name("ckpt.pt.prev").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*ckpt.pt.*ckpt.pt.prev"):
        _setup(tmp_path)[5].restore()


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch planted-pickle-ran",))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "tripletkit.training.checkpoint/1", "model": _Planted()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not (tmp_path / "planted-pickle-ran").exists()


def test_checkpoint_refuses_a_run_it_does_not_fit(tmp_path):
    model, opt, batches, miner, gen, ckpt = _setup(tmp_path)
    ckpt.save(step=1)
    other = TrainingCheckpoint(ckpt.path, model=model, optimizer=opt, stateful={"batches": batches})
    with pytest.raises(CheckpointError, match="holds state for"):
        other.restore()
    bigger = TrainingCheckpoint(
        ckpt.path,
        model=torch.nn.Linear(6, 5),
        optimizer=None,
        stateful={"batches": batches, "miner": miner, "gen": gen},
    )
    with pytest.raises(CheckpointError, match="parameters differ|optimiser"):
        bigger.restore()
    state = torch.load(ckpt.path, weights_only=True)
    state["world_size"] = 2
    torch.save(state, ckpt.path)
    with pytest.raises(CheckpointError, match="2 process"):
        _setup(tmp_path)[5].restore()
    with pytest.raises(TypeError, match="state_dict"):
        TrainingCheckpoint(tmp_path / "x.pt", model=model, stateful={"bad": 3})


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert _setup(tmp_path)[5].restore() is None
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_round_trips_through_weights_only(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    with pytest.raises(ValueError, match="not an RNG state"):
        set_rng_state({"torch": torch.zeros(3)})


# ------------------------------------------------------------------ atomic writes
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_planted_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.txt"
    for name in ("out.txt.tmp", ".out.txt.tmp"):  # the predictable names an attacker would plant
        (tmp_path / name).symlink_to(victim)
    atomic_write_text(target, "new")
    assert victim.read_text() == "precious" and target.read_text() == "new" and not target.is_symlink()


def test_atomic_open_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass


# ------------------------------------------------------------------ the README example
def test_the_readme_loop_example_runs_and_grows_the_batch(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Stepped batch in your own loop.*?```python\n(.*?)```", text, re.S)
    assert block, "README lost its training-loop example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    batches = scope["batches"]
    assert batches.events and batches.events[0].reason == "advance", "the example is meant to show the batch growing"
