"""A whole training state in one atomic, safely loadable checkpoint, with the previous one kept as a fallback."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from .atomic import atomic_save, fsync_dir
from .rng import rng_state, set_rng_state

__all__ = ["TrainingCheckpoint", "CheckpointError", "load_checkpoint"]

FORMAT = "tripletkit.training.checkpoint/1"


class CheckpointError(ValueError):
    """No usable checkpoint: unreadable, from another format, or not matching this run."""


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        # weights_only: plain tensors and containers; a planted pickle cannot run code
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects beyond tensors and containers (written by an older "
            f"tripletkit, or tampered with), and loading them would run code ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (found {found!r})")
    return state


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The newest readable checkpoint at ``path``: ``path`` itself or, with a warning, the one kept before it.

    Raises [`CheckpointError`][tripletkit.training.checkpoint.CheckpointError] (naming both files) when neither is usable, ``FileNotFoundError`` when neither
    exists.
    """
    path = Path(path)
    candidates = [p for p in (path, _previous(path)) if p.exists()]
    if not candidates:
        raise FileNotFoundError(f"no checkpoint at {path}")
    errors = []
    for candidate in candidates:
        try:
            state = _read(candidate, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if candidate != path:
            warnings.warn(
                f"resuming from the previous checkpoint {candidate}: " + "; ".join(errors or [f"{path} is missing"]),
                stacklevel=2,
            )
        return state
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))


def _get(obj: Any) -> Any:
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    raise TypeError(f"{type(obj).__name__} has neither state_dict() nor is a torch.Generator")


def _set(obj: Any, state: Any) -> None:
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    else:
        obj.set_state(state)


class TrainingCheckpoint:
    """Save and restore everything a training run needs to continue exactly.

    Args:
        path: the checkpoint file. The previous checkpoint is kept as ``<path>.prev``; a resume falls back to it,
            with a warning, when the newer one is unreadable.
        model: the model (its ``state_dict``; pass the unwrapped module, not the DDP or compiled wrapper).
        optimizer: the optimiser, or None.
        stateful: named objects with ``state_dict``/``load_state_dict`` (a [`SteppedBatches`][tripletkit.training.batches.SteppedBatches],
            a seeded miner, a [`CollapseProbe`][tripletkit.training.probe.CollapseProbe], a learning-rate scheduler) or
            ``torch.Generator`` objects. They are saved *per rank*, like the global RNGs (torch, NumPy, Python, and
            CUDA or XLA for ``device``), since each replica has its own.
        device: where the accelerator RNG lives; default: the device of the model's first parameter.

    ``save(**extra)`` writes the state plus ``extra`` (plain values: the step, a patch count); under DDP every rank
    must call it (the per-rank states are gathered) and rank 0 writes. The write is atomic (temporary file, fsync,
    rename) and the file loads with ``torch.load(weights_only=True)``: no pickled code. ``restore()`` loads it
    back into the objects and returns ``extra``, or None when there is no checkpoint. It checks the world size,
    the names of the saved objects and the model's keys before changing anything.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        stateful: Mapping[str, Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.path = Path(path)
        self.model = model
        self.optimizer = optimizer
        self.stateful = dict(stateful or {})
        for name, obj in self.stateful.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")) and not isinstance(
                obj, torch.Generator
            ):
                raise TypeError(
                    f"stateful[{name!r}] ({type(obj).__name__}) needs state_dict/load_state_dict or to be a torch.Generator"
                )
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = device

    def exists(self) -> bool:
        return self.path.exists() or _previous(self.path).exists()

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": rng_state(self.device), "stateful": {name: _get(obj) for name, obj in self.stateful.items()}}

    def save(self, **extra: Any) -> None:
        ranks = distributed.all_gather_objects(self._rank_state())
        if distributed.rank() != 0:
            return
        state = {
            "format": FORMAT,
            "world_size": distributed.world_size(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "ranks": ranks,
            "extra": extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = self.path.with_name(f".{self.path.name}.new")
        atomic_save(state, tmp_target)
        # at every instant at least one complete checkpoint exists: path, or path.prev
        if self.path.exists():
            os.replace(self.path, _previous(self.path))
        os.replace(tmp_target, self.path)
        fsync_dir(self.path.parent)

    def restore(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        if not self.exists():
            return None
        state = load_checkpoint(self.path, map_location)
        world, rank = distributed.world_size(), distributed.rank()
        if state["world_size"] != world:
            raise CheckpointError(
                f"{self.path} was written by {state['world_size']} process(es); resume it with as many (this run has {world})"
            )
        ranks = state["ranks"]
        mine = ranks[rank] if rank < len(ranks) else ranks[0]  # the xla backend saves rank 0's state only
        saved, wanted = set(mine["stateful"]), set(self.stateful)
        if saved != wanted:
            raise CheckpointError(f"{self.path} holds state for {sorted(saved)}, this run has {sorted(wanted)}")
        model_keys, saved_keys = set(self.model.state_dict()), set(state["model"])
        if model_keys != saved_keys:
            raise CheckpointError(
                f"{self.path}: the model's parameters differ from the checkpoint's "
                f"(missing {sorted(model_keys - saved_keys)[:5]}, unexpected {sorted(saved_keys - model_keys)[:5]})"
            )
        if (self.optimizer is None) != (state["optimizer"] is None):
            raise CheckpointError(
                f"{self.path}: optimiser state {'missing' if state['optimizer'] is None else 'present'}, but this run has {'one' if self.optimizer else 'none'}"
            )
        try:
            self.model.load_state_dict(state["model"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            for name, obj in self.stateful.items():
                _set(obj, mine["stateful"][name])
            set_rng_state(mine["rng"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.path}: does not fit this run: {e}") from None
        return dict(state["extra"])
