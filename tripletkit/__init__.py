"""tripletkit: triplet losses, miners, samplers and schedulers for metric learning.

>>> from tripletkit import BatchHardLoss
>>> loss_fn = BatchHardLoss(margin=0.2, margin_fn="hinge", distance="euclidean")
"""

# Names resolve on first use (PEP 562): importing one torch-free submodule (``tripletkit.metrics``, the atomic
# writers) does not import torch and every loss, which keeps a process that only evaluates quick to start.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .diagnostics import CollapseError, CollapseMonitor, CollapseWarning, embedding_stats
    from .distances import DISTANCES, CosineDistance, Distance, EuclideanDistance, SquaredEuclideanDistance
    from .functional.miners import Triplets
    from .losses import (
        LOSSES,
        BatchAllLoss,
        BatchHardLoss,
        BatchSemiHardLoss,
        CrossBatchMemory,
        HardNetLoss,
        TripletLoss,
    )
    from .margins import MARGINS, HingeMargin, MarginFunction, SoftplusMargin
    from .miners import MINERS, BatchAllMiner, BatchHardMiner, Miner, OfflineMiner, RandomMiner, SemiHardMiner
    from .registry import Registry, UnknownNameError
    from .samplers import SAMPLERS, SymmetricSampler
    from .schedulers import SCHEDULERS, STUDY_STAGES, StageChange, SteppedBatchScheduler
    from .training import CollapseProbe, SteppedBatches, TrainingCheckpoint

_LAZY = {
    "CollapseError": ".diagnostics",
    "CollapseMonitor": ".diagnostics",
    "CollapseWarning": ".diagnostics",
    "embedding_stats": ".diagnostics",
    "DISTANCES": ".distances",
    "CosineDistance": ".distances",
    "Distance": ".distances",
    "EuclideanDistance": ".distances",
    "SquaredEuclideanDistance": ".distances",
    "Triplets": ".functional.miners",
    "LOSSES": ".losses",
    "BatchAllLoss": ".losses",
    "BatchHardLoss": ".losses",
    "BatchSemiHardLoss": ".losses",
    "CrossBatchMemory": ".losses",
    "HardNetLoss": ".losses",
    "TripletLoss": ".losses",
    "MARGINS": ".margins",
    "HingeMargin": ".margins",
    "MarginFunction": ".margins",
    "SoftplusMargin": ".margins",
    "MINERS": ".miners",
    "BatchAllMiner": ".miners",
    "BatchHardMiner": ".miners",
    "Miner": ".miners",
    "OfflineMiner": ".miners",
    "RandomMiner": ".miners",
    "SemiHardMiner": ".miners",
    "Registry": ".registry",
    "UnknownNameError": ".registry",
    "SAMPLERS": ".samplers",
    "SymmetricSampler": ".samplers",
    "SCHEDULERS": ".schedulers",
    "STUDY_STAGES": ".schedulers",
    "StageChange": ".schedulers",
    "SteppedBatchScheduler": ".schedulers",
    "CollapseProbe": ".training",
    "SteppedBatches": ".training",
    "TrainingCheckpoint": ".training",
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


__version__ = "0.1.0"

__all__ = [
    "DISTANCES",
    "LOSSES",
    "MARGINS",
    "MINERS",
    "SAMPLERS",
    "SCHEDULERS",
    "STUDY_STAGES",
    "BatchAllLoss",
    "BatchSemiHardLoss",
    "CrossBatchMemory",
    "HardNetLoss",
    "CollapseError",
    "CollapseMonitor",
    "CollapseWarning",
    "StageChange",
    "SteppedBatches",
    "CollapseProbe",
    "TrainingCheckpoint",
    "SteppedBatchScheduler",
    "SymmetricSampler",
    "embedding_stats",
    "BatchAllMiner",
    "BatchHardLoss",
    "BatchHardMiner",
    "CosineDistance",
    "Distance",
    "EuclideanDistance",
    "HingeMargin",
    "MarginFunction",
    "Miner",
    "OfflineMiner",
    "RandomMiner",
    "SemiHardMiner",
    "Registry",
    "SoftplusMargin",
    "SquaredEuclideanDistance",
    "TripletLoss",
    "Triplets",
    "UnknownNameError",
    "__version__",
]
