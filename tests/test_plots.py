"""ask_the_expert/results/plots.py and the report writers of ask_the_expert/results/evaluation_outputs.py on a synthetic
evaluation (numpy only, fast): every PNG is written and readable, the colour / line-style mapping, the reliability
diagram's ECEs, the expert load, the superclass confusion, summary.json's new fields, the W&B grid curves and the
findings table.

``synthetic_records`` (also used by tests/test_compare.py) builds records with every column
``CollaborativeSystem.evaluation_records`` writes, routed by ask_the_expert.method.policies.route_batch on random
logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE
from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.policies import LEARNED, Report, evaluate_policies
from ask_the_expert.method.routed_batch import FUSE_WEIGHTS, generalist_records, route_batch
from ask_the_expert.method.router import oracle_experts
from ask_the_expert.method.subsets import class_to_expert, superclass_partition
from ask_the_expert.method.sweep import accuracy_at_offload
from ask_the_expert.results.evaluation_outputs import (
    OFFLOAD_GRID_PCT,
    _json_safe,
    curve_metric,
    curves_on_grid,
    findings_table,
    plot_files,
    summary_dict,
    write_outputs,
)
from ask_the_expert.results.plots import (
    FAMILY_COLOURS,
    curve_style,
    expected_calibration_error,
    expert_load,
    k_linestyle,
    plot_superclass_confusion,
    reliability_variants,
    shown_curves,
    superclass_confusion,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = [REPO / "configs/profiles/edge_arm_wifi.yaml", REPO / "configs/profiles/edge_jetson_ethernet.yaml"]
K_VALUES = (1, 2, 3, 5)
TEMPERATURE = 1.7


def synthetic_records(n: int = 240, seed: int = 0, first_index: int = 0) -> dict[str, np.ndarray]:
    """Records of a 4-expert evaluation (superclass_partition(5)) with static, static_init and base answers: G is
    right where its logit boost lands, experts mostly right on their own classes, wrong elsewhere."""
    rng = np.random.default_rng(seed)
    table = class_to_expert(superclass_partition(5))
    labels = rng.integers(0, 100, n)
    logits = rng.normal(0.0, 1.0, (n, 100))
    logits[np.arange(n), labels] += rng.uniform(0.0, 6.0, n)  # confident and right, or unsure and often wrong
    routed = route_batch(logits, TEMPERATURE, K_VALUES, ["max_prob", "margin"], table, 4)
    rec = generalist_records(routed, labels, np.arange(first_index, first_index + n))
    oracle = oracle_experts(labels, table)

    def answers(expert: np.ndarray, skill: float) -> np.ndarray:
        right = (expert == oracle) & (rng.random(n) < skill)
        return np.where(right, labels, rng.integers(0, 100, n))

    g_top1 = rec["g_topk_classes"][:, 0]
    for k in K_VALUES:
        rec[f"expert_k{k}"] = routed.experts[k]
        rec[f"pred_k{k}"] = answers(routed.experts[k], 0.9)
        # Fused answers: the expert's below weight 0.5, G's above (the weight is fitted on these records).
        rec[f"fused_k{k}"] = np.stack([rec[f"pred_k{k}"] if w < 0.5 else g_top1 for w in FUSE_WEIGHTS], axis=1)
        for name, skill in (("static", 0.7), ("static_init", 0.5)):
            rec[f"{name}_expert_k{k}"] = routed.experts[k]
            rec[f"{name}_pred_k{k}"] = answers(routed.experts[k], skill)
    rec["oracle_expert"], rec["pred_oracle"] = oracle, answers(oracle, 0.9)
    for name, skill in (("static", 0.7), ("static_init", 0.5)):
        rec[f"{name}_pred_oracle"] = answers(oracle, skill)
    rec["pred_base"] = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 100, n))
    return rec


def synthetic_report(records: dict[str, np.ndarray], profiles: bool = True) -> Report:
    loaded = [load_profile(p) for p in PROFILES] if profiles else []
    report = evaluate_policies(records, loaded, resamples=100)
    report.meta = {"temperature": TEMPERATURE, "bootstrap": {"resamples": 100}}
    return report


@pytest.fixture(scope="module")
def evaluation() -> tuple[Report, dict[str, np.ndarray]]:
    records = synthetic_records()
    return synthetic_report(records), records


def test_every_png_is_written_readable_and_listed(evaluation, tmp_path: Path) -> None:
    report, records = evaluation
    folder = write_outputs(report, records, tmp_path / "val")
    pngs = plot_files(folder)
    names = {p.name for p in pngs}
    expected = {"acc_vs_offload.png", "reliability_generalist.png", "expert_load.png", "superclass_confusion.png"}
    expected |= {"hit_rate_vs_offload.png"}
    for p in ("edge_arm_wifi", "edge_jetson_ethernet"):
        expected |= {f"acc_vs_{c}__{p}.png" for c in ("latency", "edge_energy", "system_energy")}
        expected.add(f"break_even__{p}.png")
    assert names == expected
    assert sorted(names) == sorted(p.name for p in (folder / "plots").glob("*.png"))  # the marker lists them all
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 15_000, path.name  # a drawn chart, not an empty canvas
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert width >= 600 and height >= 400, path.name
            # Not a blank image: many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 20, path.name


def test_one_colour_per_family_and_one_style_per_k(evaluation) -> None:
    report, _ = evaluation
    keys = list(report.curves)
    styles = {key: curve_style(key, report.k_values) for key in keys}
    families = {key[0] for key in keys}
    assert families == set(FAMILY_COLOURS)  # every family was evaluated, static_init included
    assert len({FAMILY_COLOURS[f] for f in families}) == len(families)
    for a in keys:
        for b in keys:
            assert (styles[a].color == styles[b].color) == (a[0] == b[0]), (a, b)
            if a[1] and b[1]:
                assert (styles[a].linestyle == styles[b].linestyle) == (a[1] == b[1]), (a, b)
    assert len({k_linestyle(k, report.k_values) for k in report.k_values}) == len(report.k_values) == 4
    # The learned variant keeps its family's colour and k's style and is marked and named.
    learned = styles["routed", 3, LEARNED]
    assert learned.marker and "learned" in learned.label
    assert (learned.color, learned.linestyle) == (styles["routed", 3, "max_prob"].color, k_linestyle(3, K_VALUES))
    assert styles["routed", 3, "max_prob"].marker is None
    # Readable with 4 k values: routed at every k, every other family once (and learned once for routed/fused).
    shown = shown_curves(report)
    assert sorted(k for p, k, m in shown if p == "routed" and m == "max_prob") == list(K_VALUES)
    for policy in ("fused", "static", "static_init", "base", "oracle", "random"):
        assert len([s for s in shown if s[0] == policy and s[2] != LEARNED]) == 1, policy
    assert {s[0] for s in shown if s[2] == LEARNED} == {"routed", "fused"}
    assert len(shown) == len(set(shown)) == 4 + 6 + 2


def direct_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (confidence >= lo) & ((confidence < hi) if b < bins - 1 else (confidence <= hi))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def test_reliability_eces_equal_a_direct_computation(evaluation) -> None:
    report, records = evaluation
    conf, correct = np.array([0.05, 0.15, 0.95, 1.0]), np.array([0, 1, 1, 1])
    # Hand check: bins 0, 1 and 9 (1.0 falls in the last): (0.05 + 0.85) / 4 + (2 / 4) * 0.025.
    assert expected_calibration_error(conf, correct) == pytest.approx(0.2375, abs=1e-12)
    variants = reliability_variants(report, records)
    right = records["g_topk_classes"][:, 0] == records["label"]
    before = direct_ece(records["g_max_prob_t1"].astype(np.float64), right)
    after = direct_ece(records["g_topk_probs"][:, 0].astype(np.float64), right)
    assert [v[0].split(" (")[0] for v in variants] == ["before scaling", "after scaling"]
    assert variants[0][2] == pytest.approx(before, abs=1e-9) and variants[1][2] == pytest.approx(after, abs=1e-9)
    assert f"T = {TEMPERATURE:.3g}" in variants[1][0]
    assert before != pytest.approx(after, abs=1e-3)  # scaling at T = 1.7 changes the calibration
    without = {k: v for k, v in records.items() if k != "g_max_prob_t1"}  # older records: only the scaled G
    assert len(reliability_variants(report, without)) == 1


def test_expert_load_is_the_share_of_offloaded_samples_at_the_operating_point(evaluation) -> None:
    report, records = evaluation
    load = expert_load(report, records)
    assert sorted(load) == list(K_VALUES)
    for k, entry in load.items():
        point = next(
            p for p in report.operating_points
            if (p["policy"], p["k"], p["confidence"], p["profile"]) == ("routed", k, "max_prob", "edge_arm_wifi")
        )  # fmt: skip
        offloaded = records["conf_max_prob"].astype(np.float64) < point["tau"]
        assert entry["offload_ratio"] == pytest.approx(point["offload_ratio"], abs=1e-12)
        if offloaded.any():
            expected = [np.mean(records[f"expert_k{k}"][offloaded] == j) for j in range(4)]
            np.testing.assert_allclose(entry["shares"], expected, atol=1e-12)
            assert entry["shares"].sum() == pytest.approx(1.0)


def test_superclass_confusion_is_row_normalised_and_skipped_beyond_cifar(evaluation, tmp_path: Path) -> None:
    labels = np.array([0, 0, 1, 4])  # fine 0 (apple) and 1 -> superclass 4 and 1; fine 4 (beaver) -> 0
    preds = np.array([0, 57, 1, 30])  # 57 (pear) is fruit too; 30 (dolphin) an aquatic mammal like the beaver
    matrix = superclass_confusion(labels, preds)
    assert matrix.shape == (20, 20)
    assert matrix[FINE_TO_COARSE[0], FINE_TO_COARSE[0]] == 1.0 and matrix[1, 1] == 1.0 and matrix[0, 0] == 1.0
    np.testing.assert_allclose(matrix.sum(axis=1)[[0, 1, 4]], 1.0)
    assert matrix.sum() == pytest.approx(3.0)  # empty rows stay zero
    assert superclass_confusion(np.array([0, 100]), np.array([0, 1])) is None
    report, records = evaluation
    wide = {**records, "label": records["label"] + 100}  # 200-class labels: the 20 superclasses do not apply
    assert plot_superclass_confusion(report, wide, tmp_path / "confusion.png") is None  # write_plots skips it
    assert not list(tmp_path.iterdir())


def test_summary_json_serialises_the_new_report_fields(evaluation) -> None:
    report, _ = evaluation
    summary = summary_dict(report)
    text = json.dumps(summary, allow_nan=False)  # NaN became null, numpy arrays lists, tuples lists
    back = json.loads(text)
    assert back["references"] == pytest.approx(report.references)
    assert back["hit_rates"] == {str(k): pytest.approx(v) for k, v in report.hit_rates.items()}
    assert set(back["fitted"]["fuse_weight"]) == {str(k) for k in K_VALUES}
    assert len(back["findings"]) == len(report.findings) > 0
    assert {"claim", "low", "high", "verdict"} <= set(back["findings"][0])
    assert len(back["break_even"]) == 2
    for entry, original in zip(back["break_even"], report.break_even, strict=True):
        assert "costs" not in entry
        assert entry["profile"] == original["profile"] and entry["feasible"] == original["feasible"]
        assert np.array_equal(np.array(entry["best"]["latency_ms"]), original["best"]["latency_ms"])
        assert entry["x_values"] == pytest.approx(original["x_values"].tolist())
        assert entry["profile_point"] == list(original["profile_point"])
    raw = {"a": np.array([[1.0, np.nan]]), "b": (1, np.float32(2.5)), "c": np.bool_(True), "d": math.inf}
    assert _json_safe(raw) == {"a": [[1.0, None]], "b": [1, 2.5], "c": True, "d": None}


def test_wandb_grid_curves_follow_accuracy_at_offload(evaluation) -> None:
    report, _ = evaluation
    grid = curves_on_grid(report)
    profile = report.profiles[1]
    for key in (("routed", 3, "max_prob"), ("base", 0, "margin"), ("fused", 1, LEARNED)):
        acc = grid[curve_metric("val", key, "accuracy")]
        energy = grid[curve_metric("val", key, "system_energy_mj", profile.name)]
        assert len(acc) == len(energy) == len(OFFLOAD_GRID_PCT) == 101
        costed = report.curve_with_costs(key, profile)
        for pct in (0, 1, 13, 50, 99, 100):
            assert acc[pct] == pytest.approx(accuracy_at_offload(report.curves[key], pct / 100), abs=1e-12)
            i = np.flatnonzero(costed["offload_ratio"] <= pct / 100 + 1e-12)[-1]
            assert energy[pct] == pytest.approx(float(costed["system_energy_mj"][i]), rel=1e-12)
    assert curve_metric("val", ("static_init", 2, "max_prob"), "latency_ms", "a.b") == (
        "collab_val/curves/static_init_k2_max_prob/latency_ms/a_b"
    )


def test_findings_table_lists_every_finding_with_its_verdict(evaluation) -> None:
    report, _ = evaluation
    console = Console(width=400, record=True)  # wide enough that no claim wraps
    console.print(findings_table(report))
    lines = console.export_text().splitlines()
    for f in report.findings:
        row = next(line for line in lines if f.claim in line and f.group in line)
        assert row.rstrip(" │").endswith(f.verdict)
        if f.unit == "accuracy":  # a and b in %, the difference and its interval in points
            assert f"{100 * f.a:.1f} %" in row and f"{100 * f.difference:+.2f} pts [{100 * f.low:+.2f}," in row
