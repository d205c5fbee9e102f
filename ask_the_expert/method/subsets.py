"""Expert subsets S_j: unions of superclasses that partition the fine classes (docs/design.md §2)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ask_the_expert.method.cifar100_classes import FINE_CLASSES, FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from ask_the_expert.utils.atomic import write_text_atomic
from ask_the_expert.utils.errors import PartitionError
from ask_the_expert.utils.received_files import read_text

PARTITION_FORMAT = "ask-the-expert/partition"
PARTITION_VERSION = 1

# Longest list of offending ids spelled out in one error message; the rest are counted.
_MAX_LISTED = 20


def _listing(items: Sequence[Any]) -> str:
    """Comma-separated items, truncated so that an error stays one readable paragraph."""
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items) - _MAX_LISTED} more)"
    return shown


def _class_label(c: int, num_classes: int) -> str:
    # Names only make sense for the real CIFAR-100 label space.
    return f"{c} ({FINE_CLASSES[c]})" if num_classes == NUM_CLASSES and 0 <= c < NUM_CLASSES else str(c)


def _valid_superclasses(superclass_names: Sequence[str]) -> str:
    return ", ".join(f"{i}={n}" for i, n in enumerate(superclass_names))


def _is_int(x: Any) -> bool:
    # bool is an int subclass but never a meaningful class/superclass id here.
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def resolve_superclasses(items: Sequence[int | str], superclass_names: Sequence[str] = SUPERCLASSES) -> list[int]:
    """Map superclass names (case-insensitive), indices or digit strings to indices, keeping order.

    Unknown entries raise PartitionError listing every valid name with its index.
    """
    if isinstance(items, (str, int, np.integer)):
        items = [items]  # a single name or index is a one-element selection
    lookup = {name.lower(): i for i, name in enumerate(superclass_names)}
    n = len(superclass_names)
    resolved: list[int] = []
    unknown: list[str] = []
    for item in items:
        if _is_int(item) and 0 <= int(item) < n:
            resolved.append(int(item))
        elif isinstance(item, str) and item.strip().lower() in lookup:
            resolved.append(lookup[item.strip().lower()])
        elif isinstance(item, str) and item.strip().isdigit() and int(item.strip()) < n:
            # Digit strings arrive from command-line overrides.
            resolved.append(int(item.strip()))
        else:
            unknown.append(repr(item))
    if unknown:
        raise PartitionError(
            f"Unknown superclass(es): {_listing(unknown)}. Use a superclass name or its index 0..{n - 1}; "
            f"valid superclasses are: {_valid_superclasses(superclass_names)}."
        )
    return resolved


def _num_superclasses(fine_to_coarse: np.ndarray) -> int:
    return int(np.max(fine_to_coarse)) + 1


def _classes_of(superclasses: Sequence[int], fine_to_coarse: np.ndarray) -> list[int]:
    mask = np.isin(fine_to_coarse, np.asarray(superclasses, dtype=np.int64))
    return np.flatnonzero(mask).astype(int).tolist()


def superclass_partition(groups_per_expert: int = 1, fine_to_coarse: np.ndarray = FINE_TO_COARSE) -> list[list[int]]:
    """Experts of g consecutive superclasses (20/g experts), each a sorted list of fine class ids."""
    fine_to_coarse = np.asarray(fine_to_coarse, dtype=np.int64)
    n_super = _num_superclasses(fine_to_coarse)
    g = groups_per_expert
    if not _is_int(g) or g < 1 or n_super % g != 0:
        divisors = [d for d in range(1, n_super + 1) if n_super % d == 0]
        raise PartitionError(
            f"groups_per_expert={g!r} does not split the {n_super} superclasses into equal experts. "
            f"Choose one of {divisors} (giving {[n_super // d for d in divisors]} experts), or list the "
            "superclass groups explicitly."
        )
    g = int(g)
    return [_classes_of(range(s, s + g), fine_to_coarse) for s in range(0, n_super, g)]


def partition_from_superclasses(
    groups: Sequence[Sequence[int | str]],
    fine_to_coarse: np.ndarray = FINE_TO_COARSE,
    superclass_names: Sequence[str] = SUPERCLASSES,
) -> list[list[int]]:
    """One expert per explicit group of superclasses (names or indices); the groups must cover each once."""
    fine_to_coarse = np.asarray(fine_to_coarse, dtype=np.int64)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or len(groups) == 0:
        raise PartitionError(
            f"Superclass groups must be a non-empty list of lists, got {groups!r}. Write e.g. "
            "[[fish, aquatic_mammals], [flowers, trees], ...] so that every superclass appears exactly once."
        )
    resolved = [resolve_superclasses(group, superclass_names) for group in groups]
    n_super = len(superclass_names)
    owners: dict[int, list[int]] = {}
    for j, group in enumerate(resolved):
        for s in group:
            owners.setdefault(s, []).append(j)
    problems = []
    empty = [j for j, group in enumerate(resolved) if not group]
    if empty:
        problems.append(f"empty groups at positions {_listing(empty)}")
    missing = [f"{s}={superclass_names[s]}" for s in range(n_super) if s not in owners]
    if missing:
        problems.append(f"superclasses in no group: {_listing(missing)}")
    doubled = [f"{s}={superclass_names[s]} (groups {v})" for s, v in sorted(owners.items()) if len(v) > 1]
    if doubled:
        problems.append(f"superclasses in more than one group: {_listing(doubled)}")
    if problems:
        raise PartitionError(
            f"The superclass groups do not partition the {n_super} superclasses: {'; '.join(problems)}. "
            "List every superclass in exactly one group."
        )
    subsets = [_classes_of(group, fine_to_coarse) for group in resolved]
    validate_partition(subsets, num_classes=len(fine_to_coarse))
    return subsets


def validate_partition(subsets: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES) -> None:
    """Raise PartitionError unless the subsets are non-empty and cover 0..num_classes-1 exactly once.

    All problems (empty subsets, bad ids, classes in several experts, missing classes) are reported at once.
    """
    if isinstance(subsets, (str, bytes)) or not isinstance(subsets, Sequence) or len(subsets) == 0:
        raise PartitionError(
            f"Expert subsets must be a non-empty list of lists of class ids, got {subsets!r}. "
            "Build them with superclass_partition() or partition_from_superclasses()."
        )
    problems = []
    empty = [j for j, s in enumerate(subsets) if len(s) == 0]
    if empty:
        problems.append(f"empty subsets for experts {_listing(empty)}")
    bad: list[str] = []
    owners: dict[int, list[int]] = {}
    for j, subset in enumerate(subsets):
        for c in subset:
            if not _is_int(c) or not 0 <= int(c) < num_classes:
                bad.append(f"{c!r} (expert {j})")
                continue
            owners.setdefault(int(c), []).append(j)
    if bad:
        problems.append(f"class ids outside 0..{num_classes - 1}: {_listing(bad)}")
    doubled = [f"{_class_label(c, num_classes)} in experts {v}" for c, v in sorted(owners.items()) if len(v) > 1]
    if doubled:
        problems.append(f"classes in more than one expert: {_listing(doubled)}")
    missing = [_class_label(c, num_classes) for c in range(num_classes) if c not in owners]
    if missing:
        problems.append(f"classes in no expert: {_listing(missing)}")
    if problems:
        raise PartitionError(
            f"The {len(subsets)} expert subsets are not a partition of the {num_classes} classes: "
            f"{'; '.join(problems)}. Give every class to exactly one expert, e.g. by building the subsets "
            "from whole superclasses with superclass_partition() or partition_from_superclasses()."
        )


def class_to_expert(subsets: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """int64 (num_classes,) table: the expert that owns each class (validates the partition first)."""
    validate_partition(subsets, num_classes)
    table = np.empty(num_classes, dtype=np.int64)
    for j, subset in enumerate(subsets):
        table[np.asarray(subset, dtype=np.int64)] = j
    return table


def membership_matrix(subsets: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """bool (num_experts, num_classes): entry [j, c] is True when class c is in S_j (validates first)."""
    owner = class_to_expert(subsets, num_classes)
    return owner[None, :] == np.arange(len(subsets))[:, None]


def parse_partition_spec(
    spec: str | int | Sequence[Sequence[int | str]] | Mapping[str, Sequence[Sequence[int]]] | None,
) -> list[list[int]]:
    """Config convenience for CIFAR-100 partitions.

    None, "superclass" or 1 -> one superclass per expert; an int g (or digit string) -> g consecutive
    superclasses per expert; a list of lists -> explicit superclass groups (names or indices); a path ending in
    ``.json`` -> a partition file of fine-class subsets (``save_partition``, e.g. a confusion-aware partition);
    ``{"subsets": [[fine classes], ...]}`` -> those subsets (how expert checkpoints record their partition).
    """
    if spec is None:
        return superclass_partition(1)
    if isinstance(spec, Mapping) and set(spec) == {"subsets"}:
        return _cifar_partition([[int(c) for c in s] for s in spec["subsets"]], "The explicit subsets")
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("superclass", "superclasses"):
            return superclass_partition(1)
        if text.isdigit():
            return superclass_partition(int(text))
        if text.endswith(".json"):
            return _cifar_partition(load_partition(spec.strip())[0], f"Partition file {spec.strip()!r}")
    elif _is_int(spec):
        return superclass_partition(int(spec))
    elif (
        isinstance(spec, Sequence)
        and len(spec) > 0
        and all(isinstance(g, Sequence) and not isinstance(g, (str, bytes)) for g in spec)
    ):
        return partition_from_superclasses(spec)
    raise PartitionError(
        f"Cannot read the expert partition spec {spec!r}. Use null or 'superclass' (one superclass per "
        "expert), an integer g dividing 20 (g consecutive superclasses per expert), a list of superclass "
        "groups such as [[fish, aquatic_mammals], [flowers, trees], ...] covering every superclass once, the "
        "path of a partition file (*.json), or {subsets: [[fine class ids], ...]}."
    )


def _cifar_partition(subsets: list[list[int]], where: str) -> list[list[int]]:
    """``subsets`` when they partition all CIFAR-100 classes (a file or list that covers fewer classes is
    refused: the experts would never answer the rest)."""
    try:
        validate_partition(subsets, NUM_CLASSES)
    except PartitionError as exc:
        raise PartitionError(f"{where}: {exc}") from None
    return subsets


def save_partition(path: str | Path, subsets: Sequence[Sequence[int]], meta: Mapping[str, Any]) -> None:
    """Write a partition as JSON atomically (temporary file in the same folder, then os.replace).

    Readers never see a half-written file; meta (e.g. how it was learned) must be JSON-serialisable.
    """
    validate_partition(subsets, sum(len(s) for s in subsets))
    if not isinstance(meta, Mapping):
        raise PartitionError(f"meta must be a mapping (e.g. how the partition was learned), got {type(meta).__name__}.")
    groups = [[int(c) for c in subset] for subset in subsets]
    doc = {
        "format": PARTITION_FORMAT,
        "version": PARTITION_VERSION,
        "num_experts": len(groups),
        "subsets": groups,
        "meta": dict(meta),
    }
    try:
        text = json.dumps(doc, indent=1)
    except (TypeError, ValueError) as exc:
        raise PartitionError(
            f"The partition's meta is not JSON-serialisable ({exc}); keep meta to strings, numbers, lists and dicts."
        ) from None
    write_text_atomic(path, text + "\n")


def load_partition(path: str | Path) -> tuple[list[list[int]], dict]:
    """Read a save_partition() file: (subsets, meta), after checking format, version and the partition itself."""
    where = f"Partition file {str(path)!r}"
    hint = "Write it with `ate-partition` (or ask_the_expert.method.subsets.save_partition)."
    text = read_text(path, "The partition file", hint, PartitionError)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PartitionError(f"{where} is not valid JSON ({exc}). {hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != PARTITION_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise PartitionError(
            f"{where} is not a partition file: format is {found!r}, expected {PARTITION_FORMAT!r}. {hint}"
        )
    if doc.get("version") != PARTITION_VERSION:
        raise PartitionError(
            f"{where} has version {doc.get('version')!r}; this code reads version {PARTITION_VERSION}. Re-create the "
            "partition with this version of the suite."
        )
    subsets, meta = doc.get("subsets"), doc.get("meta", {})
    if (
        not isinstance(subsets, list)
        or not all(isinstance(s, list) for s in subsets)
        or doc.get("num_experts") != len(subsets)
        or not isinstance(meta, dict)
    ):
        raise PartitionError(
            f"{where} is malformed: it needs 'subsets' (a list of lists of class ids), 'num_experts' equal to "
            f"their number and a 'meta' object. {hint}"
        )
    try:
        validate_partition(subsets, sum(len(s) for s in subsets))
    except PartitionError as exc:
        raise PartitionError(f"{where}: {exc}") from None
    return [[int(c) for c in s] for s in subsets], meta
