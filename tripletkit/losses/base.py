"""Configuration and input checks shared by the triplet-loss modules."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import (
    check_choice,
    check_embeddings,
    check_finite_result,
    check_labels,
    check_margin,
    check_margin_dtype,
    check_reference_set,
    compute_dtype,
)
from ..distances import DISTANCES, Distance
from ..distributed import gather_with_grad, is_distributed, scale_for_ddp
from ..margins import MARGINS, MarginFunction

__all__ = ["TripletLossBase"]


class TripletLossBase(nn.Module):
    """Holds the distance, the margin function and the reduction, validated once in ``__init__``."""

    reductions: tuple[str, ...] = ("mean", "mean_active", "sum", "none")

    def __init__(
        self,
        margin: float | None = None,
        margin_fn: str | dict | MarginFunction = "hinge",
        distance: str | dict | Distance = "euclidean",
        reduction: str = "mean",
        validate: bool = True,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = bool(gather_distributed)
        if isinstance(margin_fn, MarginFunction):
            if margin is not None and check_margin(margin) != margin_fn.margin:
                raise ValueError(
                    f"margin={margin} given together with {margin_fn!r}; set the margin on the margin function"
                )
            self.margin_fn = margin_fn
        else:
            self.margin_fn = MARGINS.build(margin_fn, **({} if margin is None else {"margin": check_margin(margin)}))
        self.distance = DISTANCES.build(distance)
        self.reduction = check_choice(reduction, self.reductions, "reduction")
        self.validate = bool(validate)

    @property
    def margin(self) -> float:
        return self.margin_fn.margin

    @property
    def collapse_value(self) -> float:
        """The loss value of a collapsed model (all embeddings equal): m for the hinge, ln(1+e^m) for softplus."""
        return self.margin_fn.collapse_value

    def _check_inputs(self, embeddings: Tensor, labels: Tensor, min_rows: int | None = None) -> Tensor:
        if min_rows is None:
            min_rows = 1 if self.gather_distributed else 2
        check_embeddings(embeddings, min_rows=min_rows, values=self.validate)
        check_margin_dtype(self.margin_fn.margin, compute_dtype(embeddings).dtype)
        return check_labels(labels, embeddings.shape[0], device=embeddings.device)

    def _check_ref(
        self,
        embeddings: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
        ref_self_index: Tensor | None,
    ) -> dict:
        """The reference-set keyword arguments of the functional losses, checked; empty without a reference set."""
        if ref_embeddings is None:
            if ref_labels is not None or ref_self_index is not None:
                raise ValueError("ref_labels and ref_self_index need ref_embeddings")
            return {}
        if self.gather_distributed:
            raise ValueError("ref_embeddings cannot be combined with gather_distributed")
        ref, ref_labels, ref_self_index = check_reference_set(
            embeddings, ref_embeddings, ref_labels, ref_self_index, values=self.validate
        )
        return {"ref": ref, "ref_labels": ref_labels, "ref_self_index": ref_self_index}

    def _prepare(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
        ref_self_index: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict]:
        """Checked ``(embeddings, labels, ref)``: with a reference set, ``ref`` holds the functional losses'
        ``ref``/``ref_labels``/``ref_self_index`` (one anchor is enough); without one, the batch is gathered across
        replicas when ``gather_distributed`` and ``ref`` is empty."""
        if ref_embeddings is None:
            self._check_ref(embeddings, None, ref_labels, ref_self_index)  # ref_labels alone is an error
            labels = self._check_inputs(embeddings, labels)
            embeddings, labels = self._gather(embeddings, labels)
            return embeddings, labels, {}
        labels = self._check_inputs(embeddings, labels, min_rows=1)
        return embeddings, labels, self._check_ref(embeddings, ref_embeddings, ref_labels, ref_self_index)

    def _gather(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The global batch when ``gather_distributed`` (see [`tripletkit.distributed`][tripletkit.distributed]), else the inputs."""
        if self.gather_distributed and is_distributed():
            embeddings, labels = gather_with_grad(embeddings), gather_with_grad(labels)
            if embeddings.shape[0] < 2:
                raise ValueError("the gathered batch has fewer than 2 rows")
        elif embeddings.shape[0] < 2:
            raise ValueError(f"embeddings has {embeddings.shape[0]} row(s); at least 2 are needed to form a pair")
        return embeddings, labels

    def _finish(self, loss: Tensor) -> Tensor:
        if self.validate:  # finite inputs: a finite loss or a ValueError, never a silent inf/NaN
            check_finite_result(loss)
        return scale_for_ddp(loss) if self.gather_distributed else loss

    def extra_repr(self) -> str:
        return f"margin_fn={self.margin_fn!r}, distance={self.distance!r}, reduction={self.reduction!r}"
