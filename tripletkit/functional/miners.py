"""Triplet miners as pure functions of (distances or embeddings, labels).

A *valid triplet* ``(a, p, n)`` has ``label[p] == label[a]``, ``p != a`` and ``label[n] != label[a]``.

The in-batch miners (``random``, ``batch_hard``) return one triplet per anchor as a [`Triplets`][tripletkit.functional.miners.Triplets] of static
shape (N,): anchors that have no positive or no negative get ``valid = False`` (their indices are arbitrary but in
range). They use masked reductions only (no boolean-mask indexing, no ``nonzero``, no ``.item()``), so they trace
under ``torch.compile`` and torch-xla with one graph per batch shape.

``batch_all`` is every valid triplet. Listing them costs O(N³) memory, so the losses never do; the pair masks
([`label_masks()`][tripletkit.functional.miners.label_masks]) define the set, [`batch_all_triplet_count()`][tripletkit.functional.miners.batch_all_triplet_count] counts it and [`iter_batch_all_triplets()`][tripletkit.functional.miners.iter_batch_all_triplets]
lists it in anchor blocks for inspection.

[`mine_offline()`][tripletkit.functional.miners.mine_offline] mines a whole dataset's descriptor bank in chunks (never an M×M matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import _compiling, _static, outside_autocast
from .types import DistanceLike

__all__ = [
    "Triplets",
    "label_masks",
    "batch_hard_triplets",
    "batch_hard_triplets_factored",
    "mine_batch_hard",
    "mine_batch_hard_ref",
    "ClassMembers",
    "class_members",
    "ref_members",
    "random_triplets_ref",
    "semihard_triplets_ref",
    "batch_all_triplets_ref",
    "random_triplets",
    "semihard_triplets",
    "batch_all_triplet_count",
    "iter_batch_all_triplets",
    "mine_offline",
]


class Triplets(NamedTuple):
    """Index triplets, one per row. ``valid[i]`` says whether row i is a real triplet.

    ``swap``, when not None, marks rows whose negative distance is ``d(positive, negative)`` instead of
    ``d(anchor, negative)`` (the anchor swap of Balntas et al. 2016 / HardNet).
    """

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    valid: Tensor
    swap: Tensor | None = None


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean N×N masks: same label and not self; different label."""
    same = labels[:, None] == labels[None, :]
    positive = same.clone()
    positive.fill_diagonal_(False)
    return positive, ~same


@torch.no_grad()
def batch_hard_triplets(
    ranking: Tensor, labels: Tensor, *, row_offset: Tensor | None = None, swap: bool = False
) -> Triplets:
    """Hermans et al.'s batch-hard mining: for every anchor, its furthest positive and nearest negative.

    Args:
        ranking: (N, N) matrix that orders each row like the distance (the distance itself, or a monotone transform
            minus a per-row constant, see [`squared_euclidean_ranking()`][tripletkit.functional.distances.squared_euclidean_ranking]).
        labels: (N,) integer labels.
        row_offset: per-row constant that turns ``ranking`` into a monotone transform of the distance that is
            comparable across rows; needed only for ``swap``.
        swap: the anchor swap on batch-hard mining: the negative is the nearest negative of the anchor or of its hardest positive,
            whichever is nearer (``min(min_n d(a, n), min_n d(p, n))``).

    Ties are broken by the smallest index. Self-pairs are never chosen as positives, also when the anchor's only
    other positives coincide with it.
    """
    same = labels[:, None] == labels[None, :]
    neg_inf = torch.tensor(float("-inf"), dtype=ranking.dtype, device=ranking.device)
    pos_scores = torch.where(same, ranking, neg_inf)
    pos_scores.diagonal().fill_(float("-inf"))
    pos_val, positive = pos_scores.max(1)
    neg_scores = ranking.masked_fill(same, float("inf"))
    neg_val, negative = neg_scores.min(1)
    valid = (pos_val > float("-inf")) & (neg_val < float("inf"))
    return _hardest(positive, negative, neg_val, valid, row_offset, swap)


def _hardest(
    positive: Tensor, negative: Tensor, neg_val: Tensor, valid: Tensor, row_offset: Tensor | None, swap: bool
) -> Triplets:
    """One triplet per anchor from its hardest positive and negative; with ``swap`` (the anchor swap on batch-hard mining) the
    negative becomes the hardest positive's nearest negative where that one is nearer (``neg_val + row_offset``
    compares rows)."""
    anchor = torch.arange(positive.shape[0], device=positive.device)
    if not swap:
        return Triplets(anchor, positive, negative, valid)
    neg_dist = neg_val if row_offset is None else neg_val + row_offset
    use_swap = neg_dist[positive] < neg_dist
    return Triplets(anchor, positive, torch.where(use_swap, negative[positive], negative), valid, use_swap)


class ClassMembers(NamedTuple):
    """Each row's class as a padded index list (built in O(N log N), no N×N mask).

    ``members[i]``: the indices of i's class, self included, padded with i itself up to ``max_class_size`` columns;
    ``positive[i]``: True where ``members[i]`` is a real positive (another member of the class);
    ``class_size[i]``: the size of i's class.
    """

    members: Tensor
    positive: Tensor
    class_size: Tensor


class _SortedClasses(NamedTuple):
    order: Tensor  # argsort of the labels (stable): each class is a contiguous run of order
    rank: Tensor  # position of each sample in order
    start: Tensor  # start of each sample's run
    size: Tensor  # length of each sample's run (its class size)


def _sorted_classes(labels: Tensor) -> _SortedClasses:
    n = labels.shape[0]
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    # each run's first and last position by running maxima over its boundaries (searchsorted and cummin have no
    # XLA lowering and would run on the host)
    idx = torch.arange(n, device=labels.device)
    change = ordered[1:] != ordered[:-1]
    first = torch.cat([change.new_ones(1), change])
    last = torch.cat([change, change.new_ones(1)])
    start_sorted = torch.cummax(torch.where(first, idx, 0), 0).values
    end_sorted = (n - 1) - torch.cummax(torch.where(last, n - 1 - idx, 0).flip(0), 0).values.flip(0)
    size_sorted = end_sorted - start_sorted + 1
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=labels.device)
    return _SortedClasses(order, rank, start_sorted[rank], size_sorted[rank])


def class_members(labels: Tensor, max_class_size: int | None = None) -> ClassMembers:
    """[`ClassMembers`][tripletkit.functional.miners.ClassMembers] of ``labels``; ``max_class_size`` (``K`` for S×K batches) keeps the shape static,
    otherwise it is read from the labels (one host sync). A class larger than ``max_class_size`` is an error."""
    n = labels.shape[0]
    device = labels.device
    order, _, start, size = _sorted_classes(labels)
    if max_class_size is None:
        max_class_size = int(size.max())
    elif not _static(labels) and int(size.max()) > max_class_size:
        raise ValueError(f"max_class_size={max_class_size} but a class in this batch has {int(size.max())} members")
    k = torch.arange(max_class_size, device=device)
    inside = k[None, :] < size[:, None]
    cols = torch.clamp(start[:, None] + k[None, :], max=n - 1)
    self_index = torch.arange(n, device=device)[:, None]
    members = torch.where(inside, order[cols], self_index)
    return ClassMembers(members, inside & (members != self_index), size)


def _label_runs(labels: Tensor, ref_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``order`` sorts the reference labels (stably); each query label's run in that order starts at ``start`` and
    has ``size`` rows (0 when the label is absent)."""
    order = torch.argsort(ref_labels, stable=True)
    ordered = ref_labels[order].contiguous()
    start = torch.searchsorted(ordered, labels.contiguous(), right=False)
    return order, start, torch.searchsorted(ordered, labels.contiguous(), right=True) - start


def ref_members(
    labels: Tensor, ref_labels: Tensor, *, self_index: Tensor | None = None, max_class_size: int | None = None
) -> ClassMembers:
    """[`ClassMembers`][tripletkit.functional.miners.ClassMembers] of query rows in a reference set: ``members[i]``
    lists the reference rows with i's label (padded with the first of them, or any row when there is none; the
    padding is never positive), ``positive[i]``
    marks the real ones except ``self_index[i]`` (the reference row that is i's own copy, -1 for none), and
    ``class_size[i]`` counts them (self included), so ``M − class_size[i]`` rows are i's negatives.

    ``max_class_size`` bounds the members per query (static shapes); otherwise it is read from the labels."""
    m = ref_labels.shape[0]
    device = labels.device
    order, start, size = _label_runs(labels, ref_labels)
    if max_class_size is None:
        max_class_size = max(1, int(size.max())) if size.numel() else 1
    elif not _static(labels) and size.numel() and int(size.max()) > max_class_size:
        raise ValueError(
            f"max_class_size={max_class_size} but a label has {int(size.max())} members in the reference set"
        )
    k = torch.arange(max_class_size, device=device)
    inside = k[None, :] < size[:, None]
    cols = torch.clamp(start[:, None] + k[None, :], max=max(m - 1, 0))
    members = torch.where(inside, order[cols], order[cols[:, :1]] if m else torch.zeros_like(cols))
    positive = inside
    if self_index is not None:
        positive = positive & (members != self_index[:, None])
    return ClassMembers(members, positive, size)


@torch.no_grad()
@outside_autocast
def mine_batch_hard_ref(
    x: Tensor,
    labels: Tensor,
    ref: Tensor,
    ref_labels: Tensor,
    *,
    distance: DistanceLike,
    self_index: Tensor | None = None,
) -> Triplets:
    """Batch-hard mining of query rows against a reference set (PML's ``ref_emb``): for every query row, the
    furthest reference row with its label and the nearest with another label. ``self_index[i]`` (a reference row,
    or -1) is i's own copy and never its positive. Indices of ``positive`` and ``negative`` point into ``ref``.
    Dense: one (N, M) distance matrix, no gradient."""
    d = distance.matrix(x, ref)
    same = labels[:, None] == ref_labels[None, :]
    pos_mask = same
    if self_index is not None:
        cols = torch.arange(ref.shape[0], device=x.device)
        pos_mask = same & (cols[None, :] != self_index[:, None])
    pos_val, positive = d.masked_fill(~pos_mask, float("-inf")).max(1)
    neg_val, negative = d.masked_fill(same, float("inf")).min(1)
    valid = (pos_val > float("-inf")) & (neg_val < float("inf"))
    return Triplets(torch.arange(x.shape[0], device=x.device), positive, negative, valid)


@torch.no_grad()
def semihard_triplets_ref(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    *,
    self_index: Tensor | None = None,
    max_class_size: int | None = None,
) -> Triplets:
    """[`semihard_triplets()`][tripletkit.functional.miners.semihard_triplets] of query rows against a reference set:
    ``dist`` is (N, M), indices of positives and negatives point into the reference set. Each query row's negative
    distances are sorted once and every pair finds its semi-hard negative by binary search: O(N·M·log M) time and
    O(N·M) memory."""
    n, m = dist.shape
    cm = ref_members(labels, ref_labels, self_index=self_index, max_class_size=max_class_size)
    neg = dist.masked_fill(labels[:, None] == ref_labels[None, :], float("inf"))
    sorted_neg, order = torch.sort(neg, dim=1, stable=True)
    num_neg = m - cm.class_size
    d_ap = dist.gather(1, cm.members)
    slot = torch.searchsorted(sorted_neg.contiguous(), d_ap.contiguous(), right=True)
    found = slot < num_neg[:, None]
    last = (num_neg - 1).clamp_min(0)[:, None]
    slot = torch.where(found, slot, last.expand_as(slot))
    negative = order.gather(1, slot)
    valid = cm.positive & (num_neg > 0)[:, None]
    anchor = torch.arange(n, device=dist.device)[:, None].expand_as(negative)
    return Triplets(anchor.reshape(-1), cm.members.reshape(-1), negative.reshape(-1), valid.reshape(-1))


@torch.no_grad()
def random_triplets_ref(
    labels: Tensor,
    ref_labels: Tensor,
    *,
    self_index: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Triplets:
    """One uniformly random reference positive (never ``self_index``) and negative per query row."""
    n, m = labels.shape[0], ref_labels.shape[0]
    order, start, size = _label_runs(labels, ref_labels)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=labels.device)
    if self_index is None:
        self_slot = torch.full_like(start, -1)
    else:
        inside = (self_index >= 0) & (self_index < m)
        slot = rank[self_index.clamp(0, max(m - 1, 0))] - start
        self_slot = torch.where(inside & (slot >= 0) & (slot < size), slot, torch.full_like(slot, -1))
    has_self = self_slot >= 0
    where = generator.device if generator is not None else labels.device
    u = torch.rand((2, n), generator=generator, device=where, dtype=torch.float64).to(labels.device)
    choices = size - has_self.long()
    k = torch.minimum(torch.floor(u[0] * choices.clamp_min(1)).long(), (choices - 1).clamp_min(0))
    k = k + (has_self & (k >= self_slot)).long()
    positive = order[torch.clamp(start + k, max=max(m - 1, 0))]
    others = m - size
    j = torch.minimum(torch.floor(u[1] * others.clamp_min(1)).long(), (others - 1).clamp_min(0))
    negative = order[torch.where(j < start, j, j + size).clamp(max=max(m - 1, 0))]
    return Triplets(torch.arange(n, device=labels.device), positive, negative, (choices >= 1) & (others >= 1))


@torch.no_grad()
def batch_hard_triplets_factored(
    left: Tensor,
    right: Tensor,
    labels: Tensor,
    *,
    row_offset: Tensor | None = None,
    swap: bool = False,
    max_class_size: int | None = None,
    block_elements: int = 1 << 18,
    exact: tuple[Tensor, DistanceLike] | None = None,
) -> Triplets:
    """[`batch_hard_triplets()`][tripletkit.functional.miners.batch_hard_triplets] for a ranking given in factored form ``R = left @ right.T``, in row blocks.

    Each block of rows is computed and reduced while it is still in cache, and the class structure enters through
    [`class_members()`][tripletkit.functional.miners.class_members] (a gather for the positives, a scatter of +inf over the own class for the negatives), so
    the N×N ranking and label masks are never materialised: the work is one GEMM plus one min-reduction pass, and the
    extra memory O(block_elements + N·K). ``max_class_size`` as in [`class_members()`][tripletkit.functional.miners.class_members]; results do not depend on
    ``block_elements``. ``exact=(x, distance)`` with ``swap``: the hardest positive is chosen again on the exact
    paired distances of the class members (O(N·K·D)), so that tied hardest positives resolve to the smallest index
    in every dtype (the swap's value depends on which one is chosen; the rounded ranking can order exact ties either
    way).
    """
    n = left.shape[0]
    device = left.device
    cm = class_members(labels, max_class_size)
    rows = max(1, min(n, block_elements // max(n, 1)))
    pos_val = torch.empty(n, dtype=left.dtype, device=device)
    neg_val = torch.empty(n, dtype=left.dtype, device=device)
    pos_slot = torch.empty(n, dtype=torch.long, device=device)
    negative = torch.empty(n, dtype=torch.long, device=device)
    right_t = right.T.contiguous()
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = left[r0:r1] @ right_t
        members = cm.members[r0:r1]
        candidates = block.gather(1, members).masked_fill_(~cm.positive[r0:r1], float("-inf"))
        torch.max(candidates, 1, out=(pos_val[r0:r1], pos_slot[r0:r1]))
        block.scatter_(1, members, float("inf"))
        torch.min(block, 1, out=(neg_val[r0:r1], negative[r0:r1]))
    if swap and exact is not None:
        x, distance = exact
        k = cm.members.shape[1]
        d = distance.paired(x.repeat_interleave(k, 0), x.index_select(0, cm.members.reshape(-1))).view(n, k)
        # argmax returns the first maximum, and members ascend by index within a class: the smallest index wins
        pos_slot = d.masked_fill(~cm.positive, float("-inf")).argmax(1)
    positive = cm.members.gather(1, pos_slot[:, None]).squeeze(1)
    valid = (pos_val > float("-inf")) & (neg_val < float("inf"))
    return _hardest(positive, negative, neg_val, valid, row_offset, swap)


@torch.no_grad()
@outside_autocast
def mine_batch_hard(
    x: Tensor, labels: Tensor, *, distance: DistanceLike, swap: bool = False, max_class_size: int | None = None
) -> Triplets:
    """Batch-hard mining on embeddings with any distance.

    Fast path: blocked on the distance's factored ranking with the class structure from [`class_members()`][tripletkit.functional.miners.class_members]
    (needs ``max_class_size``, or reads it from the labels in eager mode). While ``torch.compile`` traces without a
    ``max_class_size``, or for a distance without factors, the dense masked path keeps every shape static.
    """
    factors = distance.ranking_factors(x) if hasattr(distance, "ranking_factors") else None
    if factors is not None and (max_class_size is not None or not _compiling()):
        left, right, offset = factors
        return batch_hard_triplets_factored(
            left,
            right,
            labels,
            row_offset=offset,
            swap=swap,
            max_class_size=max_class_size,
            exact=(x, distance) if swap else None,
        )
    ranking, offset = distance.ranking(x)
    return batch_hard_triplets(ranking, labels, row_offset=offset, swap=swap)


@torch.no_grad()
def semihard_triplets(
    dist: Tensor, labels: Tensor, *, max_class_size: int | None = None, block_elements: int = 1 << 22
) -> Triplets:
    """FaceNet's in-batch semi-hard negatives (Schroff et al. 2015), as TensorFlow Addons defines them.

    One triplet per anchor-positive pair ``(a, p)``, ``p ≠ a`` of the same class: the negative is the nearest
    negative *farther* than the positive (``d(a, n) > d(a, p)``, strictly), or the farthest negative when no negative
    is farther. Pairs of an anchor without negatives are invalid. Among equally distant candidates the smallest index
    wins.

    Args:
        dist: (N, N) distances (any row-wise monotone transform of them gives the same triplets).
        labels: (N,) integer labels.
        max_class_size: ``K`` for S×K batches, as in [`class_members()`][tripletkit.functional.miners.class_members].
        block_elements: (anchor, positive, candidate) entries evaluated at once (a memory knob).

    Returns ``N × max_class_size`` rows in anchor-major order (padding slots are invalid). Cost: O(N²·K) time in
    anchor blocks, O(N² + block_elements) memory, static shapes; the N×N×N triplet mask is never built.
    """
    n = dist.shape[0]
    cm = class_members(labels, max_class_size)
    k = cm.members.shape[1]
    # the own class (self included) is never a negative: the largest finite value there is "farther" than any
    # positive and is only chosen when no real negative is farther, which that value then reveals (a finite
    # sentinel, not inf: XLA's min of an all-inf row is the largest finite value, not inf)
    big = torch.finfo(dist.dtype).max
    neg = dist.scatter(1, cm.members, big)
    d_ap = dist.gather(1, cm.members)
    semi = torch.empty((n, k), dtype=torch.long, device=dist.device)
    found = torch.empty((n, k), dtype=torch.bool, device=dist.device)
    rows = max(1, block_elements // max(1, k * n))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        cand = neg[r0:r1, None, :]
        val, idx = torch.where(cand > d_ap[r0:r1, :, None], cand, big).min(2)
        semi[r0:r1], found[r0:r1] = idx, val < big
    farthest = neg.masked_fill(neg == big, -big).max(1).indices
    negative = torch.where(found, semi, farthest[:, None])
    valid = cm.positive & (cm.class_size < n)[:, None]
    anchor = torch.arange(n, device=dist.device)[:, None].expand_as(negative)
    return Triplets(anchor.reshape(-1), cm.members.reshape(-1), negative.reshape(-1), valid.reshape(-1))


def _random_other_member(sc: _SortedClasses, rows: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """A uniformly random member of each row's class other than the row itself (u: uniforms in [0, 1))."""
    start, size = sc.start[rows], sc.size[rows]
    k = torch.floor(u * (size - 1).clamp_min(1)).long()
    k = k + (k >= sc.rank[rows] - start).long()  # skip the row's own slot
    k = torch.minimum(k, (size - 1).clamp_min(0))
    return sc.order[start + k], size >= 2


def _random_non_member(sc: _SortedClasses, rows: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """A uniformly random sample of another class than each row's: slot m of the sorted order with the row's own
    run cut out."""
    n = sc.order.shape[0]
    start, size = sc.start[rows], sc.size[rows]
    others = n - size
    m = torch.minimum(torch.floor(u * others.clamp_min(1)).long(), (others - 1).clamp_min(0))
    slot = torch.where(m < start, m, m + size).clamp(max=n - 1)
    return sc.order[slot], others >= 1


@torch.no_grad()
def random_triplets(labels: Tensor, *, generator: torch.Generator | None = None) -> Triplets:
    """One uniformly random positive and one uniformly random negative per anchor (the random-triplet baseline).

    O(N log N) time and O(N) memory (a label sort, no N×N mask), static shapes."""
    n = labels.shape[0]
    sc = _sorted_classes(labels)
    rows = torch.arange(n, device=labels.device)
    # drawn where the generator lives (the CPU for an XLA batch: XLA has no torch.Generator), then moved
    where = generator.device if generator is not None else labels.device
    u = torch.rand((2, n), generator=generator, device=where, dtype=torch.float64).to(labels.device)
    positive, has_pos = _random_other_member(sc, rows, u[0])
    negative, has_neg = _random_non_member(sc, rows, u[1])
    return Triplets(rows, positive, negative, has_pos & has_neg)


def batch_all_triplet_count(labels: Tensor) -> Tensor:
    """Number of valid triplets, ``Σ_a #pos(a)·#neg(a) = Σ_c n_c (n_c − 1)(N − n_c)``, as a 0-d int64 tensor."""
    positive_mask, negative_mask = label_masks(labels)
    return (positive_mask.sum(1) * negative_mask.sum(1)).sum()


def iter_batch_all_triplets(labels: Tensor, *, max_triplets_per_block: int = 1 << 20) -> Iterator[Triplets]:
    """Yield every valid triplet as explicit index blocks, anchors in order (for inspection and tests).

    Memory is bounded by ``max_triplets_per_block`` plus one anchor's triplets; this is data-dependent
    (eager only), unlike the losses, which never list the triplets.
    """
    positive_mask, negative_mask = label_masks(labels)
    blocks: list[tuple[Tensor, Tensor, Tensor]] = []
    size = 0
    for a in range(labels.shape[0]):
        pos = torch.nonzero(positive_mask[a]).flatten()
        neg = torch.nonzero(negative_mask[a]).flatten()
        if pos.numel() == 0 or neg.numel() == 0:
            continue
        p = pos.repeat_interleave(neg.numel())
        n = neg.repeat(pos.numel())
        blocks.append((torch.full_like(p, a), p, n))
        size += p.numel()
        if size >= max_triplets_per_block:
            yield _stack_blocks(blocks)
            blocks, size = [], 0
    if blocks:
        yield _stack_blocks(blocks)


def batch_all_triplets_ref(labels: Tensor, ref_labels: Tensor, *, self_index: Tensor | None = None) -> Triplets:
    """Every (query a, reference p, reference n) with ``label[a] = ref_label[p] ≠ ref_label[n]`` and
    ``p ≠ self_index[a]``, listed explicitly (for inspection; the losses never list them)."""
    same = labels[:, None] == ref_labels[None, :]
    pos = same.clone()
    if self_index is not None:
        pos &= torch.arange(ref_labels.shape[0], device=labels.device)[None, :] != self_index[:, None]
    a, p, n = torch.nonzero(pos[:, :, None] & ~same[:, None, :], as_tuple=True)
    return Triplets(a, p, n, torch.ones_like(a, dtype=torch.bool))


def _stack_blocks(blocks: list[tuple[Tensor, Tensor, Tensor]]) -> Triplets:
    a, p, n = (torch.cat(parts) for parts in zip(*blocks))
    return Triplets(a, p, n, torch.ones_like(a, dtype=torch.bool))


@torch.no_grad()
def mine_offline(
    bank: Tensor,
    labels: Tensor,
    *,
    distance_matrix: Callable[[Tensor, Tensor], Tensor],
    anchors: Tensor | None = None,
    positive: str = "hardest",
    negative: str = "hardest",
    margin: float = 0.2,
    chunk_size: int = 2048,
    generator: torch.Generator | None = None,
) -> Triplets:
    """Mine one triplet per anchor from a whole bank of descriptors, in chunks.

    Args:
        bank: (M, D) descriptors of the whole dataset (or any memory bank).
        labels: (M,) integer labels.
        distance_matrix: ``f(x, y) -> (len(x), len(y))`` distances (e.g. ``euclidean_matrix``).
        anchors: indices into the bank to mine for (default: every row).
        positive: ``"hardest"`` (the furthest positive in the bank) or ``"random"`` (uniform over the positives).
        negative: ``"hardest"`` (the nearest negative in the bank) or ``"semihard"`` (FaceNet, Schroff et al. 2015:
            the nearest negative with ``d(a, p) < d(a, n) < d(a, p) + margin``; when an anchor has none, its hardest
            negative is used instead, so every valid anchor gets a triplet).
        margin: the semi-hard band width.
        chunk_size: query rows × bank rows per distance block; peak memory is O(chunk_size²), never O(M²).
        generator: for ``positive="random"``.

    Returns:
        [`Triplets`][tripletkit.functional.miners.Triplets] with one row per anchor, indices into the bank; anchors whose class has a single member or
        covers the whole bank are ``valid = False``.
    """
    if positive not in ("hardest", "random"):
        raise ValueError(f"positive must be 'hardest' or 'random', got {positive!r}")
    if negative not in ("hardest", "semihard"):
        raise ValueError(f"negative must be 'hardest' or 'semihard', got {negative!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    m = bank.shape[0]
    device = bank.device
    if anchors is None:
        anchors = torch.arange(m, device=device)
    if not isinstance(anchors, Tensor) or anchors.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8):
        # a float index would be truncated silently (3.7 → 3)
        raise TypeError(f"anchors must be an integer index tensor, got {getattr(anchors, 'dtype', type(anchors))}")
    anchors = anchors.to(device=device, dtype=torch.long)
    if anchors.dim() != 1:
        raise ValueError(f"anchors must be 1-D indices, got shape {tuple(anchors.shape)}")
    if anchors.numel() and (int(anchors.min()) < 0 or int(anchors.max()) >= m):
        raise ValueError(f"anchors must index the bank's {m} rows")
    n_anchors = anchors.numel()
    dtype = bank.dtype
    inf = float("inf")

    if positive == "random":
        pos_index, pos_ok = _random_positive_sorted(labels, anchors, generator)
        pos_dist = torch.full((n_anchors,), -inf, dtype=dtype, device=device)
    else:
        pos_index = torch.zeros(n_anchors, dtype=torch.long, device=device)
        pos_dist = torch.full((n_anchors,), -inf, dtype=dtype, device=device)
    neg_index = torch.zeros(n_anchors, dtype=torch.long, device=device)
    neg_dist = torch.full((n_anchors,), inf, dtype=dtype, device=device)

    def blocks() -> Iterator[tuple[slice, slice, Tensor, Tensor, Tensor]]:
        for q0 in range(0, n_anchors, chunk_size):
            qs = slice(q0, min(q0 + chunk_size, n_anchors))
            q_idx = anchors[qs]
            for b0 in range(0, m, chunk_size):
                bs = slice(b0, min(b0 + chunk_size, m))
                d = distance_matrix(bank[q_idx], bank[bs])
                same = labels[q_idx][:, None] == labels[bs][None, :]
                not_self = q_idx[:, None] != torch.arange(bs.start, bs.stop, device=device)[None, :]
                yield qs, bs, d, same & not_self, ~same

    # Pass 1: hardest positive (or the distance to the random positive) and hardest negative.
    for qs, bs, d, pos_m, neg_m in blocks():
        if positive == "hardest":
            val, idx = d.masked_fill(~pos_m, -inf).max(1)
            better = val > pos_dist[qs]
            pos_dist[qs] = torch.where(better, val, pos_dist[qs])
            pos_index[qs] = torch.where(better, idx + bs.start, pos_index[qs])
        else:
            hit = pos_index[qs][:, None] == torch.arange(bs.start, bs.stop, device=device)[None, :]
            val = d.masked_fill(~hit, -inf).max(1).values
            pos_dist[qs] = torch.maximum(pos_dist[qs], val)
        val, idx = d.masked_fill(~neg_m, inf).min(1)
        better = val < neg_dist[qs]
        neg_dist[qs] = torch.where(better, val, neg_dist[qs])
        neg_index[qs] = torch.where(better, idx + bs.start, neg_index[qs])

    valid = (neg_dist < inf) & (pos_dist > -inf)
    if positive == "random":
        valid &= pos_ok

    if negative == "semihard":
        # Pass 2: nearest negative inside (d_ap, d_ap + margin); falls back to the hardest negative.
        semi_index = neg_index.clone()
        semi_dist = torch.full((n_anchors,), inf, dtype=dtype, device=device)
        for qs, bs, d, _, neg_m in blocks():
            lo = pos_dist[qs][:, None]
            band = neg_m & (d > lo) & (d < lo + margin)
            val, idx = d.masked_fill(~band, inf).min(1)
            better = val < semi_dist[qs]
            semi_dist[qs] = torch.where(better, val, semi_dist[qs])
            semi_index[qs] = torch.where(better, idx + bs.start, semi_index[qs])
        neg_index = semi_index

    return Triplets(anchors, pos_index, neg_index, valid)


def _random_positive_sorted(
    labels: Tensor, anchors: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """A uniformly random other member of each anchor's class, in O(M log M) via a label sort."""
    u = torch.rand(anchors.shape, generator=generator, device=labels.device, dtype=torch.float64)
    return _random_other_member(_sorted_classes(labels), anchors, u)
