"""Parity of a bundle with its checkpoints on a labelled split (torch side).

Three references, all on the same images: ``CollaborativeSystem.predict_step`` (real routed inference in PyTorch)
for the decisions (offloaded or not, which expert, final class); eager PyTorch logits of the generalist, of each
expert on the samples the bundle sent it and of every expert on the first batch (so every expert file is compared
whatever tau offloads, even nothing); and the simulated accuracy at tau of the evaluation path
(``CollaborativeSystem.evaluation_records`` scored by ask_the_expert.method.policies).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ask_the_expert.deploy.export import ExportError, load_export_models, torch_logits
from ask_the_expert.deploy.runtime import INPUT_NAME, OUTPUT_NAME, Bundle, preprocess
from ask_the_expert.method.policies import at_threshold, deployed_policy
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100 import LabelledImages, eval_tensors


def _checkpoints(
    bundle: Bundle, generalist: str | Path | None, experts: Sequence[str | Path] | None
) -> tuple[Path, list[Path]]:
    """The given checkpoints, or the manifest's sources; either way their sha256 must match the manifest."""
    sources = bundle.manifest.get("sources", {})
    g = Path(generalist) if generalist else Path(sources["generalist"]["checkpoint"])
    es = [Path(e) for e in experts] if experts else [Path(e["checkpoint"]) for e in sources["experts"]]
    recorded = {sources["generalist"]["sha256"], *(e["sha256"] for e in sources["experts"])}
    missing = [str(p) for p in (g, *es) if not p.is_file()]
    if missing:
        raise ExportError(
            f"Checkpoint(s) {', '.join(missing)} not found. Pass --generalist and --experts with the checkpoints the "
            "bundle was exported from (the manifest's paths are relative to where the export ran)."
        )
    changed = [str(p) for p in (g, *es) if file_sha256(p) not in recorded]
    if changed:
        raise ExportError(
            f"Checkpoint(s) {', '.join(changed)} are not among the bundle's sources (sha256 differs from "
            "manifest.json): parity is only defined against the checkpoints the bundle was exported from."
        )
    return g, es


@torch.inference_mode()
def verify_bundle(
    folder: str | Path,
    data: LabelledImages,
    generalist: str | Path | None = None,
    experts: Sequence[str | Path] | None = None,
    atol: float = 1e-4,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Run the bundle and the PyTorch references on ``data``; returns the agreement (``passed`` = all hold)."""
    bundle = Bundle.load(folder)
    spec = bundle.router.routing
    g_path, e_paths = _checkpoints(bundle, generalist, experts)
    models = load_export_models(g_path, list(e_paths), spec)
    if models.subsets != [list(s) for s in bundle.router.subsets]:
        raise ExportError("The checkpoints' expert subsets differ from router.json; pass the bundle's sources.")
    system = models.system
    rule = bundle.router.deferral_rule()
    if system is not None:
        system.set_temperature(spec.temperature)
        system.tau = spec.tau
        system.deploy(spec.confidence, rule, spec.fuse_weight)
    g_diff = e_diff = 0.0
    mismatches = 0
    runtime_correct, offloaded, records = [], [], []
    experts_checked: set[int] = set()
    for start, images, labels in data.batches(batch_size):
        x = eval_tensors(images)
        result = bundle.predict(images)
        if start == 0 and bundle.router.num_experts:  # every expert on the whole first batch
            normalised = preprocess(images, bundle.router)
            for j, session in enumerate(bundle.near_edge.sessions):
                logits = session.run([OUTPUT_NAME], {INPUT_NAME: normalised})[0]
                e_diff = max(e_diff, float(np.max(np.abs(logits - torch_logits(models.experts[j], x)))))
                experts_checked.add(j)
        g_ref = torch_logits(models.generalist, x)
        g_diff = max(g_diff, float(np.max(np.abs(result.edge.logits - g_ref))))
        if result.answer is not None:
            for j in np.unique(result.answer.experts):
                sel = result.answer.experts == j
                ref = torch_logits(models.experts[j], x[torch.from_numpy(result.answer.indices[sel])])
                e_diff = max(e_diff, float(np.max(np.abs(result.answer.logits[sel] - ref))))
                experts_checked.add(int(j))
        runtime_correct.append(result.predictions == labels)
        offloaded.append(result.edge.offloaded)
        if system is None:  # generalist-only bundle: G's top-1 is every answer
            mismatches += int(np.sum(result.predictions != np.argmax(g_ref, axis=1)))
            continue
        batch = (x, torch.from_numpy(labels), torch.arange(start, start + len(labels)))
        step = system.predict_step(batch)
        mismatches += int(
            np.sum(
                (result.predictions != step["prediction"].numpy())
                | (result.answered_by != step["expert"].numpy())
                | (result.edge.offloaded != step["offloaded"].numpy())
            )
        )
        rec = system.evaluation_records(batch)
        mismatches += int(np.sum(result.edge.experts != rec[f"expert_k{spec.k}"]))
        records.append(rec)
    accuracy = float(np.mean(np.concatenate(runtime_correct)))
    if system is None:
        simulated = float(np.mean(np.argmax(torch_logits(models.generalist, data.tensors()), axis=1) == data.labels))
    else:
        merged = {key: np.concatenate([r[key] for r in records]) for key in records[0]}
        simulated = at_threshold(deployed_policy(merged, spec, rule), spec.tau)["accuracy"]
    report = {
        "bundle": str(folder),
        "split": data.split,
        "num_samples": len(data.labels),
        "tau": spec.tau,
        "offload_ratio": float(np.mean(np.concatenate(offloaded))),
        "decision_mismatches": mismatches,
        "max_abs_logit_diff_generalist": g_diff,
        "max_abs_logit_diff_experts": e_diff,
        "experts_checked": f"{len(experts_checked)} of {bundle.router.num_experts}",
        "atol": atol,
        "accuracy_bundle": accuracy,
        "accuracy_simulated": simulated,
        "reference": "CollaborativeSystem.predict_step" if system is not None else "ClassifierModule (no experts)",
    }
    every_expert = len(experts_checked) == bundle.router.num_experts
    report["passed"] = bool(
        mismatches == 0 and g_diff <= atol and e_diff <= atol and accuracy == simulated and every_expert
    )
    return report
