"""Learned deferral: features, logistic fit optimality, ranking gain, serialisation, out-of-fold scores."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from ask_the_expert.method.deferral import (
    FEATURE_NAMES,
    DeferralError,
    DeferralRule,
    deferral_features,
    fit_deferral,
)
from ask_the_expert.method.stats import area_gain
from ask_the_expert.method.sweep import sweep_thresholds
from ask_the_expert.utils.errors import SuiteError

F = len(FEATURE_NAMES)
GAIN_FEATURE = FEATURE_NAMES.index("expert_mass_top1")


def _synthetic(n, seed):
    """p1 drives G's correctness; the benefit of offloading is a known function of one other feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F))
    x[:, 0] = rng.uniform(0.2, 0.8, n)
    gain = 0.2 * np.tanh(2.0 * x[:, GAIN_FEATURE])
    return x, rng.random(n) < x[:, 0], rng.random(n) < x[:, 0] + gain, gain


def _objective(rule, x, y, which):
    z = (x - np.asarray(rule.mean)) / np.asarray(rule.scale)
    w = np.asarray(getattr(rule, f"weights_{which}"))
    t = z @ w + getattr(rule, f"bias_{which}")
    return np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * rule.l2 * np.sum(w**2)


def test_features_brute_force():
    rng = np.random.default_rng(0)
    c = 10
    owner = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    probs = rng.dirichlet(np.full(c, 0.5), size=25)
    feats = deferral_features(probs, owner, 4)
    assert feats.shape == (25, F) and feats.dtype == np.float64
    for i, p in enumerate(probs):
        order = sorted(range(c), key=lambda k: (-p[k], k))
        top = [p[k] for k in order[:5]]
        scores = [sum(p[k] for k in order[:3] if owner[k] == j) for j in range(4)]
        best = max(scores)
        chosen = owner[order[0]] if scores[owner[order[0]]] == best else scores.index(best)
        e1 = owner[order[0]]
        entropy = -sum(v * math.log(v) for v in p if v > 0)
        expected = {
            "p1": top[0],
            "p2": top[1],
            "p5": top[4],
            "margin": top[0] - top[1],
            "entropy_confidence": 1 - entropy / math.log(c),
            "log_p1": math.log(top[0]),
            "expert_score_top3": scores[chosen],
            "expert_mass_top1": sum(p[k] for k in range(c) if owner[k] == e1),
            "top1_expert_share_top5": sum(p[k] for k in order[:5] if owner[k] == e1) / sum(top),
            "distinct_experts_top5": len({owner[k] for k in order[:5]}),
        }
        for name, value in expected.items():
            assert feats[i, FEATURE_NAMES.index(name)] == pytest.approx(value, abs=1e-12), name


def test_features_with_fewer_than_five_classes_pad_with_zeros():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    feats = deferral_features(probs, np.array([0, 1, 1]), 2)
    assert np.allclose(feats[:, FEATURE_NAMES.index("p4")], 0) and np.allclose(feats[:, FEATURE_NAMES.index("p5")], 0)
    assert feats[:, FEATURE_NAMES.index("top1_expert_share_top5")] == pytest.approx([0.5, 0.9])
    with pytest.raises(DeferralError, match="class_to_expert"):
        deferral_features(probs, np.array([0, 1]), 2)
    with pytest.raises(DeferralError, match="probs"):
        deferral_features(np.ones((2, 1)), np.array([0]), 1)


def test_logistic_fit_is_the_regularised_optimum():
    x, loc, off, _ = _synthetic(600, 1)
    x[:, 3] = 2.5  # a constant feature must not break standardisation
    rule = fit_deferral(x, loc, off, l2=2.0)
    assert rule.scale[3] == pytest.approx(1e-12)
    for which, y in (("local", loc.astype(float)), ("offload", off.astype(float))):
        base = _objective(rule, x, y, which)
        w = np.asarray(getattr(rule, f"weights_{which}"))
        h = 1e-5
        for k in range(F):
            if k == 3:
                continue  # the constant feature's weight has no effect on the data, only on the penalty
            for sign in (1, -1):
                shifted = list(w)
                shifted[k] += sign * h
                moved = replace(rule, **{f"weights_{which}": tuple(shifted)})
                # At a minimum the objective rises (by O(h^2)) in every direction.
                assert _objective(moved, x, y, which) >= base - 1e-9
            plus = list(w)
            plus[k] += h
            minus = list(w)
            minus[k] -= h
            grad = (
                _objective(replace(rule, **{f"weights_{which}": tuple(plus)}), x, y, which)
                - _objective(replace(rule, **{f"weights_{which}": tuple(minus)}), x, y, which)
            ) / (2 * h)
            assert abs(grad) < 1e-5
        assert w[3] == pytest.approx(0.0, abs=1e-12)


def test_rule_ranks_far_better_than_max_prob():
    x, loc, off, _ = _synthetic(3000, 2)
    rule = fit_deferral(x, loc, off)
    xt, loc_t, off_t, gain = _synthetic(3000, 3)
    areas = {}
    for name, conf in (("rule", rule.confidence(xt)), ("max_prob", xt[:, 0]), ("oracle", -gain)):
        curve = sweep_thresholds(conf, loc_t, off_t)
        areas[name] = float(area_gain(curve["offload_ratio"], curve["accuracy"])[0])
    assert areas["rule"] > areas["max_prob"] + 0.025
    assert areas["rule"] > 0.8 * areas["oracle"]
    assert np.array_equal(rule.confidence(xt), -rule.gain(xt))


def test_round_trip_gives_identical_scores():
    x, loc, off, _ = _synthetic(300, 4)
    rule = fit_deferral(x, loc, off)
    stored = json.loads(json.dumps(rule.to_dict()))
    back = DeferralRule.from_dict(stored)
    assert back == rule
    assert np.array_equal(back.confidence(x), rule.confidence(x))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("scale"), "exactly the keys"),
        (lambda d: d.update(extra=1), "exactly the keys"),
        (lambda d: d.update(feature_names=[*FEATURE_NAMES[:-1], "other"]), "fitted on features"),
        (lambda d: d.update(mean=d["mean"][:-1]), "length"),
        (lambda d: d.update(bias_local="0.1"), "wrong type"),
        (lambda d: d.update(weights_local=[True] * F), "wrong type"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(scale=[0.0] * F), "scale > 0"),
        (lambda d: d.update(bias_offload=float("nan")), "finite"),
    ],
)
def test_bad_dicts_are_refused(change, match):
    x, loc, off, _ = _synthetic(100, 5)
    d = fit_deferral(x, loc, off).to_dict()
    change(d)
    with pytest.raises(DeferralError, match=match):
        DeferralRule.from_dict(d)
    with pytest.raises(SuiteError):
        DeferralRule.from_dict([1, 2])


def test_determinism_and_argument_checks():
    x, loc, off, _ = _synthetic(200, 7)
    assert fit_deferral(x, loc, off) == fit_deferral(x, loc, off)
    with pytest.raises(DeferralError, match="features"):
        fit_deferral(x[:, :-1], loc, off)
    with pytest.raises(DeferralError, match="correct_local"):
        fit_deferral(x, loc[:-1], off)
    with pytest.raises(DeferralError, match="l2"):
        fit_deferral(x, loc, off, l2=0.0)


def test_degenerate_labels_still_fit():
    x, loc, _, _ = _synthetic(100, 8)
    rule = fit_deferral(x, loc, np.zeros(100, dtype=bool))  # the expert is never right
    gain = rule.gain(x)
    assert np.all(np.isfinite(gain)) and np.all(gain < 0)
