"""Adding a policy or a confidence measure is one declaration plus its computation: a toy one, declared here and
nowhere else, flows into the curves, the findings, the plots, the written results and the pipeline report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from synthetic_evaluation import K_VALUES, synthetic_records, synthetic_report

from ask_the_expert.method.policies import POLICIES, AnswerContext, Policy, evaluate_policies, register_policy
from ask_the_expert.method.routed_batch import route_batch
from ask_the_expert.method.router import CONFIDENCE_MEASURES, check_measures, confidence_measure
from ask_the_expert.results.evaluation_outputs import read_summary, write_outputs
from ask_the_expert.results.plots import curve_style, family_colour, shown_curves
from ask_the_expert.results.report_markdown import render_markdown
from ask_the_expert.utils.errors import RoutingError, SuiteError

TOY = "either_expert"


def either_answers(ctx: AnswerContext, k: int) -> np.ndarray:
    """The toy policy's computation: an offloaded sample is right when the routed expert or the base model is."""
    return (ctx.records[f"pred_k{k}"] == ctx.label) | (ctx.records["pred_base"] == ctx.label)


@pytest.fixture
def toy_policy() -> Iterator[Policy]:
    """The toy policy, registered for one test (the declaration is the only place it is named)."""
    yield register_policy(Policy(TOY, "either", "routed expert or base model", either_answers,
                                 versus_progressive=True))  # fmt: skip
    POLICIES.pop(TOY)


def test_a_registered_policy_flows_to_curves_findings_plots_files_and_report(toy_policy, tmp_path: Path) -> None:
    records = synthetic_records()
    report = synthetic_report(records)
    assessed = report.reported_records(records)  # the curves are on val's assessment part
    # Curves: one per k and measure, answered as declared (at every offload it is at least the routed curve).
    for k in K_VALUES:
        for measure in ("max_prob", "margin"):
            toy, routed = report.curves[TOY, k, measure], report.curves["routed", k, measure]
            assert np.all(toy["accuracy"] >= routed["accuracy"] - 1e-12)
        label = assessed["label"]
        right = (assessed[f"pred_k{k}"] == label) | (assessed["pred_base"] == label)
        assert report.curves[TOY, k, "max_prob"]["accuracy"][-1] == pytest.approx(right.mean())
    assert (TOY, 1, "learned") not in report.curves  # not declared learned
    assert {s["policy"] for s in report.scalars} >= {TOY}
    assert any(p["policy"] == TOY for p in report.operating_points)
    # Findings: progressive vs the toy policy, with its label.
    group = [f for f in report.findings if f.group == "progressive vs either"]
    assert group and all(f.b_label == "either" for f in group)
    # Plots: drawn at the primary k, in a colour of its own, with its legend.
    shown = [key for key in shown_curves(report) if key[0] == TOY]
    assert len(shown) == 1 and curve_style(shown[0], report.k_values).label.startswith("routed expert or base model")
    assert family_colour(TOY) not in {family_colour(p) for p in POLICIES if p != TOY}
    # The written results and the pipeline report.
    folder = write_outputs(report, records, tmp_path / "val")
    assert f"\n{TOY},1,max_prob," in (folder / "curves.csv").read_text()
    summary = read_summary(folder)
    seed = {"seed": 0, "generalist": {}, "base": {}, "experts": {}, "evaluation": summary}
    markdown = render_markdown([seed], {"preset": "toy"}, [])
    assert f"| {TOY} | " in markdown and "| **progressive vs either** (exploratory) |" in markdown


def test_a_policy_name_is_registered_once(toy_policy) -> None:
    with pytest.raises(SuiteError, match="registered already"):
        register_policy(toy_policy)


@pytest.fixture
def top2_mass() -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    @confidence_measure("top2_mass")
    def mass(p: np.ndarray) -> np.ndarray:
        """A toy measure: the probability of the two most probable classes."""
        return np.sort(p, axis=1)[:, -2:].sum(axis=1)

    yield mass
    CONFIDENCE_MEASURES.pop("top2_mass")


def test_a_registered_confidence_measure_is_routed_and_evaluated(top2_mass) -> None:
    assert check_measures(["top2_mass", "max_prob"]) == ["top2_mass", "max_prob"]
    logits = np.random.default_rng(0).normal(size=(8, 100))
    routed = route_batch(logits, 1.0, [1], ["max_prob", "top2_mass"], None)
    np.testing.assert_allclose(routed.confidence["top2_mass"], routed.topk_probs[:, 0] + np.sort(routed.probs)[:, -2])
    records = synthetic_records(120)
    records["conf_top2_mass"] = records["g_topk_probs"][:, :2].sum(axis=1)
    report = evaluate_policies(records, resamples=100)
    assert ("routed", 2, "top2_mass") in report.curves and "top2_mass" in report.measures
    with pytest.raises(RoutingError, match="exists already"):
        confidence_measure("margin")(top2_mass)
