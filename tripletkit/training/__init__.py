"""Building blocks for a stepped-batch training loop, for any model and any labelled dataset.

* [`SteppedBatches`][tripletkit.training.batches.SteppedBatches]: S×K index batches whose shape follows the stepped-batch schedule (sampler + scheduler).
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

from .atomic import atomic_open, atomic_save, atomic_write_bytes, atomic_write_text
from .batches import SteppedBatches
from .checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint
from .probe import CollapseProbe, probe_indices
from .rng import rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "CollapseProbe",
    "SteppedBatches",
    "TrainingCheckpoint",
    "atomic_open",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "probe_indices",
    "rng_state",
    "set_rng_state",
]
