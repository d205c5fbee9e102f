"""ate-compare on evaluation folders written by ask_the_expert.results.evaluation_outputs.write_outputs from synthetic
records (numpy only): only the assessed samples compared, paired intervals over shared samples, unpaired ones
otherwise, a hand-checkable difference, the declared family's Holm-corrected verdicts, and bad inputs."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic_evaluation import synthetic_records, synthetic_report

from ask_the_expert.commands import compare
from ask_the_expert.method.stats import resample_counts
from ask_the_expert.results.evaluation_outputs import (
    curve_metric,
    offload_step_metric,
    read_records_csv,
    write_outputs,
)
from ask_the_expert.utils.errors import SuiteError

N = 200
FLIPPED = 20  # samples whose routed k=1 answer run "b" corrects (of them, those in the assessment part count)


def _write(records: dict[str, np.ndarray], folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An evaluation folder as ate-evaluate writes it from val records (chosen on the selection part, assessed on
    the assessment part, records.csv with each sample's part)."""
    monkeypatch.setattr(
        "ask_the_expert.results.evaluation_outputs.write_plots", lambda *args: []
    )  # compare never reads the plots
    return write_outputs(synthetic_report(records, profiles=False), records, folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    a = synthetic_records(N, seed=3)
    wrong = np.flatnonzero(a["pred_k1"] != a["label"])[:FLIPPED]
    b = {**a, "pred_k1": a["pred_k1"].copy()}
    b["pred_k1"][wrong] = a["label"][wrong]
    shifted = {**b, "index": b["index"] + 10_000}  # the same answers on other samples (other file indices)
    with pytest.MonkeyPatch.context() as mp:
        return {
            "a": _write(a, root / "a" / "val", mp),
            "b": _write(b, root / "b" / "val", mp),
            "shifted": _write(shifted, root / "shifted" / "val", mp),
            "copy": _write(a, root / "copy" / "val", mp),
        }


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "compare.csv").open() as f:
        return list(csv.DictReader(f))


def _assessed(folder: Path) -> dict[str, np.ndarray]:
    """The records of the assessment part (part 2) of an evaluation folder, the samples compare reads."""
    records = read_records_csv(folder / "records.csv")
    return {key: value[records["part"] == 2] for key, value in records.items()}


def _row(rows: list[dict[str, str]], run: str, statistic: str, policy: str = "routed", k: str = "1") -> dict:
    return next(
        r for r in rows
        if (r["run"], r["statistic"], r["policy"], r["k"], r["confidence"]) == (run, statistic, policy, k, "max_prob")
    )  # fmt: skip


def test_same_samples_give_paired_intervals_and_the_hand_checked_difference(folders, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    args = ["--runs", f"[{folders['a']}, {folders['b']}, {folders['copy']}]", "--out", str(out)]
    assert compare.main([*args, "--bootstrap", "300", "--policies", "[routed, fused, base]"]) == 0
    printed = capsys.readouterr().out
    assert "Primary family: runs against a, Holm-corrected" in printed and "Exploratory: runs compared" in printed
    rows = _rows(out)
    assert {r["policy"] for r in rows} == {"routed", "fused", "base", "routing"}  # routing: the hit rates
    assert {r["run"] for r in rows} == {"a", "b", "copy"}  # default labels: the path parts that differ
    diff = _row(rows, "b", "acc_all_offloaded")
    assert diff["pairing"] == "paired" and diff["vs"] == "a" and diff["family"] == "exploratory"
    # Only the assessment part is compared: the corrected samples that fall in it, over its size.
    a_rec, b_rec = _assessed(folders["a"]), _assessed(folders["b"])
    corrected = (b_rec["pred_k1"] == b_rec["label"]) & (a_rec["pred_k1"] != a_rec["label"])
    n = len(a_rec["label"])
    assert n == N // 2 and 0 < corrected.sum() < FLIPPED
    assert float(diff["value"]) - float(_row(rows, "a", "acc_all_offloaded")["value"]) == pytest.approx(
        corrected.sum() / n
    )
    assert float(diff["difference"]) == pytest.approx(corrected.sum() / n, abs=1e-12)
    # Paired: every resample counts the corrected samples for b only, so the difference is never below 0; the
    # interval is the percentile interval of (corrected samples drawn) / n under the same counts.
    low, high = float(diff["low"]), float(diff["high"])
    draws = resample_counts(n, 300, 0)[:, corrected].sum(axis=1) / n
    assert (low, high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=1e-12)
    assert 0 < low < corrected.sum() / n < high and diff["verdict"] == "holds"
    # Untouched policies and an identical copy: difference 0 with the degenerate interval [0, 0].
    for run, policy, k in (("b", "base", "0"), ("copy", "routed", "1")):
        same = _row(rows, run, "area_gain_pts", policy, k)
        assert float(same["difference"]) == float(same["low"]) == float(same["high"]) == 0.0
        assert same["verdict"] == "not established" and same["pairing"] == "paired"
    md = (out / "compare.md").read_text()
    assert "### routed" in md and "| b - a [95 %] |" in md and f"{100 * corrected.sum() / n:+.2f} pts [" in md
    assert md.index("## Primary family") < md.index("## Exploratory comparisons")
    meta = json.loads((out / "compare.json").read_text())
    assert [r["pairing"] for r in meta["runs"]] == ["reference", "paired", "paired"]
    # The default family: the evaluations' declared primary k (3) and offload (30 %), for b and copy against a.
    assert meta["primary_family"]["members"] == ["routed:k3:area_gain_pts", "routed:k3:acc@30%", "routing:k3:hit_rate"]
    assert {r["family"] for r in rows if r["run"] != "a" and (r["policy"], r["k"]) == ("routing", "3")} == {"primary"}
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["base.png", "fused.png", "routed.png"]
    assert all(p.stat().st_size > 10_000 for p in (out / "plots").glob("*.png"))


def test_routing_hit_rates_of_two_partitions_are_compared_paired(folders, tmp_path: Path, monkeypatch) -> None:
    a = read_records_csv(folders["a"] / "records.csv")
    del a["part"]
    assessed = _assessed(folders["a"])
    missed = np.flatnonzero(a["expert_k1"] != a["oracle_expert"])[: 2 * FLIPPED]
    other = {**a, "expert_k1": a["expert_k1"].copy()}
    other["expert_k1"][missed] = a["oracle_expert"][missed]  # another partition's routing finds their experts
    out = tmp_path / "cmp"
    runs = f"[{folders['a']}, {_write(other, tmp_path / 'other' / 'val', monkeypatch)}]"
    assert compare.main(["--runs", runs, "--labels", "[a, other]", "--out", str(out), "--policies", "[routed]"]) == 0
    rows = [r for r in _rows(out) if r["policy"] == "routing"]
    ks = sorted({int(r["k"]) for r in rows})
    assert ks == sorted(int(c[len("expert_k") :]) for c in a if c.startswith("expert_k"))
    first = next(r for r in rows if (r["run"], r["k"]) == ("a", "1"))
    hits = assessed["expert_k1"] == assessed["oracle_expert"]
    assert float(first["value"]) == pytest.approx(np.mean(hits), abs=1e-12)
    diff = next(r for r in rows if (r["run"], r["k"]) == ("other", "1"))
    fixed = np.isin(assessed["index"], a["index"][missed]).sum()
    assert diff["statistic"] == "hit_rate" and diff["pairing"] == "paired" and fixed > 0
    assert float(diff["difference"]) == pytest.approx(fixed / len(hits), abs=1e-12)
    assert 0 < float(diff["low"]) < fixed / len(hits) < float(diff["high"]) and diff["verdict"] == "holds"
    same = next(r for r in rows if (r["run"], r["k"]) == ("other", str(ks[-1])))
    assert float(same["difference"]) == 0.0 and same["verdict"] == "not established"
    assert "## routing" in (out / "compare.md").read_text()


def test_different_samples_give_unpaired_wider_intervals(folders, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    runs = f"[{folders['a']}, {folders['b']}, {folders['shifted']}]"
    assert compare.main(["--runs", runs, "--labels", "[a, b, s]", "--out", str(out), "--policies", "[routed]"]) == 0
    rows = _rows(out)
    paired, unpaired = _row(rows, "b", "acc_all_offloaded"), _row(rows, "s", "acc_all_offloaded")
    assert unpaired["pairing"] == "unpaired" and paired["pairing"] == "paired"
    # The same answers, so the same difference; without pairing the interval is much wider on both sides.
    assert float(unpaired["difference"]) == pytest.approx(float(paired["difference"]), abs=1e-12)
    width = {name: float(r["high"]) - float(r["low"]) for name, r in (("p", paired), ("u", unpaired))}
    assert width["u"] > 2 * width["p"]
    assert float(unpaired["low"]) < float(paired["low"]) < float(paired["high"]) < float(unpaired["high"])
    # Unpaired sampling noise of two 100-sample accuracies (~4.8 points each) swamps most of the difference.
    assert float(unpaired["low"]) < 0.03
    assert "| unpaired |" in (out / "compare.md").read_text()


def test_a_declared_family_gets_holm_corrected_verdicts(folders, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    family = "[routed:k1:acc_all_offloaded, routed:k1:acc@50%, routed:k3:area_gain_pts]"
    runs = f"[{folders['a']}, {folders['b']}]"
    assert compare.main(["--runs", runs, "--out", str(out), "--family", family, "--bootstrap", "400"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    rows = [r for r in _rows(out) if r["family"] == "primary"]
    assert [(r["policy"], r["k"], r["statistic"]) for r in rows] == [
        ("routed", "1", "acc@50%"), ("routed", "1", "acc_all_offloaded"), ("routed", "3", "area_gain_pts"),
    ]  # fmt: skip
    assert all(r["run"] == "b" and r["confidence"] == "max_prob" for r in rows)
    # Holm by hand from the raw p-values: sorted p_(j) against alpha / (3 - j + 1), adjusted = running max.
    p = np.array([float(r["p_value"]) for r in rows])
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (3 - np.arange(3)) * p[order]))
    assert [float(rows[i]["p_adjusted"]) for i in order] == pytest.approx(adjusted)
    for r in rows:
        corrected = float(r["p_adjusted"]) < 0.05
        assert r["verdict"] == ("holds" if corrected and float(r["difference"]) > 0 else r["verdict"])
        assert (r["verdict"] != "not established") == corrected
    untouched = next(r for r in rows if r["k"] == "3")  # b changed only k = 1 answers
    assert float(untouched["difference"]) == 0 and untouched["verdict"] == "not established"
    assert float(untouched["p_adjusted"]) == 1.0
    assert all(r["family"] == "exploratory" for r in _rows(out) if r["run"] == "b" and r not in rows)
    assert "Primary family: runs against a, Holm-corrected at alpha 0.05" in printed and "b: acc@50%" in printed


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        compare.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    documented = inspect.getdoc(compare.compare)
    for name in inspect.signature(compare.compare).parameters:
        assert f"--{name}" in text and f"{name}:" in documented, name


def test_bad_inputs_exit_2_with_a_message_and_write_nothing(
    folders, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(folders["a"], unfinished)
    (unfinished / "complete.json").unlink()
    no_records = tmp_path / "no_records"
    shutil.copytree(folders["a"], no_records)
    (no_records / "records.csv").unlink()
    existing = tmp_path / "existing"
    existing.mkdir()
    monkeypatch.setattr(compare, "has_wandb_credentials", lambda: False)
    a, b = folders["a"], folders["b"]
    cases = {
        "no marker": ([f"[{a}, {unfinished}]"], [], "lacks complete.json"),
        "no records": ([f"[{a}, {no_records}]"], [], "lacks records.csv"),
        "split parent": ([f"[{a}, {b.parent}]"], [], "It holds evaluation splits"),
        "one run": ([f"[{a}]"], [], "at least 2 evaluation folders"),
        "labels": ([f"[{a}, {b}]"], ["--labels", "[x]"], "--labels has 1 entries for 2 runs"),
        "same labels": ([f"[{a}, {b}]"], ["--labels", "[x, x]"], "must be distinct"),
        "bootstrap": ([f"[{a}, {b}]"], ["--bootstrap", "50"], "--bootstrap must be >= 100"),
        "policy": ([f"[{a}, {b}]"], ["--policies", "[routed, magic]"], "Unknown policies ['magic']"),
        "wandb offline": ([f"[{a}, {b}]"], ["--wandb_runs", "[me/proj/abc123]"], "no W&B credentials"),
        "family form": ([f"[{a}, {b}]"], ["--family", "[routed:3:area_gain_pts]"], "is not <policy>:k<k>:<statistic>"),
        "family name": ([f"[{a}, {b}]"], ["--family", "[routed:k3:magic]"], "unknown policy or statistic"),
        "family absent": ([f"[{a}, {b}]"], ["--family", "[routed:k4:area_gain_pts]"], "are not in every run"),
        "alpha": ([f"[{a}, {b}]"], ["--alpha", "1.5"], "--alpha must lie strictly between 0 and 1"),
    }
    for name, (runs, extra, match) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        assert compare.main(["--runs", *runs, "--out", str(out), *extra]) == 2, name
        err = " ".join(capsys.readouterr().err.split())
        assert match in err and "Traceback" not in err, (name, err)
        assert not out.exists() and not list(tmp_path.glob(".*.partial")), name
    assert compare.main(["--runs", f"[{a}, {b}]", "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and not list(existing.iterdir())


def test_an_unreachable_wandb_api_is_a_clear_error(folders, tmp_path: Path, capsys, monkeypatch) -> None:
    import wandb

    def refuse(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /graphql")

    monkeypatch.setattr(compare, "has_wandb_credentials", lambda: True)
    monkeypatch.setattr(wandb, "Api", refuse)
    out = tmp_path / "out"
    code = compare.main(["--runs", f"[{folders['a']}, {folders['b']}]", "--out", str(out), "--wandb_runs", "[e/p/r]"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Could not reach the W&B API (Max retries exceeded" in err and not out.exists()


def test_wandb_curves_are_looked_up_by_the_names_the_evaluation_logs(monkeypatch) -> None:
    import wandb

    wanted = ("static_init", 3, "max_prob")
    accuracy = curve_metric("val", wanted, "accuracy")
    latency = curve_metric("val", wanted, "latency_ms", "p")
    step = offload_step_metric("val")
    rows = [{step: level, accuracy: 0.5 + level / 1000, latency: 1.0} for level in (50, 0, 100)]

    class Api:
        def __init__(self, timeout: int) -> None:
            pass

        def run(self, path: str):
            return type("Run", (), {"scan_history": lambda self: iter(rows)})()

    monkeypatch.setattr(compare, "has_wandb_credentials", lambda: True)
    monkeypatch.setattr(wandb, "Api", Api)
    curves = compare.wandb_curves(["e/p/r"], "val", [wanted, ("routed", 1, "max_prob")])
    x, y = curves["e/p/r"][wanted]
    assert list(curves["e/p/r"]) == [wanted]  # a curve the run did not log is not made up
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(y, [0.5, 0.55, 0.6])
    with pytest.raises(SuiteError, match="none of the compared curves"):
        compare.wandb_curves(["e/p/r"], "val", [("routed", 1, "max_prob")])
