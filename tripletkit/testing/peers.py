"""Access to the peer libraries that tests and benchmarks compare with, when they are installed.

open-metric-learning (OML) 4.0 pins numpy < 2 and pulls torchvision, albumentations, opencv and more, none of which
its losses and miners use; CI installs it with ``--no-deps`` (plus omegaconf, which ``oml.utils.misc`` imports).
The package initialisers of ``oml.losses`` and ``oml.utils`` import ArcFace (torchvision) and the mock-dataset
downloader (gdown), so [`import_oml()`][tripletkit.testing.peers.import_oml] registers those two packages by path
without running their ``__init__``: only the modules a triplet loss needs are executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

__all__ = ["import_oml", "have_pml"]


def have_pml() -> bool:
    return importlib.util.find_spec("pytorch_metric_learning") is not None


def import_oml() -> dict[str, Any] | None:
    """OML's ``TripletLoss``, ``TripletLossWithMiner``, ``AllTripletsMiner``, ``HardTripletsMiner`` and
    ``TripletMinerWithMemory``, or None when OML (or omegaconf) is not installed."""
    spec = importlib.util.find_spec("oml")
    if spec is None or spec.origin is None or importlib.util.find_spec("omegaconf") is None:
        return None
    root = os.path.dirname(spec.origin)
    for sub in ("losses", "utils"):
        name = f"oml.{sub}"
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, sub)]
            sys.modules[name] = pkg
    triplet = importlib.import_module("oml.losses.triplet")
    return {
        "TripletLoss": triplet.TripletLoss,
        "TripletLossWithMiner": triplet.TripletLossWithMiner,
        "AllTripletsMiner": importlib.import_module("oml.miners.inbatch_all_tri").AllTripletsMiner,
        "HardTripletsMiner": importlib.import_module("oml.miners.inbatch_hard_tri").HardTripletsMiner,
        "TripletMinerWithMemory": importlib.import_module("oml.miners.cross_batch").TripletMinerWithMemory,
    }
