"""Torch side of deployment: checkpoints -> a verified ONNX bundle (docs/design.md §3, §5, §6).

``export_bundle`` writes ``generalist.onnx`` and ``expert_<j>.onnx`` (dynamic batch, weights inside the file,
exported with ``torch.onnx.export(dynamo=True)``), ``router.json``, ``manifest.json``
(ask_the_expert.deploy.bundle_format), ``MODEL_CARD.md`` (with each model's parameter count and batch-1 onnxruntime
latency on the exporting machine) and, optionally, a Triton model repository of the experts (``triton/``,
ask_the_expert.deploy.triton_repo). With labelled val data it makes every choice as the evaluation does
(docs/design.md §6, through ask_the_expert.method.policies and the same operating-point chooser): the temperature,
the fused weight and tau (the smallest offload whose accuracy is within ``gap`` of all-offloaded) on val's selection
part, a learned deferral rule on its deferral part; and it records the expected accuracies on data none of them was
chosen or fitted on (val's assessment part, or a given test split), besides their in-sample values on the selection
part, each labelled.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import timm
import torch
from torch import nn

from ask_the_expert.deploy.bundle_format import (
    FORMAT_VERSION,
    GENERALIST_FILE,
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    OUTPUT_NAME,
    ROUTER_FILE,
    RouterConfig,
    expert_file,
)
from ask_the_expert.deploy.model_card import model_card
from ask_the_expert.deploy.profile_bundle import time_session
from ask_the_expert.deploy.runtime import preprocess
from ask_the_expert.deploy.triton_repo import TRITON_FOLDER, write_triton_repository
from ask_the_expert.method.cifar100_classes import FINE_CLASSES, FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from ask_the_expert.method.costs import Profile
from ask_the_expert.method.deferral import DeferralRule
from ask_the_expert.method.holdout import ASSESSMENT, DEFERRAL, SELECTION, SelectionSplit, part_sizes, split_parts
from ask_the_expert.method.policies import (
    at_threshold,
    deployed_policy,
    expert_subset_accuracies,
    fit_choices,
    take,
)
from ask_the_expert.method.router import FIT, LEARNED, RouterSpec, fit_temperature
from ask_the_expert.method.sweep import choose_operating_point, sweep_thresholds
from ask_the_expert.models.vit_factory import PRESETS
from ask_the_expert.utils.atomic import atomic_folder
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100 import LabelledImages
from datamodules.transforms import CIFAR100_MEAN, CIFAR100_STD
from lightning_modules.checkpoints import CheckpointSpec, load_module, read_checkpoint
from lightning_modules.collaborative import CollaborativeSystem

# Bundles take the dataset's 32x32 images; pretrained224 models resize inside their graph.
IMAGE_SIZE = 32
OPSET = 18  # the dynamo exporter's lowest native opset: no version conversion step


class ExportError(SuiteError):
    """The export cannot run as asked (output folder, checkpoints, routing settings)."""


@dataclass
class ExportModels:
    """The generalist and, when experts were given, the CollaborativeSystem holding it and the experts."""

    generalist: nn.Module
    system: CollaborativeSystem | None
    generalist_path: Path
    expert_paths: list[Path]

    @property
    def experts(self) -> list[nn.Module]:
        return list(self.system.experts) if self.system is not None else []

    @property
    def subsets(self) -> list[list[int]]:
        return [list(map(int, s)) for s in self.system.hparams.subsets] if self.system is not None else []


def load_export_models(generalist: CheckpointSpec, experts: list[CheckpointSpec], spec: RouterSpec) -> ExportModels:
    """Load and check the checkpoints (lightning_modules.checkpoints); experts must partition the classes."""
    if experts:
        system = CollaborativeSystem.from_checkpoints(
            generalist, experts, k_values=[spec.k], confidence_measures=[spec.confidence], temperature=1.0,
            route_k=spec.k,
        )  # fmt: skip
        return ExportModels(system.generalist, system, system.sources["generalist"], system.sources["experts"])
    info = read_checkpoint(generalist, "--generalist", ("generalist",))
    return ExportModels(load_module(info), None, info.path, [])


@torch.inference_mode()
def torch_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Eager PyTorch logits (float32 numpy) of ``model`` in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float().numpy()


def _accuracies(records: dict[str, np.ndarray], policy_of: Any, tau: float, num_experts: int) -> dict[str, Any]:
    """The generalist's, the experts' (on their subsets), every-image-offloaded and the collaboration's accuracy at
    tau on ``records``."""
    policy = policy_of(records)
    return {
        "num_samples": len(records["label"]),
        "generalist_accuracy": float(np.mean(policy.correct_local)),
        "experts": expert_subset_accuracies(records, num_experts),
        "all_offloaded_accuracy": float(np.mean(policy.correct_offload)),
        "collaboration": at_threshold(policy, tau),
    }


def evaluate_for_export(
    models: ExportModels,
    data: LabelledImages,
    spec: RouterSpec,
    gap: float,
    answer: str,
    batch_size: int = 256,
    holdout: SelectionSplit = SelectionSplit(),
    assessment: LabelledImages | None = None,
) -> tuple[RouterSpec, DeferralRule | None, dict[str, Any]]:
    """(the spec with temperature, tau and fuse weight filled in, the deferral rule of a ``learned`` confidence,
    metrics), choosing as the evaluation does: val ``data`` is split (``holdout``); T (unless given), the fused weight
    and tau (unless given; ask_the_expert.method.sweep.choose_operating_point, the evaluation's chooser) on its
    selection part, the deferral rule on its deferral part (ask_the_expert.method.policies.fit_choices). The metrics
    are on the assessed data (``reported_on``: val's assessment part, or ``assessment``) with the selection part's
    in-sample values under ``on_selection``."""
    assess_on_val = assessment is None
    parts = split_parts(data.indices, data.labels, holdout, assess_on_val)
    chosen = parts == SELECTION
    x = data.tensors()
    g_logits = torch_logits(models.generalist, x, batch_size)
    labels = data.labels
    if spec.temperature == FIT:
        temperature = fit_temperature(g_logits[chosen], labels[chosen])
    else:
        temperature = float(spec.temperature)
    reported_on = f"{data.split} assessment part" if assess_on_val else assessment.split
    metrics: dict[str, Any] = {
        "split": data.split if assess_on_val else assessment.split,
        "chosen_on": f"{data.split} selection part",
        "reported_on": reported_on,
        "parts": {**part_sizes(parts), "seed": holdout.seed},
    }
    if models.system is None:
        if assess_on_val:
            right = (np.argmax(g_logits, axis=1) == labels)[parts == ASSESSMENT]
        else:
            logits = torch_logits(models.generalist, assessment.tensors(), batch_size)
            right = np.argmax(logits, axis=1) == assessment.labels
        metrics.update(num_samples=len(right), generalist_accuracy=float(np.mean(right)))
        return spec.resolved(temperature=temperature), None, metrics
    system = models.system
    system.set_temperature(temperature)
    records = system.records_of(x, labels, data.indices, batch_size)
    fitted = fit_choices(take(records, parts == DEFERRAL), take(records, chosen))
    policy_name = "fused" if answer == "fused" else "routed"
    spec = spec.resolved(temperature=temperature, fuse_weight=fitted.fuse_weight[spec.k] if answer == "fused" else None)
    rule = None
    if spec.confidence == LEARNED:
        if f"{policy_name}@k{spec.k}" not in fitted.deferral:
            raise ExportError("The learned confidence needs a deferral part of val: set --selection.deferral > 0.")
        rule = DeferralRule.from_dict(fitted.deferral[f"{policy_name}@k{spec.k}"])

    def policy_of(part_records: dict[str, np.ndarray]) -> Any:
        return deployed_policy(part_records, spec, rule)

    selection = take(records, chosen)
    if spec.tau is None:
        p = policy_of(selection)
        curve = sweep_thresholds(p.confidence, p.correct_local, p.correct_offload)
        spec = spec.resolved(tau=choose_operating_point(curve, "within_gap", gap)["tau"])
    if assess_on_val:
        assessed = take(records, parts == ASSESSMENT)
    else:
        assessed = system.records_of(assessment.tensors(), assessment.labels, assessment.indices, batch_size)
    metrics.update(_accuracies(assessed, policy_of, spec.tau, len(models.experts)))
    metrics["on_selection"] = _accuracies(selection, policy_of, spec.tau, len(models.experts))
    return spec, rule, metrics


def export_onnx(model: nn.Module, path: Path, metadata: dict[str, str], opset: int = OPSET) -> None:
    """One self-contained ONNX file (no external data) with a dynamic batch axis and metadata properties."""
    model = model.eval()
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))


def save_torch_program(model: nn.Module, path: Path) -> None:
    """The model as a ``torch.export`` program (``torch.export.load`` reads it), dynamic batch."""
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path))


def time_models(folder: Path, router: RouterConfig, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """{model file: median batch-1 onnxruntime latency in ms on this machine} (for the model card)."""
    x = preprocess(np.zeros((1, router.image_size, router.image_size, 3), dtype=np.uint8), router)
    out = {}
    for name in (router.generalist_file, *router.expert_files):
        session = onnxruntime.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        out[name] = round(time_session(session, x, warmup, repeats), 3)
    return out


def check_output(out_dir: Path, force: bool) -> None:
    """Refuse an existing folder unless ``force``, and never replace a folder that is not a bundle."""
    if not out_dir.exists():
        return
    if not force:
        raise ExportError(
            f"The output folder {out_dir} already exists and the export never overwrites. Choose a new folder, or "
            "pass --force (force=True) to replace a previous bundle there."
        )
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file()):
        raise ExportError(
            f"{out_dir} exists and is not a bundle (no {MANIFEST_FILE}), so --force will not replace it. Remove it "
            "yourself or choose another output folder."
        )


def _versions(opset: int) -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "onnx_opset": str(opset),
    }


def export_bundle(
    generalist: CheckpointSpec,
    experts: list[CheckpointSpec],
    out_dir: str | Path,
    *,
    routing: RouterSpec | None = None,
    data: LabelledImages | None = None,
    gap: float = 0.005,
    profile: Profile | None = None,
    answer: str = "expert",
    force: bool = False,
    torch_export: bool = False,
    triton: bool = False,
    batch_size: int = 256,
    opset: int = OPSET,
    holdout: SelectionSplit = SelectionSplit(),
    assessment: LabelledImages | None = None,
) -> dict[str, Any]:
    """Write a bundle to ``out_dir`` (under a temporary name, renamed when complete) and return its manifest.

    Args:
        generalist: the generalist checkpoint; experts: expert checkpoints (files, folders or globs) whose subsets
            partition the classes; none gives a generalist-only bundle (never offloads).
        routing: k, confidence measure, temperature (``fit``: fitted on ``data``'s selection part, 1.0 without data)
            and tau (None: chosen on that part, which a bundle with experts then needs).
        data: labelled val images: split by ``holdout`` into the parts that fit the deferral rule, make the choices
            and (without ``assessment``) measure the recorded accuracies.
        gap: the operating point's allowed accuracy loss against all-offloaded (0.005 = 0.5 points).
        profile: the cost profile the deployment is planned with; the model card says whether it was measured.
        answer: ``expert`` (an offloaded sample gets the expert's answer) or ``fused`` (the weighted geometric mean
            of G's and the expert's probabilities, its weight fitted on ``data``).
        force: replace an existing bundle at ``out_dir``.
        torch_export: also save ``torch.export`` programs (``*.pt2``) next to the ONNX files.
        holdout: how ``data`` is split (ate-evaluate's ``--selection``).
        assessment: labelled images of another split (test) to measure the recorded accuracies on, instead of
            ``data``'s assessment part.
        triton: also write a Triton model repository of the experts to ``triton/`` (ask_the_expert.deploy.triton_repo).
    """
    start = time.perf_counter()
    spec = routing or RouterSpec()
    out_dir = Path(out_dir)
    check_output(out_dir, force)
    if not gap >= 0:
        raise ExportError(f"gap must be >= 0 (accuracy units, 0.005 = 0.5 points), got {gap!r}.")
    spec.check_classes(NUM_CLASSES)
    if answer not in ("expert", "fused"):
        raise ExportError(f"--answer must be expert or fused, got {answer!r}.")
    if experts and data is None and (spec.tau is None or spec.confidence == LEARNED or answer == "fused"):
        raise ExportError(
            "An export with experts needs data to choose what the router has not been given: tau (or pass "
            "--routing.tau), the learned deferral rule (confidence learned) or the fused weight (answer fused); "
            "evaluate on a split (--evaluate_on val)."
        )
    models = load_export_models(generalist, experts, spec)
    g_hparams = models.generalist.hparams
    if g_hparams.num_classes != NUM_CLASSES:
        raise ExportError(
            f"The generalist has {g_hparams.num_classes} classes; bundles describe the {NUM_CLASSES} CIFAR-100 "
            "classes (router.json carries their names). Export models trained on all CIFAR-100 classes."
        )
    metrics, rule = None, None
    temperature_source = "given" if spec.temperature != FIT else "val selection part" if data is not None else "default"
    if data is not None:
        _progress(f"export: choosing on {data.split} ({len(data.labels)} images) the temperature and tau")
        spec, rule, metrics = evaluate_for_export(models, data, spec, gap, answer, batch_size, holdout, assessment)
    elif spec.temperature == FIT:
        spec = spec.resolved(temperature=1.0)
    router = RouterConfig(
        generalist_file=GENERALIST_FILE,
        expert_files=tuple(expert_file(j) for j in range(len(models.experts))),
        subsets=tuple(tuple(s) for s in models.subsets),
        routing=spec if models.system is not None else RouterSpec(spec.k, "max_prob", spec.temperature),
        deferral=None if rule is None else rule.to_dict(),
        image_size=IMAGE_SIZE,
        mean=tuple(CIFAR100_MEAN),
        std=tuple(CIFAR100_STD),
        class_names=FINE_CLASSES,
        superclass_names=SUPERCLASSES,
        fine_to_coarse=tuple(int(c) for c in FINE_TO_COARSE),
        model_input_size=PRESETS[g_hparams.preset][0],
    )
    router.check("the export settings")
    sources = {
        "generalist": {"checkpoint": str(models.generalist_path), "sha256": file_sha256(models.generalist_path)},
        "experts": [{"checkpoint": str(p), "sha256": file_sha256(p)} for p in models.expert_paths],
    }
    with atomic_folder(out_dir) as tmp:  # renamed to out_dir only when complete
        entries: list[tuple[str, nn.Module, dict[str, str]]] = [
            (GENERALIST_FILE, models.generalist.model, {"role": "generalist"})
        ]
        entries += [
            (expert_file(j), e.model, {"role": "expert", "expert_index": str(j), "subset": json.dumps(s)})
            for j, (e, s) in enumerate(zip(models.experts, models.subsets, strict=True))
        ]
        for i, (name, model, meta) in enumerate(entries, 1):
            began = time.perf_counter()
            export_onnx(model, tmp / name, {**meta, "format_version": str(FORMAT_VERSION)}, opset)
            if torch_export:
                save_torch_program(model, tmp / name.replace(".onnx", ".pt2"))
            _progress(f"export: {name} ({i}/{len(entries)}) in {time.perf_counter() - began:.1f} s")
        (tmp / ROUTER_FILE).write_text(json.dumps(router.to_dict(), indent=2) + "\n", encoding="utf-8")
        if triton and router.num_experts:
            write_triton_repository(tmp, router, tmp / TRITON_FOLDER)
        latency = time_models(tmp, router)
        models = {
            name: {"parameters": sum(p.numel() for p in model.parameters()), "latency_ms_batch1": latency[name]}
            for name, model, _ in entries
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sources": sources,
            "routing": {**spec.to_dict(), "temperature_source": temperature_source},
            "evaluation": metrics,
            "profile": None if profile is None else {"name": profile.name, "description": profile.description},
            "versions": _versions(opset),
            "exporter": "torch.onnx.export(dynamo=True), weights embedded",
            "models": models,
            "triton_repository": TRITON_FOLDER if (tmp / TRITON_FOLDER).is_dir() else None,
            "latency_measured_on": f"{platform.machine()}, {os.cpu_count()} CPUs, onnxruntime CPU, batch 1, median",
        }
        (tmp / MODEL_CARD_FILE).write_text(model_card(manifest, router, profile), encoding="utf-8")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest["files"] = {f: {"sha256": file_sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}
        manifest["export_seconds"] = round(time.perf_counter() - start, 2)
        # The manifest is written last: a folder without one is never taken for a bundle.
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _progress(line: str) -> None:
    print(line, flush=True)
