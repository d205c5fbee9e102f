"""Expert subsets: superclass partitions, explicit groups, validation messages, CIFAR-100 metadata."""

from __future__ import annotations

import numpy as np
import pytest

from ask_the_expert.method.cifar100_classes import (
    FINE_CLASSES,
    FINE_TO_COARSE,
    NUM_CLASSES,
    NUM_SUPERCLASSES,
    SUPERCLASSES,
)
from ask_the_expert.method.subsets import (
    class_to_expert,
    membership_matrix,
    parse_partition_spec,
    partition_from_superclasses,
    resolve_superclasses,
    superclass_partition,
    validate_partition,
)
from ask_the_expert.utils.errors import PartitionError, SuiteError


def test_cifar100_tables_are_consistent():
    assert len(FINE_CLASSES) == NUM_CLASSES == 100 and len(set(FINE_CLASSES)) == 100
    assert len(SUPERCLASSES) == NUM_SUPERCLASSES == 20
    assert FINE_TO_COARSE.shape == (100,) and FINE_TO_COARSE.dtype == np.int64
    assert np.all(np.bincount(FINE_TO_COARSE, minlength=20) == 5)
    # Spot checks against the standard CIFAR-100 hierarchy.
    name = dict(zip(FINE_CLASSES, FINE_TO_COARSE.tolist(), strict=True))
    assert SUPERCLASSES[name["apple"]] == "fruit_and_vegetables"
    assert SUPERCLASSES[name["aquarium_fish"]] == "fish"
    assert SUPERCLASSES[name["whale"]] == "aquatic_mammals"
    assert SUPERCLASSES[name["worm"]] == "non-insect_invertebrates"
    assert SUPERCLASSES[name["rocket"]] == "vehicles_2"
    assert SUPERCLASSES[name["bicycle"]] == "vehicles_1"
    assert FINE_CLASSES[0] == "apple" and FINE_CLASSES[-1] == "worm"


def test_default_partition_is_one_superclass_per_expert():
    subsets = superclass_partition()
    assert len(subsets) == 20 and all(len(s) == 5 for s in subsets)
    assert subsets[0] == [4, 30, 55, 72, 95]  # aquatic mammals: beaver, dolphin, otter, seal, whale
    assert all(s == sorted(s) for s in subsets)
    validate_partition(subsets)
    owner = class_to_expert(subsets)
    assert np.array_equal(owner, FINE_TO_COARSE)


@pytest.mark.parametrize(("g", "n_experts"), [(1, 20), (2, 10), (4, 5), (5, 4), (10, 2), (20, 1)])
def test_groups_per_expert(g, n_experts):
    subsets = superclass_partition(g)
    assert len(subsets) == n_experts and all(len(s) == 5 * g for s in subsets)
    owner = class_to_expert(subsets)
    assert np.array_equal(owner, FINE_TO_COARSE // g)  # consecutive superclasses


@pytest.mark.parametrize("g", [3, 0, -2, 7])
def test_groups_per_expert_must_divide_20(g):
    with pytest.raises(PartitionError, match=r"\[1, 2, 4, 5, 10, 20\]"):
        superclass_partition(g)


def test_explicit_groups_by_name_and_index():
    groups = [["fish", "aquatic_mammals"], [2, "TREES"], *[[s] for s in range(3, 17)], [18, 19]]
    subsets = partition_from_superclasses(groups)
    assert len(subsets) == 17
    assert subsets[0] == sorted(superclass_partition()[0] + superclass_partition()[1])
    assert subsets[1] == sorted(superclass_partition()[2] + superclass_partition()[17])
    assert class_to_expert(subsets)[FINE_CLASSES.index("oak_tree")] == 1


def test_explicit_groups_must_cover_each_superclass_once():
    groups = [[s] for s in range(19)] + [[0]]  # 19 (vehicles_2) missing, 0 twice
    with pytest.raises(PartitionError) as err:
        partition_from_superclasses(groups)
    msg = str(err.value)
    assert "19=vehicles_2" in msg and "0=aquatic_mammals (groups [0, 19])" in msg


def test_unknown_superclass_lists_valid_names():
    with pytest.raises(PartitionError) as err:
        resolve_superclasses(["fish", "dragons", 25])
    msg = str(err.value)
    assert "'dragons'" in msg and "25" in msg
    assert "0=aquatic_mammals" in msg and "19=vehicles_2" in msg
    assert isinstance(err.value, SuiteError) and isinstance(err.value, ValueError)


def test_resolve_superclasses_forms():
    assert resolve_superclasses(["people", 3, "7", np.int64(1)]) == [14, 3, 7, 1]
    assert resolve_superclasses("flowers") == [2]
    with pytest.raises(PartitionError):
        resolve_superclasses([True])


def test_validate_partition_names_missing_and_doubled_classes():
    subsets = [[0, 1, 2], [2, 3], [], [4, 101]]
    with pytest.raises(PartitionError) as err:
        validate_partition(subsets, num_classes=6)
    msg = str(err.value)
    assert "empty subsets for experts 2" in msg
    assert "101 (expert 3)" in msg
    assert "2 in experts [0, 1]" in msg
    assert "classes in no expert: 5" in msg


def test_validate_partition_uses_cifar_names():
    subsets = superclass_partition()
    subsets[1] = subsets[1][1:]  # drop aquarium_fish (class 1)
    with pytest.raises(PartitionError, match=r"1 \(aquarium_fish\)"):
        validate_partition(subsets)


def test_membership_matrix():
    m = membership_matrix([[0, 2], [1, 3]], num_classes=4)
    assert m.dtype == bool
    assert m.tolist() == [[True, False, True, False], [False, True, False, True]]
    full = membership_matrix(superclass_partition())
    assert full.shape == (20, 100) and np.all(full.sum(axis=0) == 1)


def test_parse_partition_spec():
    default = superclass_partition()
    assert parse_partition_spec(None) == default
    assert parse_partition_spec("superclass") == default
    assert parse_partition_spec(1) == default
    assert parse_partition_spec(2) == superclass_partition(2)
    assert parse_partition_spec("4") == superclass_partition(4)
    explicit = [list(range(10)), list(range(10, 20))]
    assert parse_partition_spec(explicit) == superclass_partition(10)
    for bad in ("clusters", 3, [], [1, 2]):
        with pytest.raises(PartitionError):
            parse_partition_spec(bad)
