"""CollaborativeInferenceCallback: W&B grid curves/tables/images/summary (read back from the offline run), files,
operating points chosen on val's selection part applied on test, and the DDP merge of rank records."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_collaborative_system import image_loader, tiny_system
from torch.utils.data import DataLoader, DistributedSampler

from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.policies import evaluate_policies, merge_records
from ask_the_expert.method.sweep import accuracy_at_offload
from ask_the_expert.results.evaluation_outputs import CURVE_COLUMNS
from ask_the_expert.tracking.wandb_logger import SuiteWandbLogger
from benchmarks.common import quiet_trainer
from callbacks.collaborative_eval import CollaborativeInferenceCallback

REPO = Path(__file__).resolve().parents[1]
PROFILES = [REPO / "configs/profiles/edge_arm_wifi.yaml", REPO / "configs/profiles/edge_jetson_ethernet.yaml"]


def read_wandb_records(path: Path) -> list:
    """Records of an offline ``run-*.wandb`` file (LevelDB log format: 32 KiB blocks of chunks with a 7-byte
    header: crc32, length, type 1=full 2=first 3=middle 4=last; the file starts with a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunk, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too small for a header: skip to the next block
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def wandb_run_content(run_dir: Path) -> tuple[list, list[dict[str, object]], dict[str, object]]:
    """(metric definitions, history rows as {key: value}, summary) of an offline run; nested keys joined by "/"."""
    metrics, rows, summary = [], [], {}
    for record in read_wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "metric":
            metrics.append(record.metric)
        elif kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return metrics, rows, summary


def test_callback_logs_to_wandb_and_writes_files(tmp_path: Path):
    # A test evaluation: val is split into a deferral part (12 of 64) and a selection part; test is assessed.
    system = tiny_system(static=True, base=True, temperature="fit", k_values=[1, 3], assess_on_val=False)
    callback = CollaborativeInferenceCallback(
        out_dir=tmp_path / "out", profiles=PROFILES, print_table=True, assess_on_val=False
    )
    logger = SuiteWandbLogger(save_dir=str(tmp_path), mode="offline", job_type="test")
    trainer = quiet_trainer(logger=logger, callbacks=[callback])
    trainer.validate(system, dataloaders=image_loader(64, seed=1), verbose=False)
    trainer.test(system, dataloaders=image_loader(48, seed=2, first_index=0), verbose=False)
    logger.experiment.finish()

    # Files: curves.csv with the documented columns and every policy, summary.json, records.csv, PNGs.
    for split, n, part in (("val", 64, 1), ("test", 48, 2)):
        folder = tmp_path / "out" / split
        with (folder / "curves.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == CURVE_COLUMNS
        policies = {(r["policy"], r["k"]) for r in rows}
        expected = {("routed", "1"), ("routed", "3"), ("static", "1"), ("static", "3"), ("base", "0")}
        expected |= {("fused", "1"), ("fused", "3")}
        expected |= {("oracle", "0"), ("random", "1"), ("random", "3"), ("generalist_only", "0")}
        assert expected | {("all_offloaded", "1"), ("all_offloaded", "3")} == policies
        assert {r["profile"] for r in rows} == {"edge_arm_wifi", "edge_jetson_ethernet"}
        with (folder / "records.csv").open() as f:
            records = list(csv.DictReader(f))
        assert len(records) == n
        # The report is on val's selection part (part 1) and on test (part 2, every sample).
        records = [r for r in records if int(r["part"]) == part]
        assert {int(r["part"]) for r in records} == {part} and (len(records) == n) == (split == "test")
        # The routed curve starts at G's accuracy and ends at the routed experts' accuracy (records agree).
        routed = [r for r in rows if r["policy"] == "routed" and r["k"] == "1" and r["profile"] == "edge_arm_wifi"]
        g_acc = np.mean([int(r["g_correct"]) for r in records])
        e_acc = np.mean([int(r["correct_k1"]) for r in records])
        assert float(routed[0]["offload_ratio"]) == 0 and float(routed[0]["accuracy"]) == g_acc
        assert float(routed[-1]["offload_ratio"]) == 1 and float(routed[-1]["accuracy"]) == e_acc
        pngs = sorted((folder / "plots").glob("*.png"))
        # acc_vs_offload, 3 cost charts and a break-even map per profile, reliability, expert load, superclass
        # confusion, hit rate; the completion marker lists every one.
        assert len(pngs) == 5 + 4 * len(PROFILES)
        assert {f"plots/{p.name}" for p in pngs} <= set(json.loads((folder / "complete.json").read_text())["files"])
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    val = json.loads((tmp_path / "out/val/summary.json").read_text())
    test = json.loads((tmp_path / "out/test/summary.json").read_text())
    assert val["num_samples"] == 52 and test["num_samples"] == 48
    assert val["protocol"]["sizes"] == {"deferral": 12, "selection": 52, "assessment": 0}
    assert test["protocol"]["sizes"] == {"deferral": 12, "selection": 52, "assessment": 48}
    assert test["protocol"]["reported_on"] == "test" and val["reported_on"] == "val selection part"
    assert test["findings"] and not val["findings"]  # findings only on assessed data
    assert val["forwards"]["generalist"] == 64 and test["forwards"]["generalist"] == 48
    assert test["temperature"] == val["temperature"] == system.temperature_value
    # Operating points are chosen on val's selection part and applied unchanged on test.
    val_tau = {(p["policy"], p["k"], p["confidence"], p["profile"]): p["tau"] for p in val["operating_points"]}
    assert len(test["operating_points"]) == len(val_tau) > 0
    for p in test["operating_points"]:
        assert p["chosen_on"] == "val selection part" and p["reported_on"] == "test"
        assert p["tau"] == val_tau[p["policy"], p["k"], p["confidence"], p["profile"]]
        assert set(p["reductions"]) == {"edge_generalist", "edge_medium", "near_edge_only"}

    # W&B: the curves on a 1 % offload grid against a declared step metric, the exact table, the findings table,
    # every PNG, and the summary scalars of summary.json.
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    metrics, rows, summary = wandb_run_content(run_dir)
    keys = set().union(*rows)
    profile = load_profile(PROFILES[0])
    for split in ("val", "test"):
        report, step = callback.reports[split], f"collab_{split}/offload_pct"
        named = {m.name: m for m in metrics if m.name}
        assert step in named and not named[step].step_metric
        assert any(m.glob_name == f"collab_{split}/curves/*" and m.step_metric == step for m in metrics)
        accuracy = f"collab_{split}/curves/routed_k3_max_prob/accuracy"
        latency = f"collab_{split}/curves/base_k0_max_prob/latency_ms/edge_arm_wifi"
        assert named[accuracy].step_metric == named[latency].step_metric == step
        grid = {row[step]: row for row in rows if step in row}
        assert sorted(grid) == list(range(101))
        for pct in (0, 7, 30, 55, 100):
            key = ("routed", 3, "max_prob")
            expected = accuracy_at_offload(report.curves[key], pct / 100)
            assert grid[pct][accuracy] == pytest.approx(expected, abs=1e-12)
            # The cost is that of the same curve point: the largest offload ratio <= the grid level.
            base = report.curve_with_costs(("base", 0, "max_prob"), profile)
            i = np.flatnonzero(base["offload_ratio"] <= pct / 100 + 1e-12)[-1]
            assert grid[pct][latency] == pytest.approx(float(base["latency_ms"][i]), rel=1e-12)
        assert grid[0][latency] == pytest.approx(60.0) and grid[100][latency] > 60.0  # edge_arm_wifi: t_G = 60 ms
        for name in ("curves", "findings"):
            assert f"collab_{split}/{name}/_type" in keys
        pngs = sorted((tmp_path / "out" / split / "plots").glob("*.png"))
        for png in pngs:
            assert keys >= {f"collab_{split}/plots/{png.stem}/_type", f"collab_{split}/plots/{png.stem}/sha256"}
        images = list((run_dir / "files/media/images" / f"collab_{split}/plots").glob("*.png"))
        assert len(images) == len(pngs)
        tables = list((run_dir / "files/media/table" / f"collab_{split}").glob("*.json"))
        curves_table = json.loads(next(p for p in tables if p.name.startswith("curves_")).read_text())
        assert curves_table["columns"] == list(CURVE_COLUMNS)
        findings = json.loads(next(p for p in tables if p.name.startswith("findings_")).read_text())
        assert findings["columns"][:4] == ["family", "member", "group", "claim"] and "verdict" in findings["columns"]
        assert len(findings["data"]) == len(report.findings) and (split == "test") == bool(report.findings)
        claims = [row[findings["columns"].index("claim")] for row in findings["data"]]
        assert claims == [f.claim for f in report.findings]
        families = {row[0] for row in findings["data"]}
        assert families == ({"primary", "exploratory"} if split == "test" else set())
    for s in test["scalars"]:
        key = f"collab_test/{s['policy']}/k{s['k']}/{s['confidence']}/area_norm"
        assert summary[key] == s["area_norm"]
    assert not any(k.startswith(("collab_val/curves/routed_", "collab_test/curves/base_")) for k in summary)
    assert summary["collab_test/forwards/expert"] == test["forwards"]["expert"]
    assert summary["eval/generalist_forwards"] == 48
    primary = [f for f in callback.reports["test"].findings if f.family == "primary"]
    assert primary and all(summary[f"collab_test/primary/{f.member}/verdict"] == f.verdict for f in primary)
    assert summary["collab_test/parts/selection"] == 52


def _rank_records(system, loader: DataLoader, world: int) -> list[dict]:
    """What each of ``world`` DDP ranks evaluates: DistributedSampler shards, padded with repeated samples."""
    parts = []
    for rank in range(world):
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
        rank_loader = DataLoader(loader.dataset, batch_size=8, sampler=sampler)
        with torch.no_grad():
            parts.append(merge_records([system.evaluation_records(b) for b in rank_loader]))
    return parts


def test_ddp_merge_drops_padding_and_gives_the_single_process_curves():
    system = tiny_system(temperature=1.0, k_values=[1, 3], base=True).eval()
    loader = image_loader(37, seed=3, batch_size=8)  # 37 samples on 2 ranks: one padding duplicate
    with torch.no_grad():
        single = merge_records([system.evaluation_records(b) for b in loader])
    ranks = _rank_records(system, loader, 2)
    assert sum(len(r["index"]) for r in ranks) == 38
    merged = merge_records(ranks)
    assert merged.keys() == single.keys()
    # Decisions, classes and indices are exact; probabilities of another batch composition differ in the last bits.
    for key in single:
        if single[key].dtype.kind == "f":
            np.testing.assert_allclose(merged[key], single[key], rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(merged[key], single[key])
    profiles = [load_profile(p) for p in PROFILES]
    a, b = evaluate_policies(single, profiles), evaluate_policies(merged, profiles)
    assert a.curves.keys() == b.curves.keys()
    for key in a.curves:
        for col in ("offload_ratio", "accuracy"):
            np.testing.assert_array_equal(a.curves[key][col], b.curves[key][col])
        # The learned confidence is a rule refitted on the features, which amplifies their last-bit noise.
        tolerance = {"rtol": 1e-2, "atol": 1e-3} if key[2] == "learned" else {"rtol": 1e-6}
        np.testing.assert_allclose(a.curves[key]["tau"], b.curves[key]["tau"], **tolerance)
    assert a.scalars == b.scalars
    for pa, pb in zip(a.operating_points, b.operating_points, strict=True):
        assert (
            pa.keys() == pb.keys() and pa["offload_ratio"] == pb["offload_ratio"] and pa["accuracy"] == pb["accuracy"]
        )
        assert pa["tau"] == pytest.approx(pb["tau"], rel=1e-2 if pa["confidence"] == "learned" else 1e-6, abs=1e-3)
