"""Confusion-aware partitions: planted blocks, balance, swap refinement, hit rate, save/load."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from ask_the_expert.method.confusion_partition import (
    confusion_partition,
    refine_by_swaps,
    routing_hit_rate,
    soft_confusion,
    within_group_mass,
)
from ask_the_expert.method.router import top_k
from ask_the_expert.method.subsets import (
    class_to_expert,
    load_partition,
    parse_partition_spec,
    save_partition,
    validate_partition,
)
from ask_the_expert.utils.errors import PartitionError, RoutingError


def _random_confusion(c, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((c, c)) ** 4
    m[np.arange(c), np.arange(c)] += c / 4
    return m / m.sum(axis=1, keepdims=True)


def _swap(subsets, i, j):
    out = [list(s) for s in subsets]
    for s in out:
        for pos, c in enumerate(s):
            s[pos] = j if c == i else i if c == j else c
    return out


def _brute_mass(confusion, subsets):
    m = confusion / confusion.sum(axis=1, keepdims=True)
    a = (m + m.T) / 2
    owner = {c: g for g, s in enumerate(subsets) for c in s}
    inside = total = 0.0
    for i, j in itertools.permutations(range(len(m)), 2):
        total += a[i, j]
        inside += a[i, j] * (owner[i] == owner[j])
    return inside / total


def test_soft_confusion_brute_force():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=40)
    labels = rng.integers(0, 5, 40)  # class 5 absent
    conf = soft_confusion(probs, labels)
    for c in range(6):
        rows = [probs[i] for i in range(40) if labels[i] == c]
        expected = np.mean(rows, axis=0) if rows else np.zeros(6)
        assert np.allclose(conf[c], expected, atol=1e-12)
    assert np.allclose(conf[:5].sum(axis=1), 1.0)
    with pytest.raises(PartitionError, match="num_classes"):
        soft_confusion(probs, labels, num_classes=7)
    with pytest.raises(PartitionError, match="labels"):
        soft_confusion(probs, labels + 2)


def test_within_group_mass_brute_force_and_extremes():
    conf = _random_confusion(9, 1)
    subsets = [[0, 4, 8], [1, 2], [3, 5, 6, 7]]
    assert within_group_mass(conf, subsets) == pytest.approx(_brute_mass(conf, subsets), abs=1e-12)
    assert within_group_mass(conf, [list(range(9))]) == pytest.approx(1.0)
    assert within_group_mass(conf, [[c] for c in range(9)]) == 0.0
    assert math.isnan(within_group_mass(np.eye(3), [[0, 1], [2]]))
    with pytest.raises(PartitionError):
        within_group_mass(conf, [[0, 1], [2]])  # not a partition of the 9 classes


def test_planted_blocks_are_recovered_exactly():
    rng = np.random.default_rng(4)
    c, size = 12, 4
    block = np.repeat(np.arange(3), size)
    conf = np.where(block[:, None] == block[None, :], 0.05 + 0.1 * rng.random((c, c)), 0.01 * rng.random((c, c)))
    conf[np.arange(c), np.arange(c)] = 1.0
    perm = rng.permutation(c)  # class perm[i] plays planted class i
    shuffled = np.empty_like(conf)
    shuffled[np.ix_(perm, perm)] = conf
    planted = {frozenset(perm[block == g].tolist()) for g in range(3)}
    for seed in range(3):
        groups = confusion_partition(shuffled, 3, seed=seed)
        assert {frozenset(g) for g in groups} == planted


@pytest.mark.parametrize("num_groups", [4, 5, 7])
def test_balance_and_coverage_on_random_confusions(num_groups):
    conf = _random_confusion(100, num_groups)
    groups = confusion_partition(conf, num_groups, seed=1)
    validate_partition(groups, 100)
    sizes = sorted(len(g) for g in groups)
    assert len(groups) == num_groups and sizes[-1] - sizes[0] <= 1
    if 100 % num_groups == 0:
        assert sizes[0] == sizes[-1]
    assert all(g == sorted(g) for g in groups)
    # Better than contiguous blocks of the same sizes (a partition blind to the confusion).
    start, naive = 0, []
    for n in sizes:
        naive.append(list(range(start, start + n)))
        start += n
    assert within_group_mass(conf, groups) > within_group_mass(conf, naive)


def test_deterministic_for_a_seed():
    conf = _random_confusion(40, 9)
    assert confusion_partition(conf, 6, seed=3) == confusion_partition(conf, 6, seed=3)
    for seed in (0, 1):
        validate_partition(confusion_partition(conf, 6, seed=seed), 40)


def test_edge_group_counts_and_refusals():
    conf = _random_confusion(5, 0)
    assert confusion_partition(conf, 1) == [[0, 1, 2, 3, 4]]
    assert confusion_partition(conf, 5) == [[0], [1], [2], [3], [4]]
    for bad in (0, 6, 2.0):
        with pytest.raises(PartitionError, match="num_groups"):
            confusion_partition(conf, bad)
    with pytest.raises(PartitionError, match="square"):
        confusion_partition(np.ones((3, 4)), 2)
    with pytest.raises(PartitionError, match=">= 0"):
        confusion_partition(-np.ones((3, 3)), 2)


def test_swaps_never_decrease_mass_and_leave_a_swap_optimum():
    conf = _random_confusion(16, 2)
    rng = np.random.default_rng(5)
    for _ in range(5):
        order = rng.permutation(16)
        start = [sorted(order[:6].tolist()), sorted(order[6:11].tolist()), sorted(order[11:].tolist())]
        refined = refine_by_swaps(conf, start)
        validate_partition(refined, 16)
        assert sorted(len(g) for g in refined) == sorted(len(g) for g in start)
        mass = within_group_mass(conf, refined)
        assert mass >= within_group_mass(conf, start) - 1e-12
        for i, j in itertools.combinations(range(16), 2):
            assert within_group_mass(conf, _swap(refined, i, j)) <= mass + 1e-9
    learned = confusion_partition(conf, 4, seed=0)
    best = within_group_mass(conf, learned)
    for i, j in itertools.combinations(range(16), 2):
        assert within_group_mass(conf, _swap(learned, i, j)) <= best + 1e-9


def test_routing_hit_rate_brute_force():
    rng = np.random.default_rng(3)
    n, c = 300, 12
    probs = rng.dirichlet(np.full(c, 0.3), size=n)
    labels = rng.integers(0, c, n)
    subsets = [[0, 5, 7], [1, 2, 3, 11], [4, 6, 8, 9, 10]]
    owner = class_to_expert(subsets, c)
    for k in (1, 3):
        classes, p = top_k(probs, k)
        hits = 0
        for i in range(n):
            scores = [sum(p[i, t] for t in range(k) if owner[classes[i, t]] == j) for j in range(3)]
            best = max(scores)
            top1 = owner[classes[i, 0]]
            chosen = top1 if scores[top1] == best else scores.index(best)
            hits += chosen == owner[labels[i]]
        assert routing_hit_rate(classes, p, labels, owner, 3) == pytest.approx(hits / n, abs=1e-15)
    with pytest.raises(RoutingError, match="labels"):
        routing_hit_rate(classes, p, labels[:-1], owner, 3)


def test_learned_partition_raises_hit_rate_over_confusion_blind_groups():
    rng = np.random.default_rng(8)
    c, n = 12, 3000
    block = rng.permutation(np.repeat(np.arange(3), 4))
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    # G mostly confuses a class with the other members of its hidden block.
    same = block[None, :] == block[labels][:, None]
    logits += 2.0 * same + 0.7 * (np.arange(c)[None, :] == labels[:, None])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    learned = confusion_partition(soft_confusion(probs, labels), 3)
    blind = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    classes, p = top_k(probs, 1)
    rate = {
        name: routing_hit_rate(classes, p, labels, class_to_expert(s, c), 3)
        for name, s in (("learned", learned), ("blind", blind))
    }
    assert rate["learned"] > rate["blind"] + 0.05


def test_save_load_round_trip(tmp_path):
    subsets = [[0, 3], [1, 2, 4]]
    meta = {"source": "val", "within_group_mass": 0.5}
    path = tmp_path / "sub" / "partition.json"
    save_partition(path, subsets, meta)
    assert load_partition(path) == (subsets, meta)
    doc = json.loads(path.read_text())
    assert doc["format"] == "ask-the-expert/partition" and doc["version"] == 1 and doc["num_experts"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["partition.json"]  # no temporary file left
    save_partition(path, [np.array([4, 1]), [0, 2, 3]], {})  # overwrite, numpy ids accepted
    assert load_partition(path) == ([[4, 1], [0, 2, 3]], {})


def test_partition_specs_read_files_and_explicit_fine_class_subsets(tmp_path):
    learned = confusion_partition(_random_confusion(100, 3), 4)
    path = tmp_path / "partition.json"
    save_partition(path, learned, {"method": "confusion"})
    assert parse_partition_spec(str(path)) == learned
    assert parse_partition_spec({"subsets": learned}) == learned
    with pytest.raises(PartitionError, match="not a partition"):
        parse_partition_spec({"subsets": [learned[0], learned[0]]})


def test_save_refuses_bad_partitions_and_meta(tmp_path):
    with pytest.raises(PartitionError, match="not a partition"):
        save_partition(tmp_path / "p.json", [[0, 1], [1, 2]], {})
    with pytest.raises(PartitionError, match="JSON"):
        save_partition(tmp_path / "p.json", [[0], [1]], {"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "Cannot read"),
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "not a partition file"),
        (json.dumps({"format": "other", "version": 1}), "not a partition file"),
        (json.dumps({"format": "ask-the-expert/partition", "version": 2}), "version 2"),
        (
            json.dumps({"format": "ask-the-expert/partition", "version": 1, "num_experts": 3, "subsets": [[0], [1]]}),
            "malformed",
        ),
        (
            json.dumps(
                {"format": "ask-the-expert/partition", "version": 1, "num_experts": 2, "subsets": [[0, 1], [1]]}
            ),
            "not a partition",
        ),
        (
            json.dumps({"format": "ask-the-expert/partition", "version": 1, "num_experts": 2, "subsets": [[0], [2]]}),
            "classes in no expert",
        ),
    ],
)
def test_load_refuses_bad_files(tmp_path, content, match):
    path = tmp_path / "partition.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PartitionError, match=match) as info:
        load_partition(path)
    assert "partition.json" in str(info.value)
