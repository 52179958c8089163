"""The optimiser's state made before the first step, so that the first step is the same program as every later one.

``torch.optim`` creates its state (Adam's moments, SGD's momentum buffer) inside the first ``step()``. Under
torch-xla or ``torch.compile`` the first step is then a different graph from the second, and a loop with one stage
compiles its training step twice. `init_optimizer_state` creates exactly the values the lazy path would, up front,
as device data, and the numbers of every step stay what they would have been (a test checks them bit for bit).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["init_optimizer_state"]


def _zeros(p: Tensor) -> Tensor:
    if p.device.type == "xla":  # made on the host and sent: device data, not a zeros op traced into the next graph
        return torch.zeros(p.shape, dtype=p.dtype).to(p.device)
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state of `torch.optim.Adam`, `AdamW` or `SGD` for every parameter that has none yet.

    Adam/AdamW: ``step`` = 0 (a CPU scalar unless ``capturable`` or ``fused``, as torch does), ``exp_avg`` and
    ``exp_avg_sq`` (and ``max_exp_avg_sq`` with ``amsgrad``) = 0. SGD with momentum: ``momentum_buffer`` = 0, whose
    first update ``0·μ + g`` equals the clone of ``g`` that the lazy path makes; with ``dampening ≠ 0`` the two
    differ, so that case is refused. SGD without momentum has no state. Parameters that already have state (a
    restored checkpoint) are left alone.

    Raises:
        TypeError: for any other optimiser (its lazy state is not known here).
        ValueError: for SGD with momentum and ``dampening ≠ 0``.
    """
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group in optimizer.param_groups:
            on_device = group.get("capturable", False) or group.get("fused", False)
            for p in group["params"]:
                state = optimizer.state[p]
                if state:
                    continue
                if on_device:
                    dtype = torch.float32 if group.get("fused", False) else torch.get_default_dtype()
                    state["step"] = torch.zeros((), dtype=dtype).to(p.device)
                else:
                    state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
                state["exp_avg"] = _zeros(p)
                state["exp_avg_sq"] = _zeros(p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = _zeros(p)
        return
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group["momentum"] == 0:
                continue
            if group["dampening"] != 0:
                raise ValueError(
                    f"SGD with dampening={group['dampening']}: its first momentum buffer is the gradient itself, "
                    "which a zero buffer does not reproduce"
                )
            for p in group["params"]:
                state = optimizer.state[p]
                if "momentum_buffer" not in state or state["momentum_buffer"] is None:
                    state["momentum_buffer"] = _zeros(p)
        return
    raise TypeError(
        f"init_optimizer_state knows torch.optim.Adam, AdamW and SGD, got {type(optimizer).__name__}: "
        "its lazily created state is not known here"
    )
