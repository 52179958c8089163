from __future__ import annotations

import pytest

from tripletkit import DISTANCES, LOSSES, MARGINS, MINERS, BatchHardLoss, HingeMargin, Registry, UnknownNameError


def test_register_build_list():
    reg: Registry = Registry("widget")

    @reg.register()
    class Plain:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    @reg.register("fancy_widget")
    def make_fancy(size: int = 2) -> Plain:
        return Plain(size)

    assert reg.list() == ["Plain", "fancy_widget"]
    assert reg.list(filter="*fancy*") == ["fancy_widget"]
    assert reg.build("Plain").size == 1
    assert reg.build("fancy_widget", size=5).size == 5
    assert reg.build({"name": "Plain", "size": 3}).size == 3
    assert reg.build({"name": "Plain", "size": 3}, size=4).size == 4  # keyword arguments override the dict
    built = Plain(7)
    assert reg.build(built) is built
    assert "Plain" in reg and "nope" not in reg and len(reg) == 2


def test_errors_list_valid_names():
    reg: Registry = Registry("widget")
    reg.register("alpha")(dict)
    reg.register("beta")(dict)
    with pytest.raises(UnknownNameError) as info:
        reg.build("alpah")
    assert str(info.value) == "unknown widget 'alpah'; valid names: alpha, beta (did you mean 'alpha'?)"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(list)
    reg.register("alpha", override=True)(list)
    assert reg.get("alpha") is list
    with pytest.raises(ValueError, match="needs a 'name' key"):
        reg.build({"size": 1})
    with pytest.raises(TypeError, match="keyword arguments"):
        reg.build([], size=1)
    with pytest.raises(TypeError, match="name must be a str"):
        reg.get(3)


def test_builtin_registries():
    assert DISTANCES.list() == ["cosine", "euclidean", "sqeuclidean"]
    assert MARGINS.list() == ["hinge", "softplus"]
    assert MINERS.list() == ["batch_all", "batch_hard", "offline", "random", "semihard"]
    assert LOSSES.list(filter="batch_*") == ["batch_all", "batch_hard", "batch_semihard"]
    assert set(LOSSES.list()) == {"batch_all", "batch_hard", "batch_semihard", "hardnet", "triplet"}
    loss = LOSSES.build(
        {"name": "batch_hard", "margin_fn": {"name": "hinge", "margin": 0.3}, "distance": "sqeuclidean"}
    )
    assert isinstance(loss, BatchHardLoss) and loss.margin == 0.3
    assert MARGINS.build("hinge") == HingeMargin(0.2)


def test_margin_given_twice_is_an_error():
    with pytest.raises(ValueError, match="set the margin on the margin function"):
        BatchHardLoss(margin=0.5, margin_fn=HingeMargin(0.3))
    assert BatchHardLoss(margin=0.3, margin_fn=HingeMargin(0.3)).margin == 0.3


def test_built_objects_of_the_wrong_kind_are_rejected_at_construction():
    from tripletkit import BatchHardLoss, CollapseMonitor, SteppedBatchScheduler, TripletLoss

    with pytest.raises(TypeError, match="margin function"):
        SteppedBatchScheduler([(2, 2)], margin_fn=3)
    with pytest.raises(TypeError, match="distance"):
        BatchHardLoss(distance=5)
    with pytest.raises(TypeError, match="margin function"):
        BatchHardLoss(margin_fn=object())
    with pytest.raises(TypeError, match="miner"):
        TripletLoss(miner=5)
    with pytest.raises(TypeError, match="margin function"):
        CollapseMonitor(3)


def test_each_registered_class_knows_its_one_name():
    from tripletkit import DISTANCES, MARGINS, MINERS

    for reg in (DISTANCES, MARGINS, MINERS):
        for name in reg:
            assert reg.get(name).registry_name == name
