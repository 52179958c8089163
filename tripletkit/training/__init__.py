"""Building blocks for a stepped-batch training loop, for any model and any labelled dataset.

* [`SteppedBatches`][tripletkit.training.batches.SteppedBatches]: S×K index batches whose shape follows the stepped-batch schedule (sampler + scheduler).
* [`LossBuffer`][tripletkit.training.loss_buffer.LossBuffer]: the step's losses kept on the device and read with one transfer
  every n steps (no host sync inside a CUDA or torch-xla step).
* [`init_optimizer_state()`][tripletkit.training.optim.init_optimizer_state]: Adam's or SGD's state made before the first
  step, so that a compiled or torch-xla step is one graph from the start.
* [`Plateau`][tripletkit.training.plateau.Plateau]: when a validation metric has stopped improving (patience,
  absolute and relative thresholds, warm-up), and which evaluation was best.
* [`StageLR`][tripletkit.training.stage_lr.StageLR]: the learning rate per stage (a lower rate at a stage's
  start, a higher one once the loss is under the collapse value): the study's remedies for a stage that stalls.
* [`WeightEMA`][tripletkit.training.weight_ema.WeightEMA]: an exponential moving average of the weights, to
  evaluate, select and save instead of the raw weights.
* [`CollapseProbe`][tripletkit.training.probe.CollapseProbe] and [`probe_indices()`][tripletkit.training.probe.probe_indices]: a fixed probe batch judged in eval mode by a collapse monitor.
* [`TrainingCheckpoint`][tripletkit.training.checkpoint.TrainingCheckpoint]: model, optimiser, batches, miner RNGs, every global RNG and each rank's own state,
  written atomically and loaded without unpickling code.
* [`atomic`][tripletkit.training.atomic] and [`rng`][tripletkit.training.rng]: the atomic writes and RNG states they
  use, for a loop's other outputs.

A plain PyTorch loop (the README's example)::

    >>> import torch
    >>> from tripletkit import BatchHardLoss
    >>> from tripletkit.training import SteppedBatches
    >>> x, y = torch.randn(400, 8), torch.arange(100).repeat_interleave(4)   # a labelled dataset
    >>> model, loss_fn = torch.nn.Linear(8, 4), BatchHardLoss(margin=0.2)
    >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> batches = SteppedBatches(y, [(8, 2), (8, 4), (16, 4)], margin_fn=loss_fn, patience=5)
    >>> for step in range(50):
    ...     idx = next(batches)
    ...     loss = loss_fn(model(x[idx]), y[idx])
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     change = batches.step(loss)
    >>> batches.batch_size in (16, 32, 64)
    True
"""

# Names resolve on first use (PEP 562): importing one torch-free submodule (``tripletkit.metrics``, the atomic
# writers) does not import torch and every loss, which keeps a process that only evaluates quick to start.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .atomic import atomic_open, atomic_save, atomic_write_bytes, atomic_write_text
    from .batches import SteppedBatches
    from .checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint
    from .loss_buffer import LossBuffer
    from .optim import init_optimizer_state
    from .plateau import Plateau
    from .probe import CollapseProbe, probe_indices
    from .rng import rng_state, set_rng_state
    from .stage_lr import StageLR
    from .weight_ema import WeightEMA

_LAZY = {
    "atomic_open": ".atomic",
    "atomic_save": ".atomic",
    "atomic_write_bytes": ".atomic",
    "atomic_write_text": ".atomic",
    "SteppedBatches": ".batches",
    "CheckpointError": ".checkpoint",
    "TrainingCheckpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "LossBuffer": ".loss_buffer",
    "init_optimizer_state": ".optim",
    "Plateau": ".plateau",
    "CollapseProbe": ".probe",
    "probe_indices": ".probe",
    "rng_state": ".rng",
    "set_rng_state": ".rng",
    "StageLR": ".stage_lr",
    "WeightEMA": ".weight_ema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CheckpointError",
    "CollapseProbe",
    "LossBuffer",
    "Plateau",
    "StageLR",
    "SteppedBatches",
    "TrainingCheckpoint",
    "WeightEMA",
    "atomic_open",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "init_optimizer_state",
    "load_checkpoint",
    "probe_indices",
    "rng_state",
    "set_rng_state",
]
