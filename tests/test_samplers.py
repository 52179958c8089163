from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from tripletkit import SAMPLERS, SymmetricSampler


@st.composite
def datasets(draw):
    n_classes = draw(st.integers(2, 25))
    sizes = draw(st.lists(st.integers(1, 9), min_size=n_classes, max_size=n_classes))
    ids = draw(st.lists(st.integers(-1000, 1000), min_size=n_classes, max_size=n_classes, unique=True))
    labels = np.repeat(ids, sizes)
    perm = np.random.default_rng(draw(st.integers(0, 100))).permutation(len(labels))
    return labels[perm]


def _usable(labels, K, policy):
    ids, counts = np.unique(labels, return_counts=True)
    return set(ids[counts >= (K if policy == "skip" else 2)].tolist())


@given(
    labels=datasets(),
    S=st.integers(1, 6),
    K=st.integers(2, 5),
    policy=st.sampled_from(["skip", "replace"]),
    seed=st.integers(0, 50),
)
def test_batches_are_s_by_k_and_cover_every_usable_class(labels, S, K, policy, seed):
    usable = _usable(labels, K, policy)
    if S > len(usable):
        with pytest.raises(ValueError, match=f"S={S} is larger than the number of usable classes"):
            SymmetricSampler(labels, S, K, seed=seed, small_classes=policy)
        return
    sampler = SymmetricSampler(labels, S, K, seed=seed, small_classes=policy)
    seen: set[int] = set()
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(usable) // S)
    for batch in batches:
        assert len(batch) == S * K
        batch_labels = labels[batch].reshape(S, K)
        # class-major: each row is one class, all rows different classes
        assert (batch_labels == batch_labels[:, :1]).all()
        assert len(set(batch_labels[:, 0].tolist())) == S
        for row, idx in zip(batch_labels[:, 0], np.asarray(batch).reshape(S, K)):
            assert int(row) in usable
            size = int((labels == row).sum())
            if size >= K:
                assert len(set(idx.tolist())) == K  # no repeated index unless the policy allows it
            else:
                assert policy == "replace" and set(idx.tolist()) == set(np.flatnonzero(labels == row).tolist())
        seen.update(batch_labels[:, 0].tolist())
    assert seen == usable


@given(labels=datasets(), world=st.integers(2, 4), seed=st.integers(0, 20))
def test_shards_are_disjoint_and_equal(labels, world, seed):
    usable = _usable(labels, 2, "skip")
    if len(usable) < 2:
        return
    single = list(SymmetricSampler(labels, 2, 2, seed=seed))
    shards = [list(SymmetricSampler(labels, 2, 2, seed=seed, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == len(single) // world
    # the shards are the common sequence dealt round-robin: disjoint batches, same batches as one process
    for r, shard in enumerate(shards):
        assert shard == single[r : len(shards[0]) * world : world]


def test_deterministic_and_epochs_differ():
    labels = np.repeat(np.arange(30), 4)
    a = SymmetricSampler(labels, 4, 2, seed=3)
    b = SymmetricSampler(labels, 4, 2, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(2)
    assert list(a) != list(b)
    assert list(SymmetricSampler(labels, 4, 2, seed=4)) != list(SymmetricSampler(labels, 4, 2, seed=3))


def test_shape_change_mid_epoch_still_covers_every_class():
    labels = np.repeat(np.arange(40), 8)
    sampler = SymmetricSampler(labels, 4, 2, seed=0)
    seen = set()
    shapes = []
    for i, batch in enumerate(sampler):
        shapes.append(len(batch))
        seen.update(labels[batch].tolist())
        if i == 2:
            sampler.set_batch_shape(8, 4)
    assert shapes[:3] == [8, 8, 8] and set(shapes[3:]) == {32}
    assert seen == set(range(40))


def test_resume_mid_epoch_gives_the_same_batches():
    labels = np.repeat(np.arange(50), 5)
    full = list(SymmetricSampler(labels, 4, 3, seed=9))
    sampler = SymmetricSampler(labels, 4, 3, seed=9)
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    state = sampler.state_dict()
    fresh = SymmetricSampler(labels, 4, 3, seed=9)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full


def test_dataloader_integration():
    labels = torch.arange(20).repeat_interleave(6)
    data = TensorDataset(torch.randn(120, 3), labels)
    loader = DataLoader(data, batch_sampler=SAMPLERS.build("symmetric", labels=labels, S=5, K=3, seed=1))
    sizes = [y.shape[0] for _, y in loader]
    assert sizes == [15] * 4


def test_errors():
    labels = np.repeat(np.arange(5), [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="K must be >= 2"):
        SymmetricSampler(labels, 2, 1)
    with pytest.raises(ValueError, match=r"S=4 is larger than the number of usable classes at K=4 \(2 of 5"):
        SymmetricSampler(labels, 4, 4)
    # singletons are never usable, even with replacement
    assert SymmetricSampler(labels, 4, 4, small_classes="replace").usable_classes().tolist() == [1, 2, 3, 4]
    with pytest.raises(TypeError, match="labels must be integers"):
        SymmetricSampler(np.array([0.0, 1.0]), 1, 2)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        SymmetricSampler(np.zeros((2, 2), dtype=int), 1, 2)
    with pytest.raises(ValueError, match="small_classes must be one of"):
        SymmetricSampler(labels, 1, 2, small_classes="pad")
    with pytest.raises(ValueError, match="rank must be < world_size"):
        SymmetricSampler(labels, 1, 2, rank=2, world_size=2)


@st.composite
def grouped(draw):
    """Labels with a group per class (one group id for all of a class's members), shuffled."""
    n_groups = draw(st.integers(1, 5))
    class_groups = draw(st.lists(st.integers(0, n_groups - 1), min_size=2, max_size=40))
    sizes = draw(st.lists(st.integers(2, 5), min_size=len(class_groups), max_size=len(class_groups)))
    labels = np.repeat(np.arange(len(class_groups)), sizes)
    groups = np.repeat(np.asarray(class_groups) * 7 - 3, sizes)  # any integer ids
    perm = np.random.default_rng(draw(st.integers(0, 100))).permutation(len(labels))
    return labels[perm], groups[perm]


@given(data=grouped(), S=st.integers(1, 6), seed=st.integers(0, 50))
def test_groups_keep_each_batch_in_its_group_and_cover_every_class(data, S, seed):
    labels, groups = data
    if S > len(np.unique(labels)):
        return
    sampler = SymmetricSampler(labels, S, 2, seed=seed, groups=groups)
    batches = list(sampler)
    class_group = {int(c): int(g) for c, g in zip(labels, groups)}
    members: dict[int, set[int]] = {}
    for c, g in class_group.items():
        members.setdefault(g, set()).add(c)
    # each group is cut into runs of S and no batch crosses a run: ceil(n / S) batches per group
    assert len(batches) == len(sampler) == sum(-(-len(m) // S) for m in members.values())
    seen: set[int] = set()
    for b in batches:
        classes = labels[b][::2].tolist()  # class-major, K = 2
        assert len(set(classes)) == S and all((labels[b].reshape(S, 2) == np.asarray(classes)[:, None]).ravel())
        own = members[class_group[classes[0]]]
        if len(own) >= S:
            assert set(classes) <= own  # completed, if short, from its own group
        else:
            assert own <= set(classes)  # a group smaller than S: all of it, and others to make S
        seen.update(classes)
    assert seen == set(class_group)


def test_groups_resume_mid_epoch_and_refuse_a_class_across_groups():
    labels = np.repeat(np.arange(60), 3)
    groups = np.repeat(np.arange(60) % 4, 3)
    full = list(SymmetricSampler(labels, 5, 3, seed=2, groups=groups))
    sampler = SymmetricSampler(labels, 5, 3, seed=2, groups=groups)
    it = iter(sampler)
    head = [next(it) for _ in range(4)]
    fresh = SymmetricSampler(labels, 5, 3, seed=2, groups=groups)
    fresh.load_state_dict(sampler.state_dict())
    assert head + list(fresh) == full
    assert all(len(set(groups[b].tolist())) == 1 for b in full)  # 15 classes per group, runs of 5
    bad = groups.copy()
    bad[7] = 9  # index 7 is class 2's second member
    with pytest.raises(ValueError, match=r"class 2 spans groups 2 and 9 \(index 7\)"):
        SymmetricSampler(labels, 5, 3, groups=bad)
    with pytest.raises(ValueError, match="groups has 3 entries, labels has 180"):
        SymmetricSampler(labels, 5, 3, groups=[0, 1, 2])
    with pytest.raises(TypeError, match="groups must be integers"):
        SymmetricSampler(labels, 5, 3, groups=np.zeros(180))
    with pytest.raises(ValueError, match="group_run must be >= 1"):
        SymmetricSampler(labels, 5, 3, groups=groups, group_run=0)
