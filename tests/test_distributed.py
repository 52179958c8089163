"""Cross-replica mining with torch.distributed (gloo, CPU): W processes with gather_distributed=True and DDP give
the loss and the parameter gradients of one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tripletkit import BatchAllLoss, BatchHardLoss, TripletLoss
from tripletkit.distributed import gather_with_grad, scale_for_ddp, world_size

LOSSES = {
    "batch_hard": lambda g: BatchHardLoss(margin=0.5, gather_distributed=g),
    "batch_hard_soft": lambda g: BatchHardLoss(margin_fn="softplus", gather_distributed=g),
    "batch_all": lambda g: BatchAllLoss(margin=0.5, gather_distributed=g),
    "batch_all_active": lambda g: BatchAllLoss(margin=0.5, reduction="mean_active", gather_distributed=g),
    "triplet_batch_hard": lambda g: TripletLoss(margin=0.5, miner="batch_hard", gather_distributed=g),
}


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.arange(5).repeat_interleave(4)[torch.randperm(20, generator=g)]
    return x, y


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()


def _worker(rank, world, init_file, loss_name, splits, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _data()
        bounds = [0] + list(torch.tensor(splits).cumsum(0))
        lo, hi = int(bounds[rank]), int(bounds[rank + 1])
        model = torch.nn.parallel.DistributedDataParallel(_model())
        loss = LOSSES[loss_name](True)(model(x[lo:hi]), y[lo:hi])
        loss.backward()
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, out_file)
        # DDP's reducer must go, on every rank, before the group it holds is destroyed: a replica that destroyed the
        # group while its reducer (or a peer's pending work) was alive was seen aborting in CI ("terminate called
        # without an active exception")
        del model, loss
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single(loss_name):
    x, y = _data()
    model = _model()
    loss = LOSSES[loss_name](False)(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


CASES = [(name, (13, 7)) for name in LOSSES] + [("batch_hard", (10, 10)), ("batch_all", (6, 6, 8))]


@pytest.mark.parametrize("loss_name,splits", CASES, ids=[f"{n}-{'-'.join(map(str, s))}" for n, s in CASES])
def test_replicas_equal_one_process_on_the_concatenated_batch(loss_name, splits, tmp_path):
    world = len(splits)
    init_file = tmp_path / "init"
    out_file = tmp_path / "out.pt"
    mp.spawn(_worker, args=(world, str(init_file), loss_name, list(splits), str(out_file)), nprocs=world, join=True)
    got = torch.load(out_file)
    want_loss, want_grads = _single(loss_name)
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got["grads"], want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)


def test_world_size_one_is_a_no_op():
    x = torch.randn(5, 3, requires_grad=True)
    assert world_size() == 1
    assert gather_with_grad(x) is x
    loss = x.sum()
    assert scale_for_ddp(loss) is loss
    a = BatchHardLoss(gather_distributed=True)(x, torch.tensor([0, 0, 1, 1, 2]))
    b = BatchHardLoss()(x, torch.tensor([0, 0, 1, 1, 2]))
    assert torch.equal(a, b)


def _scheduler_worker(rank, world, init_file, out_file):
    from tripletkit import SteppedBatchScheduler
    from tripletkit.distributed import all_reduce_mean

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # rank 0 sees losses under the threshold 1.0, rank 1 above it: only their mean (0.9) is below
        losses = [0.5] * 12 if rank == 0 else [1.3] * 12
        synced = SteppedBatchScheduler(
            [(4, 2), (8, 2)], threshold=1.0, patience=3, smoothing=0.0, sync_distributed=True
        )
        local = SteppedBatchScheduler([(4, 2), (8, 2)], threshold=1.0, patience=3, smoothing=0.0)
        synced_changes = [synced.step(torch.tensor(v)) for v in losses]
        local_changes = [local.step(v) for v in losses]
        mean = all_reduce_mean(torch.tensor(float(rank)))
        result = {
            "synced": synced_changes,
            "local": local_changes,
            "events": [e.step for e in synced.events],
            "mean": mean,
        }
        torch.save(result, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_stepped_batch_scheduler_decides_on_the_global_loss(tmp_path):
    mp.spawn(_scheduler_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"out.{r}") for r in (0, 1))
    assert r0["synced"] == r1["synced"]  # both replicas change stage at the same step
    assert r0["events"] == r1["events"] == [3]  # the mean 0.9 is under the threshold from step 1; patience 3
    assert r0["local"] != r1["local"]  # without the sync they would disagree
    assert r0["mean"] == r1["mean"] == 0.5


def test_all_reduce_mean_without_a_process_group_and_bad_input():
    from tripletkit.distributed import all_reduce_mean

    assert all_reduce_mean(torch.tensor(2.5)) == 2.5
    assert all_reduce_mean(3) == 3.0
    with pytest.raises(ValueError, match="scalar"):
        all_reduce_mean(torch.ones(2))


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_static_shape_gather_puts_the_local_slice_back_with_its_gradient(rank):
    """The XLA path's splice (torch-xla's all_gather is stood in for by the concatenation it returns)."""
    from tripletkit.distributed import _insert_local

    parts = [torch.randn(4, 3) for _ in range(3)]
    x = parts[rank].clone().requires_grad_(True)
    out = _insert_local(torch.cat(parts), x, rank, 3)
    torch.testing.assert_close(out, torch.cat(parts))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="same local batch size"):
        _insert_local(torch.cat(parts)[:-1], x, rank, 3)
