"""Learned deferral (docs/design.md §7; Jitkrittum et al., NeurIPS 2023): when does offloading help?

Max-probability confidence ranks samples by how likely G is right, ignoring whether the chosen expert would
do better. A small post-hoc rule on G's calibrated probabilities predicts both P(G correct | x) and
P(chosen expert correct | x) with two L2-regularised logistic regressions; its confidence is minus the
predicted gain of offloading, so the suite's exact sweep (offload when confidence < tau) sends the largest
predicted gains first. Plain numpy, so the torch-free deployment runtime can evaluate it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ask_the_expert.method.router import confidence as routing_confidence
from ask_the_expert.method.router import select_experts, top_k
from ask_the_expert.utils.errors import SuiteError

FEATURE_NAMES: tuple[str, ...] = (
    "p1",
    "p2",
    "p3",
    "p4",
    "p5",
    "margin",
    "entropy_confidence",
    "log_p1",
    "expert_score_top3",
    "expert_mass_top1",
    "top1_expert_share_top5",
    "distinct_experts_top5",
)
DEFERRAL_VERSION = 1
_SCALE_FLOOR = 1e-12  # constant features standardise to 0 instead of dividing by 0
_GRAD_TOL = 1e-10
_MAX_NEWTON = 100


class DeferralError(SuiteError):
    """Bad input to the learned deferral rule, or a stored rule that cannot be read."""


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2 or p.dtype.kind not in "fiu" or not np.all(np.isfinite(p)):
        raise DeferralError(
            f"probs must be a finite (N, C >= 2) array of calibrated probabilities, got shape {p.shape} and dtype "
            f"{p.dtype}; pass softmax(logits / T) of the generalist."
        )
    return p.astype(np.float64)


def deferral_features(probs: np.ndarray, class_to_expert: np.ndarray, num_experts: int) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float64 features of G's calibrated probabilities (N, C), in FEATURE_NAMES order.

    Top-1..5 probabilities (0 beyond C), margin p1 - p2, 1 - H/log C, log p1, and expert structure: the Top-3
    score of the expert chosen with k = 3, the total probability of the classes of the top-1 class's expert
    (G's belief that this expert owns the answer; the k = 1 score itself equals p1), the share of the top-5
    mass owned by that expert, and the number of distinct experts among the top-5 classes.
    """
    p = _check_probs(probs)
    owner = np.asarray(class_to_expert)
    if owner.shape != (p.shape[1],):
        raise DeferralError(
            f"class_to_expert must have one entry per class ({p.shape[1]}), got shape {owner.shape}; build it with "
            "ask_the_expert.method.subsets.class_to_expert for the same classes."
        )
    n, c = p.shape
    rows = np.arange(n)
    classes5, top5 = top_k(p, min(5, c))
    top5 = np.pad(top5, ((0, 0), (0, 5 - top5.shape[1])))
    classes3, top3 = top_k(p, min(3, c))
    chosen3 = select_experts(classes3, top3, owner, num_experts)
    score3 = np.sum(np.where(owner[classes3] == chosen3[:, None], top3, 0.0), axis=1)
    experts5 = owner[classes5]
    top1_expert = experts5[:, 0]
    membership = (owner[:, None] == np.arange(num_experts)[None, :]).astype(np.float64)
    mass1 = (p @ membership)[rows, top1_expert]
    share5 = np.sum(np.where(experts5 == top1_expert[:, None], top5[:, : experts5.shape[1]], 0.0), axis=1)
    share5 = share5 / np.sum(top5, axis=1)
    sorted5 = np.sort(experts5, axis=1)
    distinct5 = 1.0 + np.sum(sorted5[:, 1:] != sorted5[:, :-1], axis=1)
    return np.column_stack(
        (
            top5,
            top5[:, 0] - top5[:, 1],
            routing_confidence(p, "entropy"),
            np.log(np.maximum(top5[:, 0], np.finfo(np.float64).tiny)),
            score3,
            mass1,
            share5,
            distinct5,
        )
    )


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -t))


def _check_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    f = len(FEATURE_NAMES)
    if x.ndim != 2 or x.shape[1] != f or x.dtype.kind not in "fiu" or not np.all(np.isfinite(x)):
        raise DeferralError(
            f"features must be a finite (N, {f}) numeric array in FEATURE_NAMES order, got shape {x.shape}; build "
            "it with deferral_features(probs, class_to_expert, num_experts)."
        )
    return x.astype(np.float64)


def _check_flags(flags: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(flags)
    if y.shape != (n,) or y.dtype.kind not in "biu" or (y.dtype.kind != "b" and np.any((y != 0) & (y != 1))):
        raise DeferralError(
            f"{name} must be a boolean (or 0/1) array of shape ({n},), one per row of features; got shape "
            f"{y.shape} and dtype {y.dtype}. Pass prediction == label per sample."
        )
    return y.astype(bool)


@dataclass(frozen=True)
class DeferralRule:
    """Two logistic regressions on standardised features: P(G correct | x) and P(chosen expert correct | x)."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights_local: tuple[float, ...]
    bias_local: float
    weights_offload: tuple[float, ...]
    bias_offload: float
    l2: float
    version: int = DEFERRAL_VERSION

    def __post_init__(self) -> None:
        if tuple(self.feature_names) != FEATURE_NAMES:
            raise DeferralError(
                f"The deferral rule was fitted on features {list(self.feature_names)}, but this code computes "
                f"{list(FEATURE_NAMES)}. Refit it with fit_deferral() on deferral_features() of this version."
            )
        if self.version != DEFERRAL_VERSION:
            raise DeferralError(
                f"Deferral rule version {self.version!r} is not readable by this code (version {DEFERRAL_VERSION}); "
                "refit it with fit_deferral()."
            )
        f = len(FEATURE_NAMES)
        vectors = (self.mean, self.scale, self.weights_local, self.weights_offload)
        scalars = (self.bias_local, self.bias_offload, self.l2)
        values = [v for vec in vectors for v in vec] + list(scalars)
        if any(len(v) != f for v in vectors) or not all(math.isfinite(v) for v in values):
            raise DeferralError(
                f"A deferral rule needs finite mean, scale and weight vectors of length {f} and finite biases; refit "
                "it with fit_deferral()."
            )
        if min(self.scale) <= 0 or not self.l2 > 0:
            raise DeferralError("A deferral rule needs scale > 0 and l2 > 0; refit it with fit_deferral().")

    def _probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (_check_features(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        p_local = _sigmoid(z @ np.asarray(self.weights_local) + self.bias_local)
        p_offload = _sigmoid(z @ np.asarray(self.weights_offload) + self.bias_offload)
        return p_local, p_offload

    def gain(self, features: np.ndarray) -> np.ndarray:
        """(N,) predicted benefit of offloading: P(expert correct) - P(G correct)."""
        p_local, p_offload = self._probabilities(features)
        return p_offload - p_local

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """(N,) minus the gain, so "offload when confidence < tau" offloads the largest predicted gains first."""
        return -self.gain(features)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, floats, an int); from_dict() restores an identical rule."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeferralRule:
        """Rebuild a rule from to_dict() output, refusing missing or unknown keys, bad values or other features."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, Mapping) or set(d) != set(names):
            found = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise DeferralError(
                f"A stored deferral rule must be a mapping with exactly the keys {names}, got {found}. Store it with "
                "DeferralRule.to_dict()."
            )

        def number(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError
            return float(v)

        try:
            vectors = {k: tuple(number(v) for v in d[k]) for k in ("mean", "scale", "weights_local", "weights_offload")}
            scalars = {k: number(d[k]) for k in ("bias_local", "bias_offload", "l2")}
            feature_names = tuple(d["feature_names"])
            version = d["version"]
            if not all(isinstance(s, str) for s in feature_names) or type(version) is not int:
                raise TypeError
        except TypeError:
            raise DeferralError(
                "A stored deferral rule holds values of the wrong type: feature_names must be a list of strings, "
                "mean/scale/weights lists of numbers, biases and l2 numbers, version an integer. Store it with "
                "DeferralRule.to_dict()."
            ) from None
        return cls(feature_names=feature_names, version=version, **vectors, **scalars)


def _objective(z1: np.ndarray, y: np.ndarray, theta: np.ndarray, penalty: np.ndarray) -> float:
    t = z1 @ theta
    return float(np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * np.sum(penalty * theta**2))


def _fit_logistic(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Minimise sum of log-losses + l2/2 |w|^2 (bias unpenalised) by damped Newton steps."""
    n, f = z.shape
    z1 = np.hstack((z, np.ones((n, 1))))
    penalty = np.append(np.full(f, l2), 0.0)
    theta = np.zeros(f + 1)
    obj = _objective(z1, y, theta, penalty)
    for _ in range(_MAX_NEWTON):
        t = z1 @ theta
        # sigmoid(t) - y and sigmoid(t) * sigmoid(-t) written to stay accurate when t saturates.
        residual = np.where(y > 0, -_sigmoid(-t), _sigmoid(t))
        grad = z1.T @ residual + penalty * theta
        if np.linalg.norm(grad) <= _GRAD_TOL:
            break
        hessian = (z1 * (_sigmoid(t) * _sigmoid(-t))[:, None]).T @ z1 + np.diag(penalty)
        step = np.linalg.lstsq(hessian, grad, rcond=None)[0]
        # Halve the step until the objective does not rise (beyond rounding); the full step is the usual case.
        for shrink in 0.5 ** np.arange(40):
            candidate = theta - shrink * step
            new_obj = _objective(z1, y, candidate, penalty)
            if new_obj <= obj + 1e-12 * max(1.0, abs(obj)):
                break
        else:
            break  # no step lowers the objective: the optimum up to rounding
        theta, obj = candidate, new_obj
    return theta[:f], float(theta[f])


def fit_deferral(
    features: np.ndarray, correct_local: np.ndarray, correct_offload: np.ndarray, l2: float = 1.0
) -> DeferralRule:
    """Fit the rule on (a part of) val: standardise, then Newton/IRLS logistic regressions in float64.

    The loss is the sum of per-sample log-losses plus l2/2 |w|^2 on the standardised weights (bias free).
    Deterministic; stops at gradient norm 1e-10 or after 100 Newton steps.
    """
    x = _check_features(features)
    n = x.shape[0]
    if n < 1:
        raise DeferralError("fit_deferral needs at least one sample; pass the val part reserved for the rule.")
    y_local = _check_flags(correct_local, n, "correct_local")
    y_offload = _check_flags(correct_offload, n, "correct_offload")
    if not (isinstance(l2, (int, float)) and not isinstance(l2, bool) and math.isfinite(l2) and l2 > 0):
        raise DeferralError(f"l2 must be a finite number > 0, got {l2!r}; 1.0 is the default.")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), _SCALE_FLOOR)
    z = (x - mean) / scale
    w_local, b_local = _fit_logistic(z, y_local.astype(np.float64), float(l2))
    w_offload, b_offload = _fit_logistic(z, y_offload.astype(np.float64), float(l2))
    return DeferralRule(
        feature_names=FEATURE_NAMES,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights_local=tuple(float(v) for v in w_local),
        bias_local=b_local,
        weights_offload=tuple(float(v) for v in w_offload),
        bias_offload=b_offload,
        l2=float(l2),
    )
