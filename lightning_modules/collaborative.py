"""The collaborative system (DESIGN section 3): the edge generalist, the near-edge experts and the router.

Two paths share one routing function (``_route``), so deployment and evaluation decide identically:

- ``predict_step`` is real routed inference at one threshold ``tau`` and one ``route_k``: only the chosen
  expert runs, and only on the samples whose confidence is below ``tau``.
- ``validation_step`` / ``test_step`` evaluate every policy at once without a threshold: G runs once per
  sample and every distinct (sample, expert) pair that some policy needs (each k's Top-k choice, the oracle
  choice, the static experts' choices) runs exactly once (``core.routing.experts_needed``); the base
  ("medium") model runs on every sample. They return per-sample records (O(N x k) numbers, never the experts'
  logits) that ``callbacks.CollaborativeInferenceCallback`` sweeps over tau.

Temperature ``"fit"``: before the first validation epoch the system runs G over the val loader, keeps those
logits (N_val x classes, G only) to fit T with ``core.routing.fit_temperature`` and reuses them in
``validation_step`` instead of running G again, so an evaluation still costs one G forward per sample. The
fitted T is a buffer (saved with the module) and is reused unchanged on test.
"""

from __future__ import annotations

import glob
import math
import pickle
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader

from core.errors import PartitionError, RoutingError, SuiteError
from core.routing import (
    CONFIDENCE_MEASURES,
    confidence,
    experts_needed,
    fit_temperature,
    oracle_experts,
    select_experts,
    softmax,
    top_k,
)
from core.subsets import class_to_expert
from lightning_modules.expert import ExpertModule
from lightning_modules.generalist import GeneralistModule

Records = dict[str, np.ndarray]
CheckpointSpec = str | Path


class CollaborativeSystem(LightningModule):
    """Generalist + experts (+ optional static experts and base model) with Top-k routing.

    Args:
        generalist: the edge model; called on images, returns (N, num_classes) logits.
        experts: expert ``j`` owns ``subsets[j]``; every expert returns (N, num_classes) logits.
        subsets: the fine classes of each expert; must partition ``0..num_classes-1``.
        static_experts, static_subsets: the static-expert baseline (same routing, its own partition).
        base: the all-class "medium" model; the ``base`` policy offloads to it instead of an expert.
        k_values: the Top-k values evaluated (each in ``1..num_classes``).
        confidence_measures: ``max_prob``, ``margin`` and/or ``entropy``; the first is the primary one.
        temperature: ``"fit"`` (temperature scaling on val, see the module docstring) or a number > 0.
        tau: the offload threshold of ``predict_step`` (take it from an evaluation's operating point).
        route_k: the k of ``predict_step`` (default: the first of ``k_values``).
        num_classes: default ``generalist.hparams.num_classes``, else the size of the partition.
    """

    def __init__(
        self,
        generalist: nn.Module,
        experts: Sequence[nn.Module],
        subsets: Sequence[Sequence[int]],
        static_experts: Sequence[nn.Module] | None = None,
        static_subsets: Sequence[Sequence[int]] | None = None,
        base: nn.Module | None = None,
        k_values: Sequence[int] = (1, 2, 3, 5),
        confidence_measures: Sequence[str] = ("max_prob",),
        temperature: str | float = "fit",
        tau: float = 0.5,
        route_k: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generalist", "experts", "static_experts", "base"])
        if num_classes is None:
            hparams = getattr(generalist, "hparams", {})
            num_classes = hparams.get("num_classes") or sum(len(s) for s in subsets)
        self.num_classes = int(num_classes)
        self.generalist = generalist
        self.experts = nn.ModuleList(experts)
        self.static_experts = nn.ModuleList(static_experts or [])
        self.base = base
        self.class_to_expert = _partition_table(subsets, len(self.experts), self.num_classes, "experts")
        self.static_class_to_expert = (
            _partition_table(
                static_subsets or [], len(self.static_experts), self.num_classes, "static experts"
            )
            if self.static_experts
            else None
        )
        self.k_values = _check_k_values(k_values, self.num_classes)
        self.route_k = _check_k_values([route_k or self.k_values[0]], self.num_classes)[0]
        self.confidence_measures = _check_measures(confidence_measures)
        self.tau = float(tau)
        self.temperature_mode = _check_temperature(temperature)
        fixed = math.nan if self.temperature_mode == "fit" else float(temperature)
        self.register_buffer("temperature", torch.tensor(fixed, dtype=torch.float64))
        for model in self._models():
            model.eval()
            model.requires_grad_(False)
        self.forward_counts: Counter[str] = Counter()
        # G's val logits from the temperature-fitting pass, looked up by file index (sorted).
        self._cached_index = np.zeros(0, dtype=np.int64)
        self._cached_logits = torch.zeros(0, self.num_classes)

    @classmethod
    def from_checkpoints(
        cls,
        generalist: CheckpointSpec,
        experts: Sequence[CheckpointSpec],
        static_experts: Sequence[CheckpointSpec] | None = None,
        base: CheckpointSpec | None = None,
        **router: Any,
    ) -> CollaborativeSystem:
        """Load and check the checkpoints (roles, partitions, class counts); ``router`` goes to ``__init__``.

        ``experts`` / ``static_experts`` items are checkpoint files, folders (their ``*.ckpt``) or globs.
        """
        g_path = Path(generalist)
        g_hparams = _checkpoint_hparams(g_path, "--generalist")
        _require_role(
            g_path,
            g_hparams,
            ("generalist",),
            "--generalist",
            "the edge generalist (train.py fit -c configs/generalist.yaml)",
        )
        num_classes = int(g_hparams.get("num_classes", 100))
        # Cheap argument errors first, before minutes of loading expert weights.
        _check_k_values(router.get("k_values", [1]), num_classes)
        _check_measures(router.get("confidence_measures", ["max_prob"]))
        _check_temperature(router.get("temperature", "fit"))
        g_model = GeneralistModule.load_from_checkpoint(g_path, map_location="cpu")
        e_models, e_subsets = _load_expert_set(experts, num_classes, "--experts")
        s_models, s_subsets = (
            _load_expert_set(static_experts, num_classes, "--static-experts")
            if static_experts
            else ([], None)
        )
        b_model = None
        if base is not None:
            b_path = Path(base)
            b_hparams = _checkpoint_hparams(b_path, "--base")
            _require_role(b_path, b_hparams, ("base",), "--base", "the stage-0 base (medium) model")
            _require_classes(b_path, b_hparams, num_classes, "--base")
            b_model = GeneralistModule.load_from_checkpoint(b_path, map_location="cpu")
        return cls(
            g_model,
            e_models,
            e_subsets,
            static_experts=s_models,
            static_subsets=s_subsets,
            base=b_model,
            num_classes=num_classes,
            **router,
        )

    def _models(self) -> list[nn.Module]:
        return [self.generalist, *self.experts, *self.static_experts, *([self.base] if self.base else [])]

    def train(self, mode: bool = True) -> CollaborativeSystem:
        # The member models stay in eval mode: no dropout/drop-path in any of the system's forwards.
        super().train(mode)
        for model in self._models():
            model.eval()
        return self

    @property
    def temperature_value(self) -> float:
        """The softmax temperature in use (NaN until fitted when the mode is ``"fit"``)."""
        return float(self.temperature)

    def set_temperature(self, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise RoutingError(f"temperature must be a finite number > 0, got {value!r}; use 1.0 to disable.")
        self.temperature.fill_(float(value))

    def _require_temperature(self) -> float:
        value = self.temperature_value
        if math.isnan(value):
            raise SuiteError(
                "The system's temperature is 'fit' but has not been fitted yet. Run trainer.validate() on "
                "the val split first (it fits T before evaluating), or pass a fixed temperature such as 1.0."
            )
        return value

    # ---------------------------------------------------------------- routing
    def _route(self, logits: torch.Tensor, k_values: Sequence[int]) -> dict[str, Any]:
        """Probabilities, confidences, G's Top-kmax and the chosen expert per k (all numpy, on CPU)."""
        probs = softmax(logits.detach().float().cpu().numpy(), self._require_temperature())
        classes, top_probs = top_k(probs, max(k_values))
        chosen = {
            k: select_experts(classes[:, :k], top_probs[:, :k], self.class_to_expert, len(self.experts))
            for k in k_values
        }
        return {
            "probs": probs,
            "classes": classes,
            "top_probs": top_probs,
            "confidence": {m: confidence(probs, m) for m in self.confidence_measures},
            "chosen": chosen,
        }

    def _forward(self, model: nn.Module, images: torch.Tensor, counter: str) -> torch.Tensor:
        self.forward_counts[counter] += int(images.shape[0])
        return model(images)

    def predict_step(self, batch: Any, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Routed inference: offload where confidence < tau; only the chosen experts run, only on those.

        Returns ``prediction``, ``confidence`` (primary measure), ``expert`` (-1 = answered by G),
        ``offloaded``, and the batch's ``labels`` and ``indices``.
        """
        images = batch[0]
        logits = self._forward(self.generalist, images, "generalist")
        routed = self._route(logits, [self.route_k])
        conf = routed["confidence"][self.confidence_measures[0]]
        # float64 like core.sweep and the deployment runtime: numpy would round tau to float32 otherwise.
        offloaded = np.asarray(conf, dtype=np.float64) < self.tau
        prediction = routed["classes"][:, 0].copy()
        expert = np.where(offloaded, routed["chosen"][self.route_k], -1)
        for j in np.unique(expert[offloaded]):
            rows = np.flatnonzero(expert == j)
            out = self._forward(
                self.experts[int(j)], images[torch.from_numpy(rows).to(images.device)], "expert"
            )
            prediction[rows] = out.argmax(-1).cpu().numpy()
        result = {
            "prediction": torch.from_numpy(prediction),
            "confidence": torch.from_numpy(np.asarray(conf)),
            "expert": torch.from_numpy(expert),
            "offloaded": torch.from_numpy(offloaded),
        }
        if len(batch) > 2:
            result.update(labels=batch[1], indices=batch[2])
        return result

    # ------------------------------------------------------------- evaluation
    def _run_pairs(
        self, models: nn.ModuleList, images: torch.Tensor, assignments: Sequence[np.ndarray], counter: str
    ) -> list[np.ndarray]:
        """Each assignment's prediction per sample, running every distinct (sample, model) pair once."""
        n = images.shape[0]
        table = np.full((n, len(models)), -1, dtype=np.int64)  # per batch only, never stored
        for j, rows in experts_needed(assignments, len(models)).items():
            if len(rows):
                out = self._forward(models[j], images[torch.from_numpy(rows).to(images.device)], counter)
                table[rows, j] = out.argmax(-1).cpu().numpy()
        return [table[np.arange(n), a] for a in assignments]

    def _generalist_logits(
        self, images: torch.Tensor, indices: torch.Tensor, use_cache: bool
    ) -> torch.Tensor:
        if use_cache and len(self._cached_index):
            idx = indices.cpu().numpy()
            pos = np.minimum(np.searchsorted(self._cached_index, idx), len(self._cached_index) - 1)
            if np.array_equal(self._cached_index[pos], idx):
                return self._cached_logits[torch.from_numpy(pos)]
        return self._forward(self.generalist, images, "generalist")

    def evaluation_records(self, batch: Any, use_cache: bool = False) -> Records:
        """Per-sample records of one batch ``(images, labels, file_indices)`` for every policy."""
        images, labels, indices = batch[0], batch[1], batch[2]
        routed = self._route(self._generalist_logits(images, indices, use_cache), self.k_values)
        label = labels.cpu().numpy().astype(np.int64)
        rec: Records = {
            "index": indices.cpu().numpy().astype(np.int64),
            "label": label,
            "g_topk_classes": routed["classes"].astype(np.int32),
            "g_topk_probs": routed["top_probs"].astype(np.float32),
        }
        for m, c in routed["confidence"].items():
            rec[f"conf_{m}"] = np.asarray(c, dtype=np.float32)
        chosen = [routed["chosen"][k] for k in self.k_values]
        oracle = oracle_experts(label, self.class_to_expert)
        preds = self._run_pairs(self.experts, images, [*chosen, oracle], "expert")
        for k, a, p in zip(self.k_values, chosen, preds, strict=False):
            rec[f"expert_k{k}"], rec[f"pred_k{k}"] = a.astype(np.int16), p.astype(np.int32)
        rec["oracle_expert"], rec["pred_oracle"] = oracle.astype(np.int16), preds[-1].astype(np.int32)
        if self.static_class_to_expert is not None:
            static = [
                select_experts(
                    routed["classes"][:, :k],
                    routed["top_probs"][:, :k],
                    self.static_class_to_expert,
                    len(self.static_experts),
                )
                for k in self.k_values
            ]
            static_preds = self._run_pairs(self.static_experts, images, static, "static_expert")
            for k, a, p in zip(self.k_values, static, static_preds, strict=True):
                rec[f"static_expert_k{k}"], rec[f"static_pred_k{k}"] = a.astype(np.int16), p.astype(np.int32)
        if self.base is not None:
            rec["pred_base"] = (
                self._forward(self.base, images, "base").argmax(-1).cpu().numpy().astype(np.int32)
            )
        return rec

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Records:
        return self.evaluation_records(batch, use_cache=True)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Records:
        return self.evaluation_records(batch)

    def on_validation_start(self) -> None:
        self.forward_counts.clear()
        if self.temperature_mode == "fit" and math.isnan(self.temperature_value):
            self._fit_temperature_on_val()

    def on_test_start(self) -> None:
        self.forward_counts.clear()
        self._require_temperature()

    def on_predict_start(self) -> None:
        self._require_temperature()

    def _fit_temperature_on_val(self) -> None:
        loaders = self.trainer.val_dataloaders
        val = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        # A loader of its own over the same batches: iterating Lightning's loader again here would reset the
        # iterator the validation loop already holds when it uses persistent workers (no val batches left).
        loader = DataLoader(
            val.dataset,
            batch_sampler=val.batch_sampler,
            num_workers=val.num_workers,
            collate_fn=val.collate_fn,
            pin_memory=val.pin_memory,
        )
        logits, labels, indices = [], [], []
        with self.trainer.precision_plugin.forward_context():
            for batch in loader:
                batch = move_data_to_device(batch, self.device)
                logits.append(self._forward(self.generalist, batch[0], "generalist").float())
                labels.append(batch[1])
                indices.append(batch[2])
        if not logits:
            raise SuiteError(
                "The val split is empty, so the temperature cannot be fitted. Check --data-dir / --val-size, "
                "or pass a fixed temperature such as 1.0."
            )
        local_logits, local_labels, local_index = torch.cat(logits), torch.cat(labels), torch.cat(indices)
        # Every rank fits on all val samples (DDP padding duplicates removed), so all ranks agree on T.
        all_logits = self.all_gather(local_logits).reshape(-1, local_logits.shape[-1]).cpu().numpy()
        all_labels = self.all_gather(local_labels).reshape(-1).cpu().numpy()
        all_index = self.all_gather(local_index).reshape(-1).cpu().numpy()
        _, first = np.unique(all_index, return_index=True)
        self.set_temperature(fit_temperature(all_logits[first], all_labels[first].astype(np.int64)))
        order = torch.argsort(local_index.cpu())
        self._cached_index = local_index.cpu().numpy()[order.numpy()]
        self._cached_logits = local_logits.detach()[order.to(local_logits.device)]

    def _log_forward_counts(self) -> None:
        for key in ("generalist", "expert", "static_expert", "base"):
            self.log(f"eval/{key}_forwards", float(self.forward_counts[key]), reduce_fx="sum", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_forward_counts()

    def on_test_epoch_end(self) -> None:
        self._log_forward_counts()

    def configure_optimizers(self) -> None:
        # Nothing to train: the system only combines trained models.
        return None


# ------------------------------------------------------------------ helpers
def _partition_table(
    subsets: Sequence[Sequence[int]], num_models: int, num_classes: int, what: str
) -> np.ndarray:
    if len(subsets) != num_models:
        raise PartitionError(
            f"{num_models} {what} were given with {len(subsets)} subsets; give exactly one subset per model "
            "(subset j is the classes of model j)."
        )
    return class_to_expert([list(map(int, s)) for s in subsets], num_classes)


def _check_k_values(k_values: Sequence[int], num_classes: int) -> list[int]:
    ks = list(k_values)
    bad = [
        k
        for k in ks
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes
    ]
    if not ks or bad:
        raise RoutingError(
            f"k values must be integers in 1..{num_classes} (the number of classes), got {ks!r}. Top-k "
            "routing sums G's k most probable classes per expert; typical values are 1 2 3 5."
        )
    return sorted({int(k) for k in ks})


def _check_measures(measures: Sequence[str]) -> list[str]:
    ms = [measures] if isinstance(measures, str) else list(measures)
    bad = [m for m in ms if m not in CONFIDENCE_MEASURES]
    if not ms or bad:
        raise RoutingError(
            f"Unknown confidence measure(s) {bad or ms!r}. Use one or more of "
            f"{', '.join(CONFIDENCE_MEASURES)}."
        )
    return list(dict.fromkeys(ms))


def _check_temperature(temperature: str | float) -> str:
    if temperature == "fit":
        return "fit"
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise RoutingError(
            f"temperature must be 'fit' (temperature scaling on val) or a number > 0, got {temperature!r}; "
            "1.0 turns scaling off."
        )
    return "fixed"


def resolve_checkpoints(specs: Sequence[CheckpointSpec], option: str) -> list[Path]:
    """Checkpoint files from files, folders (their ``*.ckpt``) and glob patterns, in sorted order."""
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(p.glob("*.ckpt"))
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(x) for x in glob.glob(str(spec)) if Path(x).is_file())
        if not found:
            raise SuiteError(
                f"{option} {str(spec)!r} matches no checkpoint file. Give checkpoint files, a folder holding "
                f"the *.ckpt files, or a quoted glob such as 'runs/experts/*/checkpoints/last.ckpt'."
            )
        paths += found
    return list(dict.fromkeys(paths))


def _checkpoint_hparams(path: Path, option: str) -> dict[str, Any]:
    if not path.is_file():
        raise SuiteError(f"{option} {str(path)!r} does not exist; pass the path of a Lightning .ckpt file.")
    try:
        # mmap: reading the hyperparameters must not load every expert's weights twice.
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise SuiteError(
            f"{option} {str(path)!r} is not a readable Lightning checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pass a .ckpt file written by train.py."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
        raise SuiteError(
            f"{option} {str(path)!r} has no Lightning hyperparameters/state_dict, so it is not a "
            "checkpoint of this suite's models. Pass a .ckpt file written by train.py."
        )
    return dict(hparams)


def _require_role(
    path: Path, hparams: dict[str, Any], roles: tuple[str, ...], option: str, what: str
) -> None:
    role = hparams.get("role")
    if role not in roles:
        raise SuiteError(
            f"{option} {str(path)!r} is a checkpoint of a {role or 'model without a role'} model, not of "
            f"{what} (role {' or '.join(roles)}). Pass the right checkpoint for {option}."
        )


def _require_classes(path: Path, hparams: dict[str, Any], num_classes: int, option: str) -> None:
    found = hparams.get("num_classes", 100)
    if found != num_classes:
        raise SuiteError(
            f"{option} {str(path)!r} has {found} output classes but the generalist has {num_classes}; every "
            "model of the system must classify the same label space. Pass checkpoints trained on the same "
            "classes."
        )


def _load_expert_set(
    specs: Sequence[CheckpointSpec], num_classes: int, option: str
) -> tuple[list[nn.Module], list[list[int]]]:
    """Expert modules ordered by ``expert_index`` and their subsets, after checking they form a partition."""
    by_index: dict[int, list[tuple[Path, dict[str, Any]]]] = {}
    for path in resolve_checkpoints(specs, option):
        hparams = _checkpoint_hparams(path, option)
        _require_role(path, hparams, ("expert",), option, "an expert")
        _require_classes(path, hparams, num_classes, option)
        index = hparams.get("expert_index")
        if index is None:
            raise SuiteError(
                f"{option} {str(path)!r} records no expert_index (its subset is not one of its partition's "
                "subsets), so its place among the experts is unknown. Train it with --model.expert_index and "
                "the --model.partition the other experts use."
            )
        by_index.setdefault(int(index), []).append((path, hparams))
    doubled = {j: [str(p) for p, _ in items] for j, items in by_index.items() if len(items) > 1}
    if doubled:
        raise SuiteError(
            f"{option} holds several checkpoints for the same expert index: {doubled}. Pass exactly one "
            "checkpoint per expert (e.g. only last.ckpt or only best-*.ckpt of each expert run)."
        )
    expected = list(range(len(by_index)))
    if sorted(by_index) != expected:
        raise PartitionError(
            f"{option} gives experts with indices {sorted(by_index)}, but the indices must be "
            f"0..{len(by_index) - 1} with none missing. Pass the checkpoints of every "
            "expert of the partition."
        )
    subsets = [list(map(int, by_index[j][0][1].get("subset") or [])) for j in expected]
    try:
        class_to_expert(subsets, num_classes)
    except PartitionError as err:
        files = ", ".join(str(by_index[j][0][0]) for j in expected)
        raise PartitionError(f"The checkpoints of {option} ({files}) do not fit together: {err}") from None
    models = [ExpertModule.load_from_checkpoint(by_index[j][0][0], map_location="cpu") for j in expected]
    return models, subsets
