"""tripletkit.training.LossBuffer and init_optimizer_state: values, order, errors, and bit-equal optimiser steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tripletkit.training import LossBuffer, SteppedBatches, init_optimizer_state


def test_buffer_returns_the_losses_in_order_and_empties():
    values = [0.5, 1.0 / 3.0, 2.0**-20, 7.25]
    buf = LossBuffer(4)
    for v in values:
        buf.append(torch.tensor(v))
    assert len(buf) == 4
    got = buf.read()
    assert got == [float(np.float32(v)) for v in values]  # float32 losses come back exactly
    assert len(buf) == 0 and buf.read() == []
    buf.append(torch.tensor(9.0))
    buf.append(torch.tensor(10.0))
    assert buf.read() == [9.0, 10.0]  # a partial read is the newest ones, oldest first


def test_buffer_keeps_the_loss_dtype_and_detaches():
    x = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    buf = LossBuffer(2)
    buf.append(x * 3)
    assert buf.read() == [0.30000000000000004]  # float64 kept: 0.1 * 3 in double, not rounded to float32


def test_buffer_errors_name_the_problem():
    with pytest.raises(ValueError, match="capacity"):
        LossBuffer(0)
    with pytest.raises(ValueError, match="capacity"):
        LossBuffer(True)
    buf = LossBuffer(1)
    with pytest.raises(TypeError, match="tensor"):
        buf.append(0.5)
    with pytest.raises(ValueError, match="scalar"):
        buf.append(torch.zeros(2))
    with pytest.raises(TypeError, match="floating"):
        buf.append(torch.tensor(1))
    buf.append(torch.tensor(1.0))
    with pytest.raises(ValueError, match="read"):
        buf.append(torch.tensor(2.0))


def test_batches_fed_from_a_buffer_decide_as_when_fed_each_loss():
    labels = np.repeat(np.arange(40), 6)
    rng = np.random.default_rng(0)
    losses = list(0.3 * np.exp(-np.arange(60) / 20) + 0.02 * rng.random(60))
    direct = SteppedBatches(labels, [(4, 2), (4, 4), (8, 4)], threshold=0.2, patience=3, smoothing=0.5, judge_every=5)
    fed = SteppedBatches(
        labels, [(4, 2), (4, 4), (8, 4)], threshold=0.2, patience=3, smoothing=0.5, judge_every=5, reduce=False
    )
    buf = LossBuffer(5)
    for i, v in enumerate(losses):
        direct.step(torch.tensor(v, dtype=torch.float64))
        buf.append(torch.tensor(v, dtype=torch.float64))
        if len(buf) + fed.unjudged >= 5 or i % 7 == 0:  # extra reads (a checkpoint, a probe) change nothing
            for value in buf.read():
                fed.step(value)
    assert [(e.step, e.to_stage) for e in direct.events] == [(e.step, e.to_stage) for e in fed.events]
    assert len(direct.events) >= 2  # the schedule did move


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-amsgrad-wd": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "adam-foreach-off": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, foreach=False),
    "sgd-plain": lambda p: torch.optim.SGD(p, lr=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_prepared_state_gives_bit_equal_steps(name):
    torch.manual_seed(0)
    lazy_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    eager_model = copy.deepcopy(lazy_model)
    lazy, prepared = OPTIMIZERS[name](lazy_model.parameters()), OPTIMIZERS[name](eager_model.parameters())
    init_optimizer_state(prepared)
    if name != "sgd-plain":
        assert len(prepared.state) == 4  # made before any step
    for _ in range(5):
        x = torch.randn(8, 6)
        for model, opt in ((lazy_model, lazy), (eager_model, prepared)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(lazy_model.parameters(), eager_model.parameters()):
        assert torch.equal(a, b)
    ls, ps = lazy.state_dict()["state"], prepared.state_dict()["state"]
    assert ls.keys() == ps.keys()
    for k in ls:
        assert ls[k].keys() == ps[k].keys()
        for key in ls[k]:
            assert torch.equal(ls[k][key], ps[k][key]) and ls[k][key].dtype == ps[k][key].dtype, (k, key)


def test_existing_state_is_left_alone_and_unknown_optimizers_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    init_optimizer_state(opt)
    assert all(torch.equal(before[k], opt.state[p][k]) for k in before)
    with pytest.raises(TypeError, match="RMSprop"):
        init_optimizer_state(torch.optim.RMSprop([p]))
    with pytest.raises(ValueError, match="dampening"):
        init_optimizer_state(torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1))
