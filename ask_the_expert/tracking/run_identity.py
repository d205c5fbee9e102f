"""W&B run identity derived from what a run is: name, group, job type and tags (each overridable in the config).

One rule for every command, so that runs can be told apart and overlaid:

- **job type**: the subcommand and what it works on: ``train-generalist``, ``train-base``,
  ``train-expert-progressive`` (``-static``, ``-static-init``) for ``fit``; ``validate-<model>`` and ``test-<model>``
  for ``ate-train validate|test``; ``evaluate``, ``export`` and ``pipeline`` for those commands.
- **group**: what the run is without its seed or its repetition, ending with a short hash of what it is made from,
  so that W&B's default "one line per group" averages only runs that are meant to be averaged: seeds of one
  configuration (``generalist-<config hash>``), repeats on one checkpoint (``validate-generalist-<checkpoint hash>``),
  repeats on one expert set (``evaluate-val-4experts-<inputs hash>``). The preset, when there is one,
  comes first (``mini-generalist-<config hash>``); the pipeline groups each step across its seeds.
- **name**: the group's words with the seed, ending with the W&B run id, so that no two runs share a name (two
  evaluations of different expert sets, or two validate runs of one checkpoint, are two named runs).
- **tags**: the command, the model and the network really built (``e384-d12-h6``, ``patch4``, ``scratch32``, the
  arch name only when the shape is that arch's), never a fixed list that can be wrong.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from ask_the_expert.models.vit_factory import ARCHS, resolved_architecture

# W&B's own run-id alphabet and length (wandb.util.generate_id).
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 8
# Model arguments that say where inputs are, not what the model is: left out of the configuration hash.
_LOCATION_SUFFIXES = ("_checkpoint", "_dir", "_path")
# Data arguments that do not change what a run learns or measures (where the files are, how they are loaded, the
# split seed, which follows the training seed in a pipeline): left out of the configuration hash.
_DATA_LOCATION_KEYS = {"data_dir", "download", "check_integrity", "num_workers", "split_seed", "device_resident"}


def new_run_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, as wandb makes them)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def short_hash(value: Any) -> str:
    """Six hex digits of the sha256 of ``value`` as canonical JSON: the same content gives the same hash."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]


def expert_variant(hparams: Mapping[str, Any]) -> str:
    """progressive, static (from the base weights) or static-init (from the seeded init), from the expert's args."""
    if hparams.get("static_steps") is None:
        return "progressive"
    return "static" if hparams.get("base_checkpoint") else "static-init"


def model_label(hparams: Mapping[str, Any]) -> str:
    """What a model is: ``generalist``, ``base``, ``expert-progressive-03``, ``expert-static-03`` ... (from its
    hyperparameters, so that a checkpoint and the run that trains it get the same label)."""
    role = hparams.get("role", "model")
    if role != "expert" and "expert_index" not in hparams:
        return str(role)
    index = hparams.get("expert_index")
    label = f"expert-{expert_variant(hparams)}"
    return f"{label}-{index:02d}" if isinstance(index, int) else label


def architecture(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The network a model's hyperparameters really build: shape, patch, tokenizer and preset, and ``arch`` only
    when the shape is that arch's default (a 32/2/2 network is not a ``vit_small``)."""
    arch, preset = hparams.get("arch") or "vit_tiny", hparams.get("preset") or "scratch32"
    built = resolved_architecture({**hparams, "arch": arch, "preset": preset})
    shape = (built["embed_dim"], built["depth"], built["num_heads"])
    out = {k: built[k] for k in ("embed_dim", "depth", "num_heads", "patch_size", "tokenizer")}
    own_shape = arch in ARCHS and shape == ARCHS[arch].shape
    return {**out, "preset": preset, "arch": arch if own_shape else None}


def architecture_tags(hparams: Mapping[str, Any]) -> list[str]:
    """Tags of the network a run really builds (overrides of the arch's shape included)."""
    built = architecture(hparams)
    tags = [f"e{built['embed_dim']}-d{built['depth']}-h{built['num_heads']}", f"patch{built['patch_size']}"]
    tags += [f"{built['tokenizer']}-tokenizer", built["preset"]]
    return [*tags, built["arch"]] if built["arch"] else tags


def configuration_hash(model_args: Mapping[str, Any], data_args: Mapping[str, Any]) -> str:
    """``short_hash`` of what a training run learns from: the model's and data's arguments, without the seed and
    without where the inputs are (checkpoint paths, folders): the seeds of one configuration share it."""
    model = {k: v for k, v in model_args.items() if not k.endswith(_LOCATION_SUFFIXES)}
    data = {k: v for k, v in data_args.items() if k not in _DATA_LOCATION_KEYS}
    return short_hash({"model": model, "data": data})


def _joined(*parts: str | None) -> str:
    return "-".join(p for p in parts if p)


def training_identity(
    subcommand: str,
    model_args: Mapping[str, Any],
    data_args: Mapping[str, Any],
    seed: int | None,
    run_id: str,
    preset: str | None = None,
    checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """``name``, ``group``, ``job_type`` and ``tags`` of an ``ate-train`` run (``subcommand`` fit, validate or
    test) of the model with ``model_args``; ``checkpoint_sha256``: the ``--ckpt_path`` a validate/test run reads."""
    label = model_label(model_args)
    expert = model_args.get("expert_index") is not None or model_args.get("role") == "expert"
    kind = f"expert-{expert_variant(model_args)}" if expert else label
    if subcommand == "fit":
        job_type = f"train-{kind}"
        group = _joined(preset, label, configuration_hash(model_args, data_args))
        name = _joined(preset, label, f"seed{seed}" if seed is not None else "unseeded", run_id)
    else:  # validate / test: the checkpoint it reads (the artifact name's hash prefix), else the configuration
        job_type = f"{subcommand}-{kind}"
        what = checkpoint_sha256[:6] if checkpoint_sha256 else configuration_hash(model_args, data_args)
        group = _joined(preset, subcommand, label, what)
        name = f"{group}-{run_id}"
    tags = [
        subcommand,
        *(["expert", expert_variant(model_args)] if expert else [label]),
        *architecture_tags(model_args),
    ]
    return {"name": name, "group": group, "job_type": job_type, "tags": list(dict.fromkeys(tags))}


def command_identity(words: Sequence[str], inputs: Any, run_id: str, preset: str | None = None) -> dict[str, str]:
    """``name`` and ``group`` of a run of another command: ``[<preset>-]<words>-<short_hash(inputs)>`` as the
    group, and the name the group with the run id. ``inputs``: what the run is made from (the sha256 of every
    checkpoint it reads and its options), so that an evaluation of another expert set gets another group and name:
    ``evaluate-val-4experts-<hash>``, ``export-4experts-<hash>``, ``mini-pipeline-<hash>``."""
    group = _joined(preset, *words, short_hash(inputs))
    return {"name": f"{group}-{run_id}", "group": group}
