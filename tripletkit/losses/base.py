"""Configuration and input checks shared by the triplet-loss modules."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_choice, check_embeddings, check_labels, check_margin
from ..distances import DISTANCES, Distance
from ..margins import MARGINS, MarginFunction

__all__ = ["TripletLossBase"]


def _check_class_size(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_class_size must be a positive int or None, got {value!r}")
    return value  # type: ignore[return-value]


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
    ) -> None:
        super().__init__()
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

    def _check_inputs(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings(embeddings, values=self.validate)
        return check_labels(labels, embeddings.shape[0], device=embeddings.device)

    def extra_repr(self) -> str:
        return f"margin_fn={self.margin_fn!r}, distance={self.distance!r}, reduction={self.reduction!r}"
