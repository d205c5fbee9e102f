"""The collaborative system (docs/design.md §3): the edge generalist, the near-edge experts and the router.

Both paths route through ``ask_the_expert.method.policies.route_batch`` and offload with
``ask_the_expert.method.router.offload_mask``, so deployment and evaluation decide identically:

- ``predict_step`` is real routed inference at one threshold ``tau`` and one ``route_k``: only the chosen expert
  runs, and only on the samples whose confidence is below ``tau``.
- ``validation_step`` / ``test_step`` evaluate every policy at once without a threshold: G runs once per sample and
  every distinct (sample, expert) pair that some policy needs (each k's Top-k choice and the oracle choice, for the
  progressive experts and each baseline set of static experts) runs exactly once
  (``ask_the_expert.method.router.experts_needed``); the base ("medium") model runs on every sample. They return
  per-sample records (O(N x k) numbers, never the experts' logits: the fused answers are computed in the step for every
  candidate weight) that ask_the_expert.method.policies sweeps.

Temperature ``"fit"``: before the first validation epoch the system runs G over the val loader, keeps those logits
(N_val x classes, G only) to fit T with ``ask_the_expert.method.router.fit_temperature`` on val's selection part
(``ask_the_expert.method.holdout``: the part that also chooses the operating points, never the part that is assessed or
fits the learned deferral rule) and reuses them in ``validation_step`` instead of running G again, so an evaluation
still costs one G forward per sample. Under DDP every rank fits on the logits of all ranks (shards of unequal length are
gathered as objects). The fitted T is a buffer (saved with the module) and is reused unchanged on test.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader

from ask_the_expert.method.deferral import DeferralRule
from ask_the_expert.method.holdout import SELECTION, SelectionSplit, split_parts
from ask_the_expert.method.policies import merge_records
from ask_the_expert.method.routed_batch import (
    FUSE_WEIGHTS,
    Records,
    RoutedBatch,
    fused_predictions,
    generalist_records,
    route_batch,
)
from ask_the_expert.method.router import (
    FIT,
    LEARNED,
    check_k_values,
    check_measures,
    check_temperature,
    experts_needed,
    fit_temperature,
    offload_mask,
    oracle_experts,
)
from ask_the_expert.method.stages import BASELINE_VARIANTS
from ask_the_expert.method.subsets import class_to_expert
from ask_the_expert.results.evaluation_outputs import forward_count_metric
from ask_the_expert.utils.errors import PartitionError, RoutingError, SuiteError
from lightning_modules.checkpoints import (
    CheckpointSpec,
    load_expert_set,
    load_module,
    read_checkpoint,
    require_classes,
)
from lightning_modules.distributed import all_gather_objects


class CollaborativeSystem(LightningModule):
    """Generalist + experts (+ optional static experts and base model) with Top-k routing.

    Args:
        generalist: the edge model; called on images, returns (N, num_classes) logits.
        experts: expert ``j`` owns ``subsets[j]``; every expert returns (N, num_classes) logits.
        subsets: the fine classes of each expert; must partition ``0..num_classes-1``.
        baselines: single-stage expert sets evaluated with the same routing, by record prefix (``static``:
            static-from-base, ``static_init``: static-from-init): ``{name: (models, subsets)}``.
        base: the all-class "medium" model; the ``base`` policy offloads to it instead of an expert.
        k_values: the Top-k values evaluated (each in ``1..num_classes``).
        confidence_measures: ``max_prob``, ``margin`` and/or ``entropy``; the first is the primary one.
        temperature: ``"fit"`` (temperature scaling on val, see the module docstring) or a number > 0.
        tau: the offload threshold of ``predict_step`` (take it from an evaluation's operating point).
        route_k: the k of ``predict_step`` (default: the first of ``k_values``).
        num_classes: default ``generalist.hparams.num_classes``, else the size of the partition.
        holdout: how val is split into parts (the evaluation callback must use the same); T is fitted on the
            selection part.
        assess_on_val: whether val also holds an assessment part (a val-only evaluation) or test is assessed.
    """

    def __init__(
        self,
        generalist: nn.Module,
        experts: Sequence[nn.Module],
        subsets: Sequence[Sequence[int]],
        baselines: Mapping[str, tuple[Sequence[nn.Module], Sequence[Sequence[int]]]] | None = None,
        base: nn.Module | None = None,
        k_values: Sequence[int] = (1, 3, 5),
        confidence_measures: Sequence[str] = ("max_prob",),
        temperature: str | float = FIT,
        tau: float = 0.5,
        route_k: int | None = None,
        num_classes: int | None = None,
        holdout: SelectionSplit = SelectionSplit(),
        assess_on_val: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generalist", "experts", "baselines", "base"])
        if num_classes is None:
            hparams = getattr(generalist, "hparams", {})
            num_classes = hparams.get("num_classes") or sum(len(s) for s in subsets)
        self.num_classes = int(num_classes)
        self.generalist = generalist
        self.experts = nn.ModuleList(experts)
        unknown = sorted(set(baselines or {}) - set(BASELINE_VARIANTS))
        if unknown:
            raise SuiteError(f"Unknown baseline expert sets {unknown}; the sets are {sorted(BASELINE_VARIANTS)}.")
        self.baselines = nn.ModuleDict({name: nn.ModuleList(models) for name, (models, _) in (baselines or {}).items()})
        self.baseline_tables = {
            name: _partition_table(subs, len(models), self.num_classes, BASELINE_VARIANTS[name].title)
            for name, (models, subs) in (baselines or {}).items()
        }
        self.base = base
        self.class_to_expert = _partition_table(subsets, len(self.experts), self.num_classes, "experts")
        self.k_values = check_k_values(k_values, self.num_classes)
        self.route_k = check_k_values([route_k or self.k_values[0]], self.num_classes)[0]
        self.confidence_measures = check_measures(confidence_measures)
        self.tau = float(tau)
        self.holdout, self.assess_on_val = holdout, assess_on_val
        temperature = check_temperature(temperature)
        self.temperature_mode = "fit" if temperature == FIT else "fixed"
        fixed = math.nan if temperature == FIT else float(temperature)
        self.register_buffer("temperature", torch.tensor(fixed, dtype=torch.float64))
        for model in self._models():
            model.eval()
            model.requires_grad_(False)
        self.forward_counts: Counter[str] = Counter()
        # The checkpoint files the models came from (from_checkpoints fills it in), for provenance and lineage.
        self.sources: dict[str, Any] = {}
        # What predict_step deploys besides k and tau (``deploy``): the confidence, its rule, the fused weight.
        self.deployed_confidence, self.deferral, self.fuse_weight = self.confidence_measures[0], None, None
        # G's val logits from the temperature-fitting pass, looked up by file index (sorted).
        self._cached_index = np.zeros(0, dtype=np.int64)
        self._cached_logits = torch.zeros(0, self.num_classes)

    @classmethod
    def from_checkpoints(
        cls,
        generalist: CheckpointSpec,
        experts: Sequence[CheckpointSpec],
        baselines: Mapping[str, Sequence[CheckpointSpec] | None] | None = None,
        base: CheckpointSpec | None = None,
        **router: Any,
    ) -> CollaborativeSystem:
        """Load and check the checkpoints (roles, partitions, class counts); ``router`` goes to ``__init__``.

        ``experts`` and each baseline set's items are checkpoint files, folders (their ``*.ckpt``) or globs.
        """
        g_info = read_checkpoint(generalist, "--generalist", ("generalist",))
        num_classes = g_info.num_classes
        # Cheap argument errors first, before minutes of loading expert weights.
        check_k_values(router.get("k_values", [1]), num_classes)
        check_measures(router.get("confidence_measures", ["max_prob"]))
        check_temperature(router.get("temperature", FIT))
        b_info = None
        if base is not None:
            b_info = read_checkpoint(base, "--base", ("base",))
            require_classes(b_info, num_classes)
        expert_set = load_expert_set(experts, num_classes, "--experts")
        sets = {
            name: load_expert_set(specs, num_classes, f"--{name}_experts")
            for name, specs in (baselines or {}).items()
            if specs
        }
        system = cls(
            load_module(g_info),
            expert_set.models,
            expert_set.subsets,
            baselines={name: (e.models, e.subsets) for name, e in sets.items()},
            base=load_module(b_info) if b_info else None,
            num_classes=num_classes,
            **router,
        )
        system.sources = {
            "generalist": g_info.path,
            "experts": expert_set.paths,
            **{f"{name}_experts": e.paths for name, e in sets.items()},
            "base": b_info.path if b_info else None,
        }
        return system

    def _models(self) -> list[nn.Module]:
        baseline_models = [m for models in self.baselines.values() for m in models]
        return [self.generalist, *self.experts, *baseline_models, *([self.base] if self.base else [])]

    def train(self, mode: bool = True) -> CollaborativeSystem:
        # The member models stay in eval mode: no dropout/drop-path in any of the system's forwards.
        super().train(mode)
        for model in self._models():
            model.eval()
        return self

    @property
    def experts_routing_k(self) -> list[int]:
        """The Top-k the progressive experts' routed-in sets R_j were built at (their ``--model.routing_k``)."""
        return sorted({int(e.hparams["routing_k"]) for e in self.experts if "routing_k" in getattr(e, "hparams", {})})

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
                "The system's temperature is 'fit' but has not been fitted yet. Run trainer.validate() on the val "
                "split first (it fits T before evaluating), or pass a fixed temperature such as 1.0."
            )
        return value

    # ---------------------------------------------------------------- routing
    def _route(self, logits: torch.Tensor, k_values: Sequence[int]) -> RoutedBatch:
        return route_batch(
            logits.detach().float().cpu().numpy(),
            self._require_temperature(),
            k_values,
            self.confidence_measures,
            self.class_to_expert,
            len(self.experts),
        )

    def deploy(self, confidence: str, deferral: DeferralRule | None = None, fuse_weight: float | None = None) -> None:
        """Make ``predict_step`` decide as a bundle's router does: its confidence (``learned`` needs its rule) and
        its answer (the expert's, or fused with ``fuse_weight``)."""
        if confidence == LEARNED and deferral is None:
            raise SuiteError("The learned confidence needs its deferral rule; pass the rule fitted on val.")
        self.deployed_confidence, self.deferral, self.fuse_weight = confidence, deferral, fuse_weight

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
        routed = route_batch(
            logits.detach().float().cpu().numpy(), self._require_temperature(), [self.route_k],
            [self.deployed_confidence], self.class_to_expert, len(self.experts), self.deferral,
        )  # fmt: skip
        conf = routed.confidence[self.deployed_confidence]
        offloaded = offload_mask(conf, self.tau)
        prediction = routed.topk_classes[:, 0].copy()
        expert = np.where(offloaded, routed.experts[self.route_k], -1)
        for j in np.unique(expert[offloaded]):
            rows = np.flatnonzero(expert == j)
            out = self._forward(self.experts[int(j)], images[torch.from_numpy(rows).to(images.device)], "expert")
            if self.fuse_weight is None:
                prediction[rows] = out.argmax(-1).cpu().numpy()
            else:
                fused = fused_predictions(routed.probs[rows], out.float().cpu().numpy(), [self.fuse_weight])
                prediction[rows] = fused[:, 0]
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
        self,
        models: nn.ModuleList,
        images: torch.Tensor,
        assignments: Sequence[np.ndarray],
        counter: str,
        generalist_probs: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Each assignment's prediction per sample, running every distinct (sample, model) pair once; with
        ``generalist_probs`` also each assignment's fused answers (N, len(FUSE_WEIGHTS)) from the same forwards."""
        n = images.shape[0]
        table = np.full((n, len(models)), -1, dtype=np.int64)  # per batch only, never stored
        fused = (
            np.full((n, len(models), len(FUSE_WEIGHTS)), -1, dtype=np.int64) if generalist_probs is not None else None
        )
        for j, rows in experts_needed(assignments, len(models)).items():
            if len(rows):
                out = self._forward(models[j], images[torch.from_numpy(rows).to(images.device)], counter).float()
                table[rows, j] = out.argmax(-1).cpu().numpy()
                if fused is not None:
                    fused[rows, j] = fused_predictions(generalist_probs[rows], out.cpu().numpy(), FUSE_WEIGHTS)
        picks = [table[np.arange(n), a] for a in assignments]
        return picks, None if fused is None else [fused[np.arange(n), a] for a in assignments]

    def _generalist_logits(self, images: torch.Tensor, indices: torch.Tensor, use_cache: bool) -> torch.Tensor:
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
        rec = generalist_records(routed, label, indices.cpu().numpy())
        chosen = [routed.experts[k] for k in self.k_values]
        oracle = oracle_experts(label, self.class_to_expert)
        preds, fused = self._run_pairs(self.experts, images, [*chosen, oracle], "expert", routed.probs)
        for k, a, p, f in zip(self.k_values, chosen, preds, fused, strict=False):
            rec[f"expert_k{k}"], rec[f"pred_k{k}"] = a.astype(np.int16), p.astype(np.int32)
            rec[f"fused_k{k}"] = f.astype(np.int16)
        rec["oracle_expert"], rec["pred_oracle"] = oracle.astype(np.int16), preds[-1].astype(np.int32)
        for name, models in self.baselines.items():
            table = self.baseline_tables[name]
            assigned = [*routed.experts_for(self.k_values, table, len(models)), oracle_experts(label, table)]
            picks, _ = self._run_pairs(models, images, assigned, f"{name}_expert")
            for k, a, p in zip(self.k_values, assigned, picks, strict=False):
                rec[f"{name}_expert_k{k}"], rec[f"{name}_pred_k{k}"] = a.astype(np.int16), p.astype(np.int32)
            rec[f"{name}_pred_oracle"] = picks[-1].astype(np.int32)
        if self.base is not None:
            rec["pred_base"] = self._forward(self.base, images, "base").argmax(-1).cpu().numpy().astype(np.int32)
        return rec

    @torch.inference_mode()
    def records_of(
        self, images: torch.Tensor, labels: np.ndarray, indices: np.ndarray, batch_size: int = 256
    ) -> Records:
        """Records of a whole labelled split held in memory (``indices``: the samples' file indices), outside a
        Trainer."""
        parts = []
        for start in range(0, len(labels), batch_size):
            y = labels[start : start + batch_size]
            index = torch.from_numpy(np.asarray(indices[start : start + len(y)], dtype=np.int64))
            parts.append(self.evaluation_records((images[start : start + len(y)], torch.from_numpy(y), index)))
        return merge_records(parts)

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
        local_logits = torch.cat(logits) if logits else torch.zeros(0, self.num_classes, device=self.device)
        local_labels = torch.cat(labels).cpu().numpy() if labels else np.zeros(0, dtype=np.int64)
        local_index = torch.cat(indices).cpu().numpy() if indices else np.zeros(0, dtype=np.int64)
        # Every rank fits on all val samples; a sample seen by two ranks (a padded sampler) counts once.
        shards = all_gather_objects(self.trainer, (local_logits.cpu().numpy(), local_labels, local_index))
        all_logits = np.concatenate([s[0] for s in shards])
        all_labels = np.concatenate([s[1] for s in shards]).astype(np.int64)
        all_index = np.concatenate([s[2] for s in shards])
        if len(all_index) == 0:
            raise SuiteError(
                "The val split is empty, so the temperature cannot be fitted. Check --data.data_dir / "
                "--data.val_size, or pass a fixed temperature such as 1.0."
            )
        _, first = np.unique(all_index, return_index=True)
        chosen = split_parts(all_index[first], all_labels[first], self.holdout, self.assess_on_val) == SELECTION
        self.set_temperature(fit_temperature(all_logits[first][chosen], all_labels[first][chosen]))
        order = np.argsort(local_index, kind="stable")
        self._cached_index = local_index[order]
        self._cached_logits = local_logits.detach()[torch.from_numpy(order).to(local_logits.device)]

    def _log_forward_counts(self) -> None:
        for key in ("generalist", "expert", *(f"{name}_expert" for name in self.baselines), "base"):
            self.log(forward_count_metric(key), float(self.forward_counts[key]), reduce_fx="sum", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_forward_counts()

    def on_test_epoch_end(self) -> None:
        self._log_forward_counts()

    def configure_optimizers(self) -> None:
        # Nothing to train: the system only combines trained models.
        return None


def _partition_table(subsets: Sequence[Sequence[int]], num_models: int, num_classes: int, what: str) -> np.ndarray:
    if len(subsets) != num_models:
        raise PartitionError(
            f"{num_models} {what} were given with {len(subsets)} subsets; give exactly one subset per model "
            "(subset j is the classes of model j)."
        )
    return class_to_expert([list(map(int, s)) for s in subsets], num_classes)
