"""Routing (docs/design.md §3): calibrated probabilities, confidence, Top-k expert choice, pair bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from ask_the_expert.utils.errors import RoutingError

FIT = "fit"  # the temperature is fitted on val by temperature scaling
LEARNED = "learned"  # the confidence of a deferral rule fitted on val (ask_the_expert.method.deferral)
RANDOM = "random"  # seeded random scores: offloading the lowest is a random subset (the random-offload policy)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_k_values(k_values: Sequence[int], num_classes: int) -> list[int]:
    """Sorted distinct Top-k values, each an integer in 1..num_classes (RoutingError otherwise)."""
    ks = [k_values] if _is_int(k_values) else list(k_values)
    bad = [k for k in ks if not _is_int(k) or not 1 <= k <= num_classes]
    if not ks or bad:
        raise RoutingError(
            f"k values must be integers in 1..{num_classes} (the number of classes), got {ks!r}. Top-k "
            "routing sums G's k most probable classes per expert; typical values are 1 2 3 5."
        )
    return sorted({int(k) for k in ks})


def check_measures(measures: Sequence[str] | str) -> list[str]:
    """Distinct confidence measures in the given order, each one of CONFIDENCE_MEASURES."""
    ms = [measures] if isinstance(measures, str) else list(measures)
    bad = [m for m in ms if m not in CONFIDENCE_MEASURES]
    if not ms or bad:
        raise RoutingError(
            f"Unknown confidence measure(s) {bad or ms!r}. Use one or more of {', '.join(CONFIDENCE_MEASURES)}."
        )
    return list(dict.fromkeys(ms))


def check_temperature(temperature: str | float) -> str | float:
    """``"fit"`` or a finite number > 0 (returned as float)."""
    if temperature == FIT:
        return FIT
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise RoutingError(
            f"temperature must be 'fit' (temperature scaling on val) or a number > 0, got {temperature!r}; "
            "1.0 turns scaling off."
        )
    return value


@dataclass(frozen=True)
class RouterSpec:
    """The routing rule of docs/design.md §3, validated once on construction.

    Attributes:
        k: Top-k of the expert choice (1 = the expert owning G's top-1 class).
        confidence: ``max_prob``, ``margin``, ``entropy`` or ``learned`` (a deferral rule fitted on val,
            ask_the_expert.method.deferral, which a bundle carries).
        temperature: softmax temperature of G's logits, or ``"fit"`` (temperature scaling on the split that
            also chooses tau: val in an evaluation, ``--evaluate_on`` in an export).
        tau: offload threshold (a sample is offloaded when its confidence < tau); None until chosen on val.
        fuse_weight: None answers an offloaded sample with the expert's top-1; a weight w in [0, 1] answers with
            argmax(w log p_G + (1 - w) log p_E), the fused answer (ask_the_expert.method.policies.fused_predictions).
    """

    k: int = 1
    confidence: str = "max_prob"
    temperature: float | Literal["fit"] = FIT
    tau: float | None = None
    fuse_weight: float | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.k) or self.k < 1:
            raise RoutingError(f"k must be an integer >= 1 (Top-k of the expert choice), got {self.k!r}.")
        object.__setattr__(self, "k", int(self.k))
        if self.confidence != LEARNED:
            check_measures([self.confidence])
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        if self.fuse_weight is not None and not (
            isinstance(self.fuse_weight, (int, float)) and 0.0 <= self.fuse_weight <= 1.0
        ):
            raise RoutingError(
                f"fuse_weight must be null (the expert's answer) or in [0, 1], got {self.fuse_weight!r}."
            )
        if self.tau is not None:
            if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau):
                raise RoutingError(f"tau must be a finite number (offload where confidence < tau), got {self.tau!r}.")
            object.__setattr__(self, "tau", float(self.tau))

    def check_classes(self, num_classes: int) -> RouterSpec:
        """Raise RoutingError unless k fits ``num_classes`` classes; returns self."""
        check_k_values([self.k], num_classes)
        return self

    @property
    def deployable(self) -> bool:
        """A numeric temperature and a chosen tau: everything a runtime needs to decide."""
        return self.temperature != FIT and self.tau is not None

    def resolved(
        self, temperature: float | None = None, tau: float | None = None, fuse_weight: float | None = None
    ) -> RouterSpec:
        """A copy with the fitted temperature, the chosen tau and/or the fitted fuse weight filled in."""
        return replace(
            self,
            temperature=self.temperature if temperature is None else temperature,
            tau=self.tau if tau is None else tau,
            fuse_weight=self.fuse_weight if fuse_weight is None else fuse_weight,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "offload_when": "confidence < tau"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterSpec:
        """Inverse of to_dict (extra keys such as ``offload_when`` are ignored)."""
        return cls(
            k=d["k"],
            confidence=d["confidence"],
            temperature=d["temperature"],
            tau=d.get("tau"),
            fuse_weight=d.get("fuse_weight"),
        )


def _as_2d_float(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1 or x.dtype.kind not in "fiu":
        raise RoutingError(
            f"{name} must be a numeric (N, C) array, got shape {x.shape} and dtype {x.dtype}. "
            "Pass one row of per-class values per sample."
        )
    return x


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of logits / temperature over the last axis.

    float32 input stays float32 (memory for large eval sets); anything else becomes float64.
    """
    if temperature == FIT or check_temperature(temperature) == FIT:
        raise RoutingError("softmax needs a numeric temperature; fit it on val first (fit_temperature).")
    z = np.asarray(logits)
    dtype = np.float32 if z.dtype == np.float32 else np.float64
    z = z.astype(dtype, copy=False) / dtype(temperature)
    # Subtracting the row max keeps exp() from overflowing without changing the result.
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    m = np.max(z, axis=1)
    lse = m + np.log(np.sum(np.exp(z - m[:, None]), axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def _check_labels(labels: np.ndarray, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise RoutingError(
            f"{name} must be an integer array of shape ({n},), got shape {labels.shape} and dtype "
            f"{labels.dtype}. Pass one class id per sample."
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise RoutingError(
            f"{name} must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}. "
            "Check that labels and the class table describe the same label space."
        )
    return labels.astype(np.int64, copy=False)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the mean NLL of softmax(logits / T) on (val) labels.

    NLL is convex in 1/T, hence unimodal in log T, so a deterministic golden-section search on
    log T inside `bounds` finds the global minimum (to ~1e-6 relative) without scipy.
    """
    z = _as_2d_float(logits, "logits").astype(np.float64)
    y = _check_labels(labels, z.shape[0], z.shape[1])
    lo, hi = bounds
    if not (0 < lo < hi and math.isfinite(hi)):
        raise RoutingError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}; the default is (0.05, 20).")
    if z.shape[0] == 0:
        raise RoutingError("fit_temperature needs at least one sample; pass the validation logits and labels.")
    a, b = math.log(lo), math.log(hi)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = _nll(z, y, math.exp(c)), _nll(z, y, math.exp(d))
    while b - a > 1e-7:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = _nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = _nll(z, y, math.exp(d))
    return float(math.exp((a + b) / 2.0))


# Confidence measures (docs/design.md §3) by name: calibrated probabilities (N, C) -> per-sample confidence (N,),
# higher = more confident. Adding a measure is one function under ``@confidence_measure``; evaluations, records,
# bundles and the runtime take it by name.
CONFIDENCE_MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def confidence_measure(name: str) -> Callable[[Callable[[np.ndarray], np.ndarray]], Callable[[np.ndarray], np.ndarray]]:
    """Register the decorated function as the confidence measure ``name``."""

    def register(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        if name in CONFIDENCE_MEASURES or name in (LEARNED, RANDOM):
            raise RoutingError(f"A confidence measure named {name!r} exists already.")
        CONFIDENCE_MEASURES[name] = fn
        return fn

    return register


def _top_two(p: np.ndarray, measure: str) -> np.ndarray:
    if p.shape[1] < 2:
        raise RoutingError(f"The {measure!r} confidence needs at least 2 classes, got {p.shape[1]}.")
    return np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]


@confidence_measure("max_prob")
def max_prob(p: np.ndarray) -> np.ndarray:
    """p1, the top-1 probability (the default)."""
    return np.max(p, axis=1)


@confidence_measure("margin")
def margin(p: np.ndarray) -> np.ndarray:
    """p1 - p2, the gap between the two most probable classes."""
    top2 = _top_two(p, "margin")
    return top2[:, 1] - top2[:, 0]


@confidence_measure("entropy")
def normalised_entropy(p: np.ndarray) -> np.ndarray:
    """1 - H(p) / log(C): 1 for a one-hot p, 0 for the uniform one."""
    _top_two(p, "entropy")
    # 0 * log 0 is taken as 0 (the limit), hence the where=.
    plogp = np.multiply(p, np.log(p, where=p > 0, out=np.zeros_like(p, dtype=np.float64)))
    entropy = -np.sum(plogp, axis=1)
    return (1.0 - entropy / math.log(p.shape[1])).astype(p.dtype if p.dtype.kind == "f" else np.float64)


def confidence(probs: np.ndarray, measure: str = "max_prob") -> np.ndarray:
    """Per-sample confidence (N,) of a registered measure (CONFIDENCE_MEASURES)."""
    check_measures([measure])
    return CONFIDENCE_MEASURES[measure](_as_2d_float(probs, "probs"))


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per row: (classes int64 (N, k), probs (N, k)), descending.

    Ties keep the lower class index first (stable sort), so results are reproducible.
    """
    p = _as_2d_float(probs, "probs")
    num_classes = p.shape[1]
    if not _is_int(k) or not 1 <= k <= num_classes:
        raise RoutingError(f"k must be an integer in 1..{num_classes} (the number of classes), got {k!r}.")
    order = np.argsort(-p, axis=1, kind="stable")[:, :k].astype(np.int64)
    return order, np.take_along_axis(p, order, axis=1)


def select_experts(
    topk_classes: np.ndarray, topk_probs: np.ndarray, class_to_expert: np.ndarray, num_experts: int
) -> np.ndarray:
    """Expert per sample (N,) int64: argmax_j of score_j = sum of the Top-k probabilities of classes in S_j.

    Ties between maximal scores (exact float64 equality) go to the expert of the top-1 class when it is
    among them, otherwise to the lowest tied expert index. With k = 1 this is class_to_expert[top-1].
    """
    classes = np.asarray(topk_classes)
    probs = np.asarray(topk_probs)
    owner = np.asarray(class_to_expert)
    if classes.ndim != 2 or classes.shape != probs.shape or classes.shape[1] < 1 or classes.dtype.kind not in "iu":
        raise RoutingError(
            f"topk_classes (int) and topk_probs must both have shape (N, k>=1); got {classes.shape} "
            f"({classes.dtype}) and {probs.shape}. Pass the outputs of top_k()."
        )
    if owner.ndim != 1 or owner.dtype.kind not in "iu":
        raise RoutingError(
            "class_to_expert must be a 1-D integer table; build it with ask_the_expert.method.subsets.class_to_expert."
        )
    if owner.size and (owner.min() < 0 or owner.max() >= num_experts):
        raise RoutingError(
            f"class_to_expert holds experts {owner.min()}..{owner.max()} but num_experts={num_experts}; "
            "pass the number of subsets the table was built from."
        )
    n = classes.shape[0]
    if n and (classes.min() < 0 or classes.max() >= owner.size):
        raise RoutingError(
            f"topk_classes must lie in 0..{owner.size - 1} (the class table's size), found "
            f"{classes.min()}..{classes.max()}."
        )
    experts = owner[classes]  # (N, k)
    # float64 so that sums of hand-made probabilities tie the way they look (e.g. 0.25 + 0.25 == 0.5).
    flat = (np.arange(n, dtype=np.int64)[:, None] * num_experts + experts).ravel()
    scores = np.bincount(flat, weights=probs.astype(np.float64).ravel(), minlength=n * num_experts)
    scores = scores.reshape(n, num_experts)
    tied = scores == scores.max(axis=1, keepdims=True) if n else np.zeros((0, num_experts), dtype=bool)
    top1_expert = experts[:, 0]
    top1_tied = tied[np.arange(n), top1_expert]
    return np.where(top1_tied, top1_expert, np.argmax(tied, axis=1)).astype(np.int64)


def oracle_experts(labels: np.ndarray, class_to_expert: np.ndarray) -> np.ndarray:
    """Expert that owns each true label (the oracle-routing reference policy)."""
    owner = np.asarray(class_to_expert, dtype=np.int64)
    labels = np.asarray(labels)
    y = _check_labels(labels, labels.shape[0] if labels.ndim == 1 else -1, owner.size)
    return owner[y]


def offload_mask(confidence: np.ndarray, tau: float) -> np.ndarray:
    """The offload rule: True where confidence < tau, compared in float64 (a float32 comparison would round tau
    first, so that the simulation, the Lightning system and the runtime could disagree next to tau)."""
    return np.asarray(confidence, dtype=np.float64) < float(tau)


def random_confidence(n: int, seed: int) -> np.ndarray:
    """Uniform random scores in [0, 1): offloading the lowest ones is a random subset at any offload rate."""
    if n < 0:
        raise RoutingError(f"n must be >= 0, got {n}.")
    return np.random.default_rng(seed).random(n)


def experts_needed(assignments: Sequence[np.ndarray], num_experts: int) -> dict[int, np.ndarray]:
    """Sorted unique sample indices each expert must run on, given several per-sample expert choices.

    Each array in `assignments` (e.g. one per k plus the oracle) maps sample -> expert; every distinct
    (sample, expert) pair appears once. All experts 0..num_experts-1 are keys (possibly empty arrays).
    """
    arrays = [np.asarray(a) for a in assignments]
    if not arrays:
        return {j: np.zeros(0, dtype=np.int64) for j in range(num_experts)}
    n = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
    for a in arrays:
        if a.ndim != 1 or a.shape[0] != n or a.dtype.kind not in "iu":
            raise RoutingError(
                "Every assignment must be a 1-D integer array with one expert per sample, all of the same "
                f"length; got shapes {[x.shape for x in arrays]}."
            )
        if n and (a.min() < 0 or a.max() >= num_experts):
            raise RoutingError(
                f"Assignments hold experts {a.min()}..{a.max()} but num_experts={num_experts}; pass the "
                "number of expert subsets."
            )
    samples = np.tile(np.arange(n, dtype=np.int64), len(arrays))
    experts = np.concatenate(arrays).astype(np.int64)
    # Expert-major keys so that np.unique returns pairs grouped by expert, samples ascending.
    keys = np.unique(experts * max(n, 1) + samples)
    key_expert, key_sample = keys // max(n, 1), keys % max(n, 1)
    bounds = np.searchsorted(key_expert, np.arange(num_experts + 1))
    return {j: key_sample[bounds[j] : bounds[j + 1]] for j in range(num_experts)}


def count_pairs(needed: dict[int, np.ndarray]) -> int:
    """Number of expert forwards an experts_needed() plan costs (distinct (sample, expert) pairs)."""
    return int(sum(len(v) for v in needed.values()))
