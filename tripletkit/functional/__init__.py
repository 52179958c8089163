"""The pure functional core: stateless, differentiable, no modules and no registry look-ups."""

from .distances import (
    cosine_matrix,
    cosine_paired,
    euclidean_matrix,
    euclidean_paired,
    safe_sqrt,
    squared_euclidean_matrix,
    squared_euclidean_paired,
)
from .losses import (
    BatchAllStats,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    random_triplet_loss,
    triplet_margin_loss,
)
from .margins import hinge, softplus
from .miners import (
    Triplets,
    batch_all_triplet_count,
    batch_hard_triplets,
    iter_batch_all_triplets,
    label_masks,
    mine_offline,
    random_triplets,
    semihard_triplets,
)
from .reductions import REDUCTIONS, reduce_losses

__all__ = [
    "BatchAllStats",
    "REDUCTIONS",
    "Triplets",
    "batch_all_triplet_count",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_hard_triplets",
    "cosine_matrix",
    "cosine_paired",
    "euclidean_matrix",
    "euclidean_paired",
    "hinge",
    "iter_batch_all_triplets",
    "label_masks",
    "mine_offline",
    "random_triplet_loss",
    "random_triplets",
    "reduce_losses",
    "safe_sqrt",
    "semihard_triplets",
    "softplus",
    "squared_euclidean_matrix",
    "squared_euclidean_paired",
    "triplet_margin_loss",
]
