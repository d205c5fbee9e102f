"""Routing: softmax, temperature fitting, confidence measures, Top-k and expert selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ask_the_expert.method.router import (
    CONFIDENCE_MEASURES,
    confidence,
    count_pairs,
    experts_needed,
    fit_temperature,
    oracle_experts,
    random_confidence,
    select_experts,
    softmax,
    top_k,
)
from ask_the_expert.method.subsets import class_to_expert, superclass_partition
from ask_the_expert.utils.errors import RoutingError

# 6 classes, 3 experts: S_0 = {0, 1}, S_1 = {2, 3}, S_2 = {4, 5}.
OWNER = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)


def _route(probs, k, owner=OWNER, num_experts=3):
    classes, p = top_k(np.asarray(probs, dtype=np.float64), k)
    return select_experts(classes, p, owner, num_experts)


def test_softmax_known_values_and_stability():
    p = softmax(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]]))
    assert np.allclose(p, [[0.25, 0.75], [0.5, 0.5]])
    assert p.dtype == np.float64
    p32 = softmax(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), temperature=2.0)
    assert p32.dtype == np.float32
    e = np.exp(np.array([0.5, 1.0, 1.5]))
    assert np.allclose(p32[0], e / e.sum(), atol=1e-6)
    with pytest.raises(RoutingError):
        softmax(np.zeros((1, 2)), temperature=0.0)


def test_fit_temperature_recovers_scale_and_lowers_nll():
    rng = np.random.default_rng(0)
    n, c = 20000, 10
    true_logits = rng.normal(scale=2.0, size=(n, c))
    p = softmax(true_logits)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # y ~ softmax(true_logits)
    logits = 3.0 * true_logits  # overconfident by a factor 3
    t = fit_temperature(logits, labels)
    assert abs(t - 3.0) < 0.15

    def nll(temp):
        q = softmax(logits, temp)
        return -np.mean(np.log(q[np.arange(n), labels]))

    assert nll(t) < nll(1.0)
    assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05))  # a local minimum
    assert fit_temperature(logits, labels) == t  # deterministic


def test_fit_temperature_bad_input():
    with pytest.raises(RoutingError):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(RoutingError):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 2]), bounds=(0.0, 1.0))


def test_confidence_measures_hand_computed():
    probs = np.array([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    assert np.allclose(confidence(probs), [0.5, 0.25, 1.0])
    assert np.allclose(confidence(probs, "margin"), [0.2, 0.0, 1.0])
    h0 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert np.allclose(confidence(probs, "entropy"), [1 - h0 / math.log(4), 0.0, 1.0])
    assert tuple(CONFIDENCE_MEASURES) == ("max_prob", "margin", "entropy")


def test_confidence_unknown_measure_lists_valid():
    with pytest.raises(RoutingError, match="max_prob, margin, entropy"):
        confidence(np.ones((1, 2)) / 2, "variance")


def test_top_k_sorted_and_stable_on_ties():
    probs = np.array([[0.1, 0.3, 0.3, 0.2, 0.1, 0.0]])
    classes, p = top_k(probs, 4)
    assert classes.tolist() == [[1, 2, 3, 0]] and classes.dtype == np.int64
    assert np.allclose(p, [[0.3, 0.3, 0.2, 0.1]])
    for k in (0, 7, -1):
        with pytest.raises(RoutingError, match=r"1\.\.6"):
            top_k(probs, k)


def test_select_experts_hand_made():
    probs = [
        # top-1 class 0 (S_0), but S_1 has 0.3 + 0.25 = 0.55 > 0.35 with k = 3
        [0.35, 0.0, 0.3, 0.25, 0.1, 0.0],
        # tie S_0 = 0.25 + 0.25 (k=3: 0.25+0.25 vs S_2 0.5): top-1 is class 4 (0.5) -> expert 2 wins tie
        [0.25, 0.25, 0.0, 0.0, 0.5, 0.0],
        # k=5: S_1 = S_2 = 0.375 > S_0 = 0.25; top-1 (class 0, S_0) is not tied -> lowest tied expert, 1
        [0.25, 0.0, 0.1875, 0.1875, 0.1875, 0.1875],
    ]
    assert _route(probs, 1).tolist() == [0, 2, 0]
    # k = 2 on row 2: classes 0 (S_0, 0.25) and 2 (S_1, 0.1875) -> expert 0
    assert _route(probs, 2).tolist() == [0, 2, 0]
    # k = 3 on row 2: 0 (S_0, 0.25), 2 and 3 (S_1, 0.375) -> expert 1
    assert _route(probs, 3).tolist() == [1, 2, 1]
    assert _route(probs, 5).tolist() == [1, 2, 1]


def test_select_experts_tie_goes_to_top1_expert():
    # k=3: S_0 = 0.3 + 0.2 = 0.5 ties S_1 = 0.5; the top-1 class 2 is in S_1, so expert 1 (not the lower 0).
    probs = [[0.3, 0.2, 0.5, 0.0, 0.0, 0.0]]
    assert _route(probs, 3).tolist() == [1]
    # Equal top-1 probabilities: top-1 is the lower class index (2, S_1); S_1 = 0.4 = S_2 = 0.4.
    probs = [[0.1, 0.1, 0.4, 0.0, 0.4, 0.0]]
    assert _route(probs, 2).tolist() == [1]


def test_select_experts_k1_equals_owner_of_top1():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(500, 100)))
    owner = class_to_expert(superclass_partition(2))
    classes, p = top_k(probs, 1)
    chosen = select_experts(classes, p, owner, 10)
    assert np.array_equal(chosen, owner[probs.argmax(axis=1)])


def test_select_experts_matches_brute_force():
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(300, 100)) * 2)
    owner = class_to_expert(superclass_partition())
    for k in (1, 2, 3, 5, 10):
        classes, p = top_k(probs, k)
        fast = select_experts(classes, p, owner, 20)
        for i in range(len(probs)):
            scores = np.zeros(20)
            for c, q in zip(classes[i], p[i], strict=True):
                scores[owner[c]] += q
            best = np.flatnonzero(scores == scores.max())
            expected = owner[classes[i, 0]] if owner[classes[i, 0]] in best else best[0]
            assert fast[i] == expected


def test_select_experts_bad_input():
    classes, p = top_k(np.array([[0.5, 0.5, 0, 0, 0, 0]]), 2)
    with pytest.raises(RoutingError):
        select_experts(classes, p[:, :1], OWNER, 3)
    with pytest.raises(RoutingError):
        select_experts(classes, p, OWNER, 2)  # table mentions expert 2


def test_oracle_and_random():
    assert oracle_experts(np.array([5, 0, 3]), OWNER).tolist() == [2, 0, 1]
    with pytest.raises(RoutingError):
        oracle_experts(np.array([6]), OWNER)
    r = random_confidence(1000, seed=3)
    assert r.shape == (1000,) and np.all((r >= 0) & (r < 1))
    assert np.array_equal(r, random_confidence(1000, seed=3))
    assert not np.array_equal(r, random_confidence(1000, seed=4))


def test_experts_needed_counts_distinct_pairs():
    k1 = np.array([0, 1, 2, 0])
    k3 = np.array([0, 2, 2, 1])
    oracle = np.array([0, 1, 1, 1])
    needed = experts_needed([k1, k3, oracle], num_experts=4)
    assert set(needed) == {0, 1, 2, 3}
    assert needed[0].tolist() == [0, 3]
    assert needed[1].tolist() == [1, 2, 3]
    assert needed[2].tolist() == [1, 2]
    assert needed[3].tolist() == []
    # pairs: (0,0) (1,1) (2,2) (3,0) (1,2) (3,1) (2,1) -> 7 distinct, not 3 x 4 = 12
    assert count_pairs(needed) == 7
    with pytest.raises(RoutingError):
        experts_needed([k1, np.array([0, 1])], num_experts=4)


def test_top2_routing_always_equals_top1_routing():
    """The top-1 class's expert scores >= p1 >= p2, more than any other expert can collect from two classes."""
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(size=(2000, 100)) * 3)
    owner = class_to_expert(superclass_partition())
    (c1, p1), (c2, p2) = top_k(probs, 1), top_k(probs, 2)
    assert np.array_equal(select_experts(c1, p1, owner, 20), select_experts(c2, p2, owner, 20))
    c3, p3 = top_k(probs, 3)
    assert not np.array_equal(select_experts(c1, p1, owner, 20), select_experts(c3, p3, owner, 20))
