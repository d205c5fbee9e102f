"""Torch side of deployment: checkpoints -> a verified ONNX bundle (DESIGN sections 3, 5, 6).

``export_bundle`` writes ``generalist.onnx`` and ``expert_<j>.onnx`` (dynamic batch, weights inside the file,
exported with ``torch.onnx.export(dynamo=True)``), ``router.json`` and ``manifest.json`` (see
``deploy.runtime``). With a labelled split (val by default) it fits the temperature, picks tau at the operating
point of DESIGN section 6 (the smallest offload whose accuracy is within ``gap`` of all-offloaded), and records
the val accuracies of every model and of the collaboration at tau.
"""

from __future__ import annotations

import json
import math
import pickle
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
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

from core.cifar100 import FINE_CLASSES, FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from core.errors import SuiteError
from core.routing import CONFIDENCE_MEASURES, fit_temperature
from core.sweep import apply_threshold, choose_operating_point, sweep_thresholds
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.transforms import CIFAR100_MEAN, CIFAR100_STD, build_transform
from deploy.runtime import (
    FORMAT_VERSION,
    GENERALIST_FILE,
    INPUT_NAME,
    MANIFEST_FILE,
    OUTPUT_NAME,
    ROUTER_FILE,
    RouterConfig,
    expert_file,
    sha256_file,
)
from lightning_modules.collaborative import CollaborativeSystem, resolve_checkpoints
from lightning_modules.generalist import GeneralistModule
from lightning_modules.vit_factory import PRESETS

# Bundles take the dataset's 32x32 images; pretrained224 models resize inside their graph.
IMAGE_SIZE = 32
OPSET = 18  # the dynamo exporter's lowest native opset: no version conversion step
# Half-width of the band put below the lowest / above the highest val confidence when tau sits at an end.
_END_MARGIN = 1e-3


class ExportError(SuiteError):
    """The export cannot run as asked (output folder, checkpoints, routing settings)."""


@dataclass(frozen=True)
class EvalData:
    """A labelled split as raw pixels: uint8 (N, 32, 32, 3) images and int64 fine labels."""

    images: np.ndarray
    labels: np.ndarray
    split: str

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(offset, images, labels) chunks of at most ``size`` samples, in order."""
        for start in range(0, len(self.labels), size):
            yield start, self.images[start : start + size], self.labels[start : start + size]


def load_eval_data(
    data_dir: str | Path,
    split: str = "val",
    check_integrity: bool = True,
    val_size: int = 5000,
    split_seed: int = 0,
    limit: int | None = None,
) -> EvalData:
    """The raw images and labels of a CIFAR-100 split, with the datamodule's seeded train/val split."""
    if split not in ("train", "val", "test"):
        raise ExportError(f"Unknown split {split!r}; choose val (default), test or train.")
    dm = CIFAR100DataModule(
        data_dir=str(data_dir), check_integrity=check_integrity, val_size=val_size, split_seed=split_seed
    )
    dm.setup("test" if split == "test" else "fit")
    file = dm.test_file if split == "test" else dm.train_file
    indices = {"train": dm.train_indices, "val": dm.val_indices, "test": dm.test_indices}[split][:limit]
    if len(indices) == 0:
        raise ExportError(f"The {split} split of {data_dir} is empty; check --val-size / --limit.")
    return EvalData(file.images[indices], file.fine_labels[indices].astype(np.int64), split)


def torch_inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW through the datamodule's eval transform (training's pipeline)."""
    return build_transform("none")(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


@torch.inference_mode()
def torch_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Eager PyTorch logits (float32 numpy) of ``model`` in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float().numpy()


@dataclass
class LoadedModels:
    """The generalist, and (when experts were given) the CollaborativeSystem holding it and the experts."""

    generalist: GeneralistModule
    system: CollaborativeSystem | None
    generalist_path: Path
    expert_paths: list[Path]

    @property
    def experts(self) -> list[nn.Module]:
        return list(self.system.experts) if self.system is not None else []

    @property
    def subsets(self) -> list[list[int]]:
        return [list(map(int, s)) for s in self.system.hparams.subsets] if self.system is not None else []


def load_models(
    generalist: str | Path, experts: Sequence[str | Path], k: int = 1, confidence: str = "max_prob"
) -> LoadedModels:
    """Load and check the checkpoints; experts (files, folders or globs) must partition the classes.

    With experts this is ``CollaborativeSystem.from_checkpoints`` (roles, class counts, expert indices and the
    partition are checked there); without, a generalist-only bundle.
    """
    g_path = Path(generalist)
    if experts:
        expert_paths = resolve_checkpoints(experts, "--experts")
        system = CollaborativeSystem.from_checkpoints(
            g_path, expert_paths, k_values=[k], confidence_measures=[confidence], temperature=1.0, route_k=k
        )
        return LoadedModels(system.generalist, system, g_path, expert_paths)
    if not g_path.is_file():
        raise ExportError(f"--generalist {str(g_path)!r} does not exist; pass the generalist's .ckpt file.")
    try:
        model = GeneralistModule.load_from_checkpoint(g_path, map_location="cpu")
    except (TypeError, KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ExportError(
            f"--generalist {str(g_path)!r} is not a generalist checkpoint of this suite ({type(exc).__name__}). "
            "Pass a .ckpt written by train.py fit -c configs/generalist.yaml."
        ) from None
    if model.hparams.role != "generalist":
        raise ExportError(
            f"--generalist {str(g_path)!r} holds a {model.hparams.role} model; pass the edge generalist's "
            "checkpoint (role generalist)."
        )
    return LoadedModels(model, None, g_path, [])


def operating_tau(curve: dict[str, np.ndarray], gap: float) -> float:
    """tau of the val operating point (DESIGN section 6), moved to the middle of its confidence gap.

    Every tau between the last offloaded and the first kept val confidence splits val the same way; the
    midpoint keeps float noise between PyTorch and onnxruntime (~1e-6) from flipping samples next to it.
    """
    point = choose_operating_point(curve, "within_gap", gap)
    values = curve["tau"][:-1]  # the distinct val confidences, ascending
    idx = int(np.searchsorted(curve["tau"], point["tau"]))
    if idx == 0:
        return float(values[0] - _END_MARGIN)
    if idx == len(values):
        return float(values[-1] + _END_MARGIN)
    return float((values[idx - 1] + values[idx]) / 2.0)


@torch.inference_mode()
def evaluate_models(
    models: LoadedModels,
    data: EvalData,
    temperature: float | None,
    tau: float | None,
    gap: float = 0.005,
    batch_size: int = 256,
) -> tuple[float, float | None, dict[str, Any]]:
    """(temperature, tau, metrics) on a labelled split: T fitted unless given, tau chosen unless given.

    The collaboration is simulated with ``CollaborativeSystem.evaluation_records`` (G once, each distinct
    (sample, expert) pair of the Top-k choice and the oracle once) and ``core.sweep``.
    """
    x = torch_inputs(data.images)
    g_logits = torch_logits(models.generalist, x, batch_size)
    labels = data.labels
    if temperature is None:
        temperature = fit_temperature(g_logits, labels)
    metrics: dict[str, Any] = {
        "split": data.split,
        "num_samples": len(labels),
        "generalist_accuracy": float(np.mean(np.argmax(g_logits, axis=1) == labels)),
    }
    if models.system is None:
        return temperature, None, metrics
    system = models.system
    system.set_temperature(temperature)
    k, measure = system.route_k, system.confidence_measures[0]
    records = [
        system.evaluation_records((x[s : s + len(y)], torch.from_numpy(y), torch.arange(s, s + len(y))))
        for s, _, y in data.batches(batch_size)
    ]
    rec = {key: np.concatenate([r[key] for r in records]) for key in records[0]}
    conf = rec[f"conf_{measure}"]
    correct_local = rec["g_topk_classes"][:, 0] == labels
    correct_offload = rec[f"pred_k{k}"] == labels
    curve = sweep_thresholds(conf, correct_local, correct_offload)
    if tau is None:
        tau = operating_tau(curve, gap)
    at_tau = apply_threshold(conf, correct_local, correct_offload, tau)
    oracle_correct = rec["pred_oracle"] == labels
    metrics["experts"] = [
        {
            "index": j,
            "subset_accuracy": float(np.mean(oracle_correct[rec["oracle_expert"] == j]))
            if np.any(rec["oracle_expert"] == j)
            else None,
            "num_subset_samples": int(np.sum(rec["oracle_expert"] == j)),
        }
        for j in range(len(models.experts))
    ]
    metrics["all_offloaded_accuracy"] = float(np.mean(correct_offload))
    metrics["collaboration"] = {key: at_tau[key] for key in ("tau", "offload_ratio", "accuracy")}
    return temperature, tau, metrics


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


def _check_output(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not force:
        raise ExportError(
            f"The output folder {out_dir} already exists and the export never overwrites. Choose a new folder, "
            "or pass --force (force=True) to replace a previous bundle there."
        )
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file()):
        raise ExportError(
            f"{out_dir} exists and is not a bundle (no {MANIFEST_FILE}), so --force will not replace it. Remove "
            "it yourself or choose another output folder."
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
    generalist: str | Path,
    experts: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tau: float | None = None,
    k: int = 1,
    confidence: str = "max_prob",
    temperature: float | None = None,
    data: EvalData | None = None,
    gap: float = 0.005,
    force: bool = False,
    torch_export: bool = False,
    batch_size: int = 256,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write a bundle to ``out_dir`` and return its manifest.

    Args:
        generalist: the generalist checkpoint; experts: expert checkpoints (files, folders or globs) whose
            subsets partition the classes; none gives a generalist-only bundle (never offloads).
        tau: offload threshold (c < tau offloads); None chooses it on ``data`` (needs data when experts exist).
        k, confidence: Top-k routing and confidence measure (DESIGN section 3).
        temperature: softmax temperature; None fits it on ``data`` (1.0 without data).
        data: labelled split for temperature, tau and the recorded accuracies (see ``load_eval_data``).
        gap: the operating point's allowed accuracy loss against all-offloaded (0.005 = 0.5 points).
        force: replace an existing bundle at ``out_dir``.
        torch_export: also save ``torch.export`` programs (``*.pt2``) next to the ONNX files.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_output(out_dir, force)
    if tau is not None and not math.isfinite(tau):
        raise ExportError(f"tau must be a finite number, got {tau!r}; offloading happens where confidence < tau.")
    if not gap >= 0:
        raise ExportError(f"gap must be >= 0 (accuracy units, 0.005 = 0.5 points), got {gap!r}.")
    if confidence not in CONFIDENCE_MEASURES or not 1 <= k <= NUM_CLASSES:
        raise ExportError(
            f"Routing needs k in 1..{NUM_CLASSES} and a confidence measure among {', '.join(CONFIDENCE_MEASURES)}; "
            f"got k={k!r}, confidence={confidence!r}."
        )
    if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
        raise ExportError(f"temperature must be a finite number > 0 (1.0 turns scaling off), got {temperature!r}.")
    models = load_models(generalist, experts, k, confidence)
    if models.system is not None and tau is None and data is None:
        raise ExportError(
            "An export with experts needs the offload threshold: pass --tau, or a data split (--data-dir) to "
            "choose it at the val operating point."
        )
    g_hparams = models.generalist.hparams
    if g_hparams.num_classes != NUM_CLASSES:
        raise ExportError(
            f"The generalist has {g_hparams.num_classes} classes; bundles describe the {NUM_CLASSES} CIFAR-100 "
            "classes (router.json carries their names). Export models trained on all CIFAR-100 classes."
        )
    metrics = None
    temperature_source = "given" if temperature is not None else "val" if data is not None else "default"
    if data is not None:
        temperature, tau, metrics = evaluate_models(models, data, temperature, tau, gap, batch_size)
    elif temperature is None:
        temperature = 1.0
    router = RouterConfig(
        generalist_file=GENERALIST_FILE,
        expert_files=tuple(expert_file(j) for j in range(len(models.experts))),
        subsets=tuple(tuple(s) for s in models.subsets),
        k=k,
        confidence=confidence,
        temperature=float(temperature),
        tau=None if models.system is None else float(tau),
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
        "generalist": {
            "checkpoint": str(models.generalist_path),
            "sha256": sha256_file(models.generalist_path),
        },
        "experts": [{"checkpoint": str(p), "sha256": sha256_file(p)} for p in models.expert_paths],
    }
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries: list[tuple[str, nn.Module, dict[str, str]]] = [
            (GENERALIST_FILE, models.generalist.model, {"role": "generalist"})
        ]
        entries += [
            (expert_file(j), e.model, {"role": "expert", "expert_index": str(j), "subset": json.dumps(s)})
            for j, (e, s) in enumerate(zip(models.experts, models.subsets, strict=True))
        ]
        for name, model, meta in entries:
            export_onnx(model, tmp / name, {**meta, "format_version": str(FORMAT_VERSION)}, opset)
            if torch_export:
                save_torch_program(model, tmp / name.replace(".onnx", ".pt2"))
        (tmp / ROUTER_FILE).write_text(json.dumps(router.to_dict(), indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files},
            "sources": sources,
            "routing": {
                "temperature": router.temperature,
                "temperature_source": temperature_source,
                "tau": router.tau,
            },
            "evaluation": metrics,
            "versions": _versions(opset),
            "exporter": "torch.onnx.export(dynamo=True), weights embedded",
        }
        manifest["export_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def log_bundle_artifact(run: Any, folder: str | Path, name: str) -> None:
    """Log a bundle folder as a W&B artifact of type ``deploy-bundle`` on an active run."""
    import wandb

    manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    artifact = wandb.Artifact(name, type="deploy-bundle", metadata=manifest)
    artifact.add_dir(str(folder))
    run.log_artifact(artifact)
