"""Today's evaluation reproduces the recorded outputs of a fixed tiny evaluation (the test split; val chooses).

tests/golden_evaluation.py builds the fixed tiny setup and documents how tests/data/golden_evaluation.json.gz was
recorded. Decisions, counts and indices must be identical; floats computed by the models get a tolerance.
"""

from __future__ import annotations

import gzip
import json
import math

import pytest
from golden_evaluation import GOLDEN_FILE, build_setup, run_evaluation

# Probabilities, confidences and the thresholds taken from them lie in [0, 1]; at the fitted temperature (~0.36)
# G's logits are scaled by ~3, so another CPU's kernels move them by a few 1e-6: an absolute tolerance.
TAU_ABS = 2e-5
# Columns whose values are decisions, counts or indices: compared exactly.
EXACT_RECORD_PREFIXES = ("index", "label", "g_pred", "g_correct", "g_top", "expert_k", "pred_", "correct_", "oracle_")
EXACT_RECORD_PREFIXES += ("static_expert_k", "static_pred_k", "static_correct_k", "fused_k", "part")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("golden")
    with gzip.open(GOLDEN_FILE, "rt", encoding="utf-8") as f:
        golden = json.load(f)
    return golden, run_evaluation(build_setup(root), root / "eval")


def _is_exact(column: str) -> bool:
    return column.startswith(EXACT_RECORD_PREFIXES) and not column.endswith("_prob")


def _close(a: object, b: object, rel: float = 1e-5, abs_: float = 1e-7) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel, abs_) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel, abs_) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)
    return a == b


@pytest.mark.parametrize("split", ["val", "test"])
def test_records_are_unchanged(outputs: tuple[dict, dict], split: str) -> None:
    golden, now = outputs[0][split]["records"], outputs[1][split]["records"]
    assert set(golden) <= set(now)
    for column, values in golden.items():
        if _is_exact(column):
            assert now[column] == values, column
        else:
            assert _close([float(v) for v in now[column]], [float(v) for v in values], abs_=TAU_ABS), column


@pytest.mark.parametrize("split", ["val", "test"])
def test_curves_are_unchanged(outputs: tuple[dict, dict], split: str) -> None:
    golden, now = outputs[0][split]["curves"], outputs[1][split]["curves"]
    assert set(golden) <= set(now)
    for key, curve in golden.items():
        assert now[key]["offload_ratio"] == curve["offload_ratio"], key
        assert now[key]["accuracy"] == curve["accuracy"], key
        assert _close(now[key]["tau"], curve["tau"], abs_=TAU_ABS), key
        assert _close(now[key]["latency_ms"], curve["latency_ms"], rel=1e-9), key


@pytest.mark.parametrize("split", ["val", "test"])
def test_summaries_are_unchanged(outputs: tuple[dict, dict], split: str) -> None:
    golden, now = outputs[0][split]["summary"], outputs[1][split]["summary"]
    for key in ("split", "reported_on", "num_samples", "k_values", "confidence_measures", "forwards", "protocol"):
        assert now[key] == golden[key], key
    assert now["primary_family"] == golden["primary_family"]
    assert now["fitted"]["fuse_weight"] == golden["fitted"]["fuse_weight"]  # chosen on val's selection part
    assert now["temperature"] == pytest.approx(golden["temperature"], rel=1e-5)  # an optimiser's result
    for section in ("scalars", "reference_points", "operating_points"):
        index = {(r["policy"], r["k"], r["confidence"], r.get("profile")): r for r in now[section]}
        assert len(index) == len(golden[section]), section
        for row in golden[section]:
            found = index[row["policy"], row["k"], row["confidence"], row.get("profile")]
            kept = dict(row)
            tau = kept.pop("tau", None)
            assert _close({k: found[k] for k in kept}, kept, rel=1e-6), (section, row)
            assert _close(found.get("tau"), tau, abs_=TAU_ABS), (section, row)
    # The findings (test only): the same comparisons, family labels and verdicts; values up to float noise.
    assert [(f["claim"], f["family"], f["verdict"]) for f in now["findings"]] == [
        (f["claim"], f["family"], f["verdict"]) for f in golden["findings"]
    ]
    for f, g in zip(now["findings"], golden["findings"], strict=True):
        assert _close([f[k] for k in ("a", "b", "difference")], [g[k] for k in ("a", "b", "difference")]), f["claim"]
    assert _close(now["profiles"], golden["profiles"], rel=1e-12)
