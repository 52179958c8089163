"""tripletkit: triplet losses, miners, samplers and schedulers for metric learning.

>>> from tripletkit import BatchHardLoss
>>> loss_fn = BatchHardLoss(margin=0.2, margin_fn="hinge", distance="euclidean")
"""

from .diagnostics import CollapseError, CollapseMonitor, CollapseWarning, embedding_stats
from .distances import DISTANCES, CosineDistance, Distance, EuclideanDistance, SquaredEuclideanDistance
from .functional.miners import Triplets
from .losses import LOSSES, BatchAllLoss, BatchHardLoss, BatchSemiHardLoss, CrossBatchMemory, HardNetLoss, TripletLoss
from .margins import MARGINS, HingeMargin, MarginFunction, SoftplusMargin
from .miners import MINERS, BatchAllMiner, BatchHardMiner, Miner, OfflineMiner, RandomMiner, SemiHardMiner
from .registry import Registry, UnknownNameError
from .samplers import SAMPLERS, SymmetricSampler
from .schedulers import SCHEDULERS, STUDY_STAGES, StageChange, SteppedBatchScheduler
from .training import CollapseProbe, SteppedBatches, TrainingCheckpoint

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
