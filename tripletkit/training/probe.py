"""The collapse probe: a fixed batch whose eval-mode embeddings a [`CollapseMonitor`][tripletkit.diagnostics.CollapseMonitor] judges."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..diagnostics import CollapseMonitor, EmbeddingStats
from ..samplers import SymmetricSampler, _labels_array

__all__ = ["CollapseProbe", "probe_indices"]


def probe_indices(labels: Sequence[int] | np.ndarray | Tensor, S: int = 32, K: int = 4, *, seed: int = 0) -> list[int]:
    """Dataset indices of one S×K probe batch: S classes × K samples, class-major, drawn with ``seed``.

    When fewer than two classes have K samples, K shrinks (down to 2) until at least two do; S shrinks to the
    number of classes that have K samples. A ``ValueError`` when not even two classes have two samples.
    """
    arr = _labels_array(labels)
    sizes = np.bincount(np.unique(arr, return_inverse=True)[1])
    k = K
    while k > 2 and int((sizes >= k).sum()) < 2:
        k -= 1
    usable = int((sizes >= k).sum())
    if usable < 2:
        raise ValueError(f"a probe batch needs two classes with at least {k} samples; the labels have {usable}")
    return next(iter(SymmetricSampler(arr, min(S, usable), k, seed=seed)))


class CollapseProbe:
    """Every ``every`` steps, embed a fixed probe batch in eval mode and let a collapse monitor judge it.

    Why eval mode: the descriptors are used in eval mode, and a train-mode BatchNorm rescales every batch (L2-Net's
    last layer rescales to unit variance), which can hide a collapse. The model's previous mode (train or eval) is
    restored afterwards, and no gradient is recorded.

    Args:
        monitor: a [`CollapseMonitor`][tripletkit.diagnostics.CollapseMonitor], or what one is built from (the loss, a margin name).
        inputs: the probe batch's model inputs (on the model's device), e.g. ``x[probe_indices(labels)]``.
        labels: the probe batch's labels.
        every: judge at steps ``every, 2·every, …`` (``step % every == 0``).
        embed: how to get embeddings from ``model(inputs)`` (default: the output itself).

    ``probe(model, step, loss)`` returns the [`EmbeddingStats`][tripletkit.diagnostics.EmbeddingStats] at a judged step, else
    None. The monitor's ``history`` holds them all; ``state_dict`` keeps the monitor's reference distance so that a
    resumed run judges against the same reference.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4)).train()
        >>> labels = torch.arange(4).repeat_interleave(4)
        >>> probe = CollapseProbe("hinge", torch.randn(16, 8), labels, every=10)
        >>> probe(model, 5) is None, probe(model, 10).collapsed, model.training
        (True, False, True)
    """

    def __init__(
        self,
        monitor: CollapseMonitor | object,
        inputs: Tensor,
        labels: Tensor,
        *,
        every: int = 50,
        embed: Callable[[object], Tensor] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.monitor = monitor if isinstance(monitor, CollapseMonitor) else CollapseMonitor(monitor, action="warn")
        self.inputs = inputs
        self.labels = labels
        self.every = every
        self.embed = embed

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, model: nn.Module, step: int, loss: float | Tensor | None = None) -> EmbeddingStats | None:
        if not self.due(step):
            return None
        return self.judge(model, loss)

    def judge(self, model: nn.Module, loss: float | Tensor | None = None) -> EmbeddingStats:
        """Judge now, whatever the step."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(self.inputs)
                emb = self.embed(out) if self.embed is not None else out
        finally:
            model.train(was_training)
        return self.monitor.update(emb.detach().float().cpu(), self.labels.detach().cpu(), loss)

    def state_dict(self) -> dict[str, float | bool | None]:
        return {"reference_distance": self.monitor.reference_distance, "collapsed": self.monitor.collapsed}

    def load_state_dict(self, state: dict[str, float | bool | None]) -> None:
        ref = state.get("reference_distance") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("collapsed"), bool)
            or (ref is not None and not (isinstance(ref, float) and ref > 0))
        ):
            raise ValueError(f"not a CollapseProbe state dict: {state!r}")
        self.monitor.reference_distance = ref
        self.monitor._collapsed = bool(state["collapsed"])

    def __repr__(self) -> str:
        return f"CollapseProbe(n={len(self.labels)}, every={self.every}, monitor={type(self.monitor).__name__})"
