"""Triplet-loss modules, registered in ``LOSSES``: ``batch_hard``, ``batch_all``, ``triplet``."""

from ..registry import Registry
from .base import TripletLossBase
from .batch_all import BatchAllLoss
from .batch_hard import BatchHardLoss
from .triplet import TripletLoss

LOSSES: Registry[TripletLossBase] = Registry("loss", check=callable, expected="callable loss module")
LOSSES.register("batch_hard")(BatchHardLoss)
LOSSES.register("batch_all")(BatchAllLoss)
LOSSES.register("triplet")(TripletLoss)

__all__ = ["LOSSES", "BatchAllLoss", "BatchHardLoss", "TripletLoss", "TripletLossBase"]
