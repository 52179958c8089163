"""The losses on torch-xla's CPU backend (PJRT_DEVICE=CPU): parity with the CPU, and with the static settings
(max_class_size=K, validate=False) no device-to-host transfer and no CPU-fallback op in forward + backward.

Runs in the torch-floor lane of .ci/run (torch 2.9.0 + torch-xla 2.9.0); skipped where torch-xla is absent."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

os.environ.setdefault("PJRT_DEVICE", "CPU")
torch_xla = pytest.importorskip("torch_xla")
met = pytest.importorskip("torch_xla.debug.metrics")

from tripletkit import BatchAllLoss, BatchHardLoss, BatchSemiHardLoss, HardNetLoss, TripletLoss  # noqa: E402

pytestmark = pytest.mark.xla
# the runtime starts before any backward pass: autograd sizes its per-device queues at its first backward
DEV = torch_xla.device()

K = 4


def _pairs(loss):
    # HardNet's batch is matching pairs: rows 2i and 2i+1 of the same inputs
    return lambda x, y: loss(x[0::2], x[1::2])


def _configs():
    for margin_fn in ("hinge", "softplus"):
        yield (
            f"hardnet-{margin_fn}",
            lambda f=margin_fn: _pairs(HardNetLoss(margin=1.0 if f == "hinge" else 0.0, margin_fn=f, validate=False)),
        )
    for margin_fn, distance in itertools.product(["hinge", "softplus"], ["euclidean", "sqeuclidean", "cosine"]):
        m = 0.2 if margin_fn == "hinge" else 0.0
        common = dict(margin=m, margin_fn=margin_fn, distance=distance, validate=False)
        yield f"batch_semihard-{margin_fn}-{distance}", lambda c=common: BatchSemiHardLoss(max_class_size=K, **c)
        yield f"batch_hard-{margin_fn}-{distance}", lambda c=common: BatchHardLoss(max_class_size=K, **c)
        yield (
            f"batch_hard_swap-{margin_fn}-{distance}",
            lambda c=common: BatchHardLoss(max_class_size=K, swap=True, **c),
        )
        yield f"batch_all-{margin_fn}-{distance}", lambda c=common: BatchAllLoss(max_class_size=K, **c)
        yield f"random-{margin_fn}-{distance}", lambda c=common: TripletLoss(miner={"name": "random", "seed": 0}, **c)
        yield (
            f"semihard-{margin_fn}-{distance}",
            lambda c=common, d=distance: TripletLoss(
                miner={"name": "semihard", "distance": d, "max_class_size": K}, **c
            ),
        )


CONFIGS = dict(_configs())


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 16, generator=g), torch.arange(8).repeat_interleave(K)


def _run(loss_fn, x, y):
    leaf = x.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, y)
    loss.backward()
    return loss, leaf.grad


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_and_gradient_equal_the_cpu(name):
    x, y = _inputs()
    want_loss, want_grad = _run(CONFIGS[name](), x, y)  # a fresh loss: the random miner's stream starts anew
    dev = DEV
    loss, grad = _run(CONFIGS[name](), x.to(dev), y.to(dev))
    torch_xla.sync()
    assert torch.allclose(loss.cpu(), want_loss, rtol=1e-5, atol=1e-6), (float(loss.cpu()), float(want_loss))
    assert torch.allclose(grad.cpu(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_settings_make_no_host_transfer_and_no_cpu_fallback(name):
    x, y = _inputs()
    dev = DEV
    xd, yd = x.to(dev), y.to(dev)
    loss_fn = CONFIGS[name]()
    _run(loss_fn, xd, yd)  # first call: compile
    torch_xla.sync()
    met.clear_all()
    _run(loss_fn, xd, yd)
    torch_xla.sync()
    transfers = met.metric_data("TransferFromDeviceTime")
    assert (transfers[0] if transfers else 0) == 0, met.short_metrics_report()
    assert met.executed_fallback_ops() == [], met.executed_fallback_ops()
