"""Confusion-aware expert subsets (docs/design.md §7): balanced groups of whole classes learned from G's confusion.

Classes that the generalist confuses with each other should land in the same expert, so that the expert
chosen from G's Top-k more often owns the true class (a higher routing hit rate). The groups come from a
spectral embedding of the symmetrised confusion, a capacity-constrained k-means that keeps the groups
balanced, and a local search by swaps of two classes that raises the within-group confusion mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ask_the_expert.method.router import oracle_experts, select_experts
from ask_the_expert.method.subsets import validate_partition
from ask_the_expert.utils.errors import PartitionError, RoutingError

# Independent k-means starts per call (seeded from `seed`); the best after refinement is kept.
_RESTARTS = 4
_KMEANS_ITERATIONS = 100


def soft_confusion(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(C, C) soft confusion: row c is the mean predicted probability vector over the samples of true class c.

    Soft rows see near-misses that a hard argmax confusion hides; rows of classes absent from labels are 0.
    """
    p = np.asarray(probs)
    if p.ndim != 2 or p.dtype.kind not in "fiu" or p.shape[1] < 1:
        raise PartitionError(
            f"probs must be a numeric (N, C) array of predicted probabilities, got shape {p.shape} and dtype "
            f"{p.dtype}; pass the generalist's calibrated val probabilities."
        )
    c = p.shape[1] if num_classes is None else num_classes
    if c != p.shape[1]:
        raise PartitionError(
            f"probs has {p.shape[1]} columns but num_classes={num_classes}; pass probabilities over all "
            f"{num_classes} classes (or leave num_classes unset)."
        )
    y = np.asarray(labels)
    if y.shape != (p.shape[0],) or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= c)):
        raise PartitionError(
            f"labels must be {p.shape[0]} integer class ids in 0..{c - 1}, one per row of probs; got shape "
            f"{y.shape} and dtype {y.dtype}."
        )
    onehot = (y[None, :] == np.arange(c)[:, None]).astype(np.float64)
    sums = onehot @ p.astype(np.float64)
    n = onehot.sum(axis=1, keepdims=True)
    return np.divide(sums, n, out=np.zeros_like(sums), where=n > 0)


def _affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetrised row-normalised confusion with a zero diagonal: how much two classes are mixed up."""
    m = np.asarray(confusion)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1 or m.dtype.kind not in "fiu":
        raise PartitionError(
            f"confusion must be a square numeric (C, C) matrix, got shape {m.shape}; build it with "
            "soft_confusion(probs, labels)."
        )
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise PartitionError("confusion must hold finite values >= 0 (probabilities or counts); check its source.")
    rows = m.sum(axis=1, keepdims=True)
    m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    a = (m + m.T) / 2.0
    np.fill_diagonal(a, 0.0)
    return a


def _owners(subsets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    validate_partition(subsets, num_classes)
    owner = np.empty(num_classes, dtype=np.int64)
    for j, subset in enumerate(subsets):
        owner[np.asarray(subset, dtype=np.int64)] = j
    return owner


def _groups(owner: np.ndarray, num_groups: int) -> list[list[int]]:
    """Sorted class lists, ordered by their smallest class, so equal partitions compare equal."""
    groups = [np.flatnonzero(owner == j).tolist() for j in range(num_groups)]
    return sorted(groups, key=lambda g: g[0])


def _mass(a: np.ndarray, owner: np.ndarray) -> float:
    total = float(a.sum())
    return float(a[owner[:, None] == owner[None, :]].sum()) / total if total > 0 else math.nan


def within_group_mass(confusion: np.ndarray, subsets: Sequence[Sequence[int]]) -> float:
    """Share of the symmetrised off-diagonal confusion (rows normalised) that falls inside the groups.

    1 means G only ever confuses classes of the same expert; NaN when there is no confusion at all.
    """
    a = _affinity(confusion)
    return _mass(a, _owners(subsets, a.shape[0]))


def _refine(a: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Swap pairs of classes between groups while the within-group mass strictly increases."""
    owner = owner.copy()
    num_groups = int(owner.max()) + 1
    c = a.shape[0]
    rows = np.arange(c)
    tol = 1e-12 * float(a.sum())  # so that rounding noise cannot make a swap look like a gain
    improved = True
    while improved:
        improved = False
        # to_group[x, g]: affinity of class x to the members of group g (recomputed per pass, no drift).
        to_group = a @ (owner[:, None] == np.arange(num_groups)[None, :])
        for i in range(c):
            gi = owner[i]
            # Gain in within-group mass (unordered pairs) from swapping i with each j.
            delta = to_group[i, owner] + to_group[rows, gi] - 2.0 * a[i] - to_group[i, gi] - to_group[rows, owner]
            delta[owner == gi] = -np.inf
            j = int(np.argmax(delta))
            if delta[j] > tol:
                gj = owner[j]
                to_group[:, gi] += a[:, j] - a[:, i]
                to_group[:, gj] += a[:, i] - a[:, j]
                owner[i], owner[j] = gj, gi
                improved = True
    return owner


def refine_by_swaps(confusion: np.ndarray, subsets: Sequence[Sequence[int]]) -> list[list[int]]:
    """Local search from a partition: swap two classes of different groups while within_group_mass rises.

    Group sizes never change; the result is swap-optimal (no single swap raises the mass).
    """
    a = _affinity(confusion)
    return _groups(_refine(a, _owners(subsets, a.shape[0])), len(subsets))


def _spectral_embedding(a: np.ndarray, dims: int) -> np.ndarray:
    """Rows of the `dims` smallest eigenvectors of the normalised Laplacian, scaled to unit length."""
    d = a.sum(axis=1)
    inv = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
    laplacian = np.eye(a.shape[0]) - inv[:, None] * a * inv[None, :]
    _, vectors = np.linalg.eigh(laplacian)
    u = vectors[:, :dims]
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return np.divide(u, norm, out=np.zeros_like(u), where=norm > 0)


def _balanced_assign(dist: np.ndarray) -> np.ndarray:
    """Greedy capacity-constrained assignment of C classes to k groups, closest (class, group) pairs first.

    Every group takes C // k classes; the C % k extra places go to whichever groups fill up first.
    """
    c, k = dist.shape
    base, extra = divmod(c, k)
    owner = np.full(c, -1, dtype=np.int64)
    size = np.zeros(k, dtype=np.int64)
    left = c
    for flat in np.argsort(dist, axis=None, kind="stable"):
        i, g = divmod(int(flat), k)
        if owner[i] >= 0 or size[g] > base or (size[g] == base and extra == 0):
            continue
        if size[g] == base:
            extra -= 1  # g takes one of the extra places
        owner[i] = g
        size[g] += 1
        left -= 1
        if left == 0:
            break
    return owner


def _balanced_kmeans(emb: np.ndarray, num_groups: int, rng: np.random.Generator) -> np.ndarray:
    c = emb.shape[0]
    # k-means++ seeding: spread the first centroids over the embedding.
    centres = [emb[rng.integers(c)]]
    for _ in range(1, num_groups):
        d2 = np.min(((emb[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        pick = rng.choice(c, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(c)
        centres.append(emb[pick])
    centroids = np.asarray(centres)
    owner = np.full(c, -1, dtype=np.int64)
    for _ in range(_KMEANS_ITERATIONS):
        dist = ((emb[:, None, :] - centroids[None]) ** 2).sum(-1)
        new = _balanced_assign(dist)
        if np.array_equal(new, owner):
            break
        owner = new
        centroids = np.stack([emb[owner == g].mean(axis=0) for g in range(num_groups)])
    return owner


def confusion_partition(confusion: np.ndarray, num_groups: int, seed: int = 0) -> list[list[int]]:
    """Balanced groups of classes (sizes differ by at most 1) that keep G's confusions inside one group.

    Spectral embedding of the symmetrised confusion, capacity-constrained k-means (a few seeded starts),
    then refine_by_swaps; the start with the highest within_group_mass wins. Deterministic for a seed.
    Groups are sorted class lists, ordered by their smallest class.
    """
    a = _affinity(confusion)
    c = a.shape[0]
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or not 1 <= num_groups <= c:
        raise PartitionError(
            f"num_groups must be an integer in 1..{c} (the number of classes), got {num_groups!r}; choose how "
            "many experts should share the classes."
        )
    k = int(num_groups)
    rng = np.random.default_rng(seed)
    emb = _spectral_embedding(a, k)
    best, best_mass = None, -math.inf
    for _ in range(_RESTARTS):
        owner = _refine(a, _balanced_kmeans(emb, k, rng))
        mass = _mass(a, owner)
        mass = -math.inf if math.isnan(mass) else mass
        if best is None or mass > best_mass:
            best, best_mass = owner, mass
    groups = _groups(best, k)
    validate_partition(groups, c)
    return groups


def routing_hit_mask(
    topk_classes: np.ndarray,
    topk_probs: np.ndarray,
    labels: np.ndarray,
    class_to_expert: np.ndarray,
    num_experts: int,
) -> np.ndarray:
    """(N,) bool: the expert chosen from G's Top-k (ask_the_expert.method.router.select_experts) owns the sample's true
    class."""
    chosen = select_experts(topk_classes, topk_probs, class_to_expert, num_experts)
    y = np.asarray(labels)
    if y.shape != chosen.shape or chosen.size == 0:
        raise RoutingError(
            f"labels must hold one class id per row of topk_classes ({chosen.shape[0]} rows, at least one), got "
            f"shape {y.shape}."
        )
    return chosen == oracle_experts(y, class_to_expert)


def routing_hit_rate(
    topk_classes: np.ndarray,
    topk_probs: np.ndarray,
    labels: np.ndarray,
    class_to_expert: np.ndarray,
    num_experts: int,
) -> float:
    """Share of samples whose expert chosen from G's Top-k owns the true class (the mean of routing_hit_mask)."""
    return float(np.mean(routing_hit_mask(topk_classes, topk_probs, labels, class_to_expert, num_experts)))
