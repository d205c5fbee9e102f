"""Selection and assessment on disjoint data (docs/design.md §6): which val samples fit the learned deferral rule,
which choose (T, the fused weight, operating points, "up to" and break-even points) and which assess.

A test evaluation chooses on val and assesses on test: val is split into a deferral part and a selection part. A
val-only evaluation (no test file) also holds out an assessment part of val. The parts are stratified by fine class
and seeded, and depend only on the set of (file index, label) pairs, so the temperature fit (before the first
validation batch) and the evaluation (after the last) draw the same parts on every rank and in any batch order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ask_the_expert.utils.errors import SuiteError

DEFERRAL, SELECTION, ASSESSMENT = 0, 1, 2
PART_NAMES = {DEFERRAL: "deferral", SELECTION: "selection", ASSESSMENT: "assessment"}
# Slack for floor() of the running share (0.2 / 0.5 is 0.4 up to rounding).
_SLACK = 1e-9


@dataclass(frozen=True)
class SelectionSplit:
    """How val is divided (docs/design.md §6, "Selection and assessment"; the defaults are argued there).

    Attributes:
        assessment: share of val held out to assess a val-only evaluation (no test split): curves, scalars and
            findings are reported on it, and nothing is chosen on it. A test evaluation assesses on test instead.
        deferral: share of val that fits the learned deferral rule, disjoint from the part that fits T and chooses
            the operating points (docs/design.md §7); 0 leaves the learned deferral out.
        seed: seed of the split (stratified by fine class).
    """

    assessment: float = 0.5
    deferral: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        a, d = self.assessment, self.deferral
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, d))
        if not numbers or not 0 < a < 1 or not 0 <= d < 1 or a + d >= 1:
            raise SuiteError(
                f"--selection.assessment must lie in (0, 1) and --selection.deferral in [0, 1) with a sum below 1 (the "
                f"rest of val chooses the operating points), got {a!r} and {d!r}; the defaults are 0.5 and 0.2."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SuiteError(f"--selection.seed must be an integer, got {self.seed!r}.")


def _running_pick(n: int, share: float) -> np.ndarray:
    """(n,) bool spreading round-down(n * share) picks evenly over positions 0..n-1 (so every stretch of consecutive
    positions, e.g. one class, gets its share up to one sample)."""
    i = np.arange(n, dtype=np.float64)
    return (np.floor((i + 1) * share + _SLACK) - np.floor(i * share + _SLACK)) > 0


def split_parts(index: np.ndarray, labels: np.ndarray, split: SelectionSplit, assess_on_val: bool) -> np.ndarray:
    """(N,) int8 part of each sample: DEFERRAL, SELECTION or (when ``assess_on_val``) ASSESSMENT.

    Samples are ordered by class, randomly within a class (seeded, from the samples sorted by file index), and the
    parts are dealt out evenly along that order: floor(N * assessment) samples to assessment, then floor of the
    deferral share of val to deferral, the rest to selection; every class gets its share up to one sample. A
    SuiteError when the selection part (or the assessment part, when asked for) would be empty.
    """
    index, labels = np.asarray(index), np.asarray(labels)
    n = index.shape[0]
    if labels.shape != (n,) or len(np.unique(index)) != n:
        raise SuiteError(
            f"split_parts needs one label per sample and distinct file indices, got {n} indices "
            f"({len(np.unique(index))} distinct) and labels of shape {labels.shape}."
        )
    by_index = np.argsort(index, kind="stable")
    key = np.empty(n, dtype=np.int64)
    key[by_index] = np.random.default_rng(split.seed).permutation(n)
    order = np.lexsort((key, labels))
    parts = np.full(n, SELECTION, dtype=np.int8)
    rest = order
    if assess_on_val:
        pick = _running_pick(n, split.assessment)
        parts[order[pick]] = ASSESSMENT
        rest = order[~pick]
    share = split.deferral / (1.0 - split.assessment) if assess_on_val else split.deferral
    parts[rest[_running_pick(len(rest), share)]] = DEFERRAL
    sizes = part_sizes(parts)
    empty = [name for name in ("selection", "assessment") if not sizes[name] and (assess_on_val or name == "selection")]
    if empty:
        raise SuiteError(
            f"Val's {n} images leave the {' and '.join(empty)} part empty (--selection.assessment "
            f"{split.assessment}, --selection.deferral {split.deferral}); hold out more val images (--data.val_size) "
            "or change the shares."
        )
    return parts


def part_sizes(parts: np.ndarray) -> dict[str, int]:
    """Samples per part name (every part, 0 when empty)."""
    return {name: int(np.sum(parts == code)) for code, name in PART_NAMES.items()}
