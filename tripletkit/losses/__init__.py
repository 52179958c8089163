"""Triplet-loss modules, registered in ``LOSSES``: ``batch_hard``, ``batch_all``, ``batch_semihard``, ``triplet``,
``hardnet``; and the [`CrossBatchMemory`][tripletkit.losses.cross_batch_memory.CrossBatchMemory] wrapper."""

from ..registry import Registry
from .base import TripletLossBase
from .batch_all import BatchAllLoss
from .batch_hard import BatchHardLoss
from .batch_semihard import BatchSemiHardLoss
from .cross_batch_memory import CrossBatchMemory
from .hardnet import HardNetLoss
from .triplet import TripletLoss

LOSSES: Registry[TripletLossBase] = Registry("loss", check=callable, expected="callable loss module")
LOSSES.register("batch_hard")(BatchHardLoss)
LOSSES.register("batch_all")(BatchAllLoss)
LOSSES.register("batch_semihard")(BatchSemiHardLoss)
LOSSES.register("triplet")(TripletLoss)
LOSSES.register("hardnet")(HardNetLoss)

__all__ = [
    "LOSSES",
    "BatchAllLoss",
    "BatchHardLoss",
    "BatchSemiHardLoss",
    "CrossBatchMemory",
    "HardNetLoss",
    "TripletLoss",
    "TripletLossBase",
]
