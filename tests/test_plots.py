"""ask_the_expert/results/plots.py and the results store ask_the_expert/results/evaluation_outputs.py on a synthetic
evaluation (tests/synthetic_evaluation.py): every PNG is written and readable, the colour / line-style mapping,
summary.json's fields, reading a folder back, the W&B grid curves and the findings table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from synthetic_evaluation import K_VALUES, synthetic_records, synthetic_report

from ask_the_expert.method.policies import LEARNED, POLICIES, Report
from ask_the_expert.method.sweep import accuracy_at_offload
from ask_the_expert.results.evaluation_outputs import (
    OFFLOAD_GRID_PCT,
    _json_safe,
    curve_metric,
    curves_on_grid,
    findings_table,
    is_complete,
    plot_files,
    read_evaluation,
    read_summary,
    require_complete,
    summary_dict,
    write_outputs,
)
from ask_the_expert.results.plots import (
    curve_style,
    family_colour,
    k_linestyle,
    plot_superclass_confusion,
    shown_curves,
)
from ask_the_expert.utils.errors import SuiteError


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
    assert families == set(POLICIES)  # every registered policy was evaluated, static_init included
    assert len({family_colour(f) for f in families}) == len(families)
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


def test_the_superclass_confusion_is_skipped_beyond_cifar(evaluation, tmp_path: Path) -> None:
    report, records = evaluation
    wide = {**records, "label": records["label"] + 100}  # 200-class labels: the 20 superclasses do not apply
    assert plot_superclass_confusion(report, wide, tmp_path / "confusion.png") is None  # write_plots skips it
    assert not list(tmp_path.iterdir())


def test_a_written_folder_reads_back_and_an_unfinished_one_is_refused(evaluation, tmp_path: Path) -> None:
    report, records = evaluation
    folder = write_outputs(report, records, tmp_path / "val")
    results = read_evaluation(folder)
    assert results.split == "val" and results.measures == report.measures
    assert results.summary == json.loads((folder / "summary.json").read_text())
    assert results.fitted.fuse_weight == report.fitted.fuse_weight
    for column in ("index", "label", "pred_k3", "static_init_pred_oracle", "g_topk_classes", "fused_k2"):
        np.testing.assert_array_equal(results.records[column], records[column])
    np.testing.assert_allclose(results.records["g_features"], records["g_features"], rtol=1e-6)
    next(folder.glob("plots/*.png")).unlink()  # a file the completion marker lists is gone
    assert not is_complete(folder)
    with pytest.raises(SuiteError, match="lacks files its marker lists"):
        read_summary(folder)
    with pytest.raises(SuiteError, match="It holds evaluation splits: pass"):
        require_complete(tmp_path)


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
