"""Input checks shared by the functional core and the modules.

The checks that need the tensor's values (NaN/inf) synchronise with the device, so they are skipped while
``torch.compile`` traces and can be switched off with ``validate=False`` in a hot loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _static(t: Tensor) -> bool:
    """Whether work on ``t`` is traced into a graph (``torch.compile`` or a torch-xla device): then no value may be
    read to the host, and data-dependent checks are skipped."""
    return _compiling() or t.device.type == "xla"


def check_embeddings(embeddings: object, *, name: str = "embeddings", min_rows: int = 2, values: bool = True) -> Tensor:
    """Check a (N, D) floating-point tensor with N >= ``min_rows`` and finite values."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {embeddings.dtype}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(embeddings.shape)}")
    if embeddings.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {embeddings.shape[0]} row(s); at least {min_rows} are needed to form a pair"
            if min_rows == 2
            else f"{name} has {embeddings.shape[0]} row(s); at least {min_rows} are needed"
        )
    if embeddings.shape[1] < 1:
        raise ValueError(f"{name} has no dimensions (shape {tuple(embeddings.shape)})")
    if values and not _compiling() and not bool(torch.isfinite(embeddings).all()):
        n_nan = int(torch.isnan(embeddings).sum())
        n_inf = int(torch.isinf(embeddings).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")
    return embeddings


def check_labels(
    labels: object, n: int, *, device: torch.device | None = None, name: str = "labels", of: str = "the embeddings"
) -> Tensor:
    """Check a 1-D integer tensor of length ``n``; returns it on ``device``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(labels).__name__}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has length {labels.shape[0]} but {of} have {n} rows")
    if device is not None and labels.device != device:
        labels = labels.to(device)
    return labels


def check_distance_matrix(dist: object, *, name: str = "distance matrix", values: bool = True) -> Tensor:
    if not isinstance(dist, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(dist).__name__}")
    if not dist.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {dist.dtype}")
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"{name} must be square (N, N), got shape {tuple(dist.shape)}")
    if values and not _compiling() and not bool(torch.isfinite(dist).all()):
        raise ValueError(f"{name} contains non-finite values")
    return dist


def check_margin(margin: object, *, name: str = "margin") -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(margin).__name__}")
    margin = float(margin)
    if not math.isfinite(margin):
        raise ValueError(f"{name} must be finite, got {margin}")
    if margin < 0:
        raise ValueError(f"{name} must be >= 0, got {margin}")
    return margin


def check_positive(value: object, *, name: str) -> float:
    """A finite real number > 0 (a temperature, a scale)."""
    value = check_margin(value, name=name)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class _Float16Upcast(torch.autograd.Function):
    """float16 → float32 whose backward refuses a gradient beyond float16's range (65504) instead of returning inf:
    the cosine gradient of a row of tiny norm grows like 1/‖x‖."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.float()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        limit = torch.finfo(torch.float16).max
        if not _static(grad) and bool((grad.abs() > limit).any()):
            raise ValueError(
                f"the gradient of the float16 embeddings reaches {float(grad.abs().max()):.3g}, beyond float16's "
                f"range ({limit:.0f}) (a row of tiny norm under the cosine distance?): use bfloat16 or float32 embeddings"
            )
        return grad.to(torch.float16)


def compute_dtype(x: Tensor) -> Tensor:
    """Half-precision embeddings are computed in float32: distances near zero need the mantissa. A float16 gradient
    that would overflow is a ValueError, not inf."""
    if x.dtype == torch.float16 and x.requires_grad and torch.is_grad_enabled():
        return _Float16Upcast.apply(x)
    return x.float() if x.dtype in _LOW_PRECISION else x


def check_choice(value: object, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


_F = TypeVar("_F", bound=Callable[..., Any])


def outside_autocast(fn: _F) -> _F:
    """Run ``fn`` with autocast switched off for the device of its first tensor argument.

    The losses promise float32 arithmetic for half-precision embeddings; inside a caller's ``torch.autocast`` region
    the distance GEMM would otherwise run in bf16/fp16 (and write into float32 buffers, which fails). A model's
    forward is often wrapped in autocast together with its loss, so the losses and miners opt out themselves.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if tensor is None or not torch.is_autocast_enabled(tensor.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type=tensor.device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_class_size(value: object) -> int | None:
    """``max_class_size``: None, or a positive int (``K`` for S×K batches)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_class_size must be a positive int or None, got {value!r}")
    return value  # type: ignore[return-value]


def check_margin_dtype(margin: float, dtype: torch.dtype) -> None:
    """A margin must be finite in the dtype the loss computes in (1e39 is finite in float64, not in float32)."""
    if dtype.is_floating_point and abs(margin) > torch.finfo(dtype).max:
        raise ValueError(f"margin {margin} is not finite in {dtype}, the dtype this loss computes in")


def check_finite_result(value: Tensor, what: str = "the loss") -> Tensor:
    """Finite inputs give a finite result or a ValueError, never a silent inf/NaN (one host sync; skipped when
    traced)."""
    if not _static(value) and not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(
            f"{what} is not finite for finite inputs: a distance or margin exceeds the range of {value.dtype} "
            "(compute in float64, or scale the embeddings down)"
        )
    return value


def check_loss_inputs(
    embeddings: object, labels: object, *, min_rows: int = 2, values: bool = True
) -> tuple[Tensor, Tensor]:
    """The functional losses' input check (the modules' check): (N, D) floating embeddings, (N,) integer labels."""
    x = check_embeddings(embeddings, min_rows=min_rows, values=values)
    return x, check_labels(labels, x.shape[0], device=x.device)


def check_triplet_indices(
    anchor: Tensor, positive: Tensor, negative: Tensor, n_anchor: int, n_other: int, *, values: bool = True
) -> None:
    """Index triplets: 1-D int32/int64 tensors of one length; anchors in ``[0, n_anchor)``, positives and negatives in
    ``[0, n_other)`` (the range check reads from the device: ``values=False`` skips it)."""
    for name, idx, bound in (
        ("anchor", anchor, n_anchor),
        ("positive", positive, n_other),
        ("negative", negative, n_other),
    ):
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1:
            raise TypeError(f"triplet {name} indices must be a 1-D int32/int64 tensor")
        if idx.shape != anchor.shape:
            raise ValueError(
                f"triplet index tensors differ in length: anchor {tuple(anchor.shape)}, {name} {tuple(idx.shape)}"
            )
        if values and not _static(idx) and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
            raise ValueError(f"triplet {name} indices must lie in [0, {bound})")


def check_reference_set(
    embeddings: Tensor,
    ref: object,
    ref_labels: object,
    ref_self_index: object = None,
    *,
    name: str = "ref_embeddings",
    values: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A reference set for ``embeddings`` (PML's ``ref_emb``): (M, D) finite rows of the same D, (M,) integer
    labels, and an optional (N,) ``ref_self_index`` in ``[-1, M)``; returned on the embeddings' device."""
    ref = check_embeddings(ref, name=name, min_rows=1, values=values and not _static(embeddings))
    if ref.shape[1] != embeddings.shape[1]:
        raise ValueError(f"{name} have {ref.shape[1]} dimensions but the embeddings have {embeddings.shape[1]}")
    if ref_labels is None:
        raise ValueError(f"ref_labels are required with {name}")
    m = ref.shape[0]
    labels = check_labels(ref_labels, m, device=embeddings.device, name="ref_labels", of=name)
    if ref_self_index is not None:
        ref_self_index = check_labels(
            ref_self_index, embeddings.shape[0], device=embeddings.device, name="ref_self_index"
        ).long()
        if values and not _static(embeddings) and ref_self_index.numel():
            if int(ref_self_index.min()) < -1 or int(ref_self_index.max()) >= m:
                raise ValueError(f"ref_self_index must lie in [-1, {m}) for {m} reference rows")
    return ref.to(embeddings.device), labels, ref_self_index  # type: ignore[return-value]
