"""Every global RNG a resumed run must restore, as plain tensors and numbers (loadable with ``weights_only=True``)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """torch's CPU generator, NumPy's and Python's global ones, plus the accelerator's for a CUDA or XLA ``device``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # NumPy's legacy state holds an ndarray; as a tensor it loads without unpickling
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device is not None and device.type == "xla":
        import torch_xla.core.xla_model as xm

        state["xla"] = int(xm.get_rng_state(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what [`rng_state()`][tripletkit.training.rng.rng_state] returned. A state that does not fit raises ``ValueError`` before any change."""
    try:
        torch_state = state["torch"]
        np_state = state["numpy"]
        keys = np.asarray(np_state["keys"].numpy(), dtype=np.uint32)
        np_tuple = (
            np_state["name"],
            keys,
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
        py_state = state["python"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise TypeError("torch state is not a uint8 tensor")
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an RNG state from tripletkit.training.rng_state: {e}") from None
    torch.set_rng_state(torch_state)
    np.random.set_state(np_tuple)
    random.setstate(tuple(py_state[:1]) + (tuple(py_state[1]),) + tuple(py_state[2:]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device is not None and device.type == "xla" and "xla" in state:
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(int(state["xla"]), device)
