"""W&B run identity derived from what a run is: name, group, job type and tags (all overridable in the config).

    generalist-seed0 / base-seed0 / expert-progressive-03-seed0 / expert-static-03-seed0 / expert-static-init-03-seed0

Job types: ``train-generalist``, ``train-base``, ``train-expert-progressive``, ``train-expert-static``,
``train-expert-static-init``; evaluation and export set ``evaluate`` and ``export`` themselves. The group is the preset
or experiment with the seed (``mini-seed0``), so W&B groups a run's models together and seeds can be compared;
without one it is ``seed<seed>``. Tags come from the real architecture (``e384-d12-h6``, ``patch4``, ``scratch32``,
and the arch name only when the shape is that arch's), never from a fixed list that can be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ask_the_expert.models.vit_factory import ARCHS, resolved_architecture


def expert_variant(init_args: Mapping[str, Any]) -> str:
    """progressive, static (from the base weights) or static-init (from the seeded init), from the expert's args."""
    if init_args.get("static_steps") is None:
        return "progressive"
    return "static" if init_args.get("base_checkpoint") else "static-init"


def architecture_tags(init_args: Mapping[str, Any]) -> list[str]:
    """Tags of the network a run really trains (overrides of the arch's shape included)."""
    arch, preset = init_args.get("arch", "vit_tiny"), init_args.get("preset", "scratch32")
    built = resolved_architecture({**init_args, "arch": arch, "preset": preset})
    shape = (built["embed_dim"], built["depth"], built["num_heads"])
    tags = [f"e{shape[0]}-d{shape[1]}-h{shape[2]}", f"patch{built['patch_size']}", preset]
    if arch in ARCHS and shape == ARCHS[arch].shape:
        tags.append(arch)
    return tags


def run_identity(class_path: str, init_args: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
    """Default ``name``, ``group``, ``job_type`` and ``tags`` of a training run of the model ``class_path``."""
    suffix = f"seed{seed}" if seed is not None else "unseeded"
    if class_path.endswith("ExpertModule"):
        variant = expert_variant(init_args)
        index = init_args.get("expert_index")
        label = f"{index:02d}" if isinstance(index, int) else "subset"
        name, job_type, tags = f"expert-{variant}-{label}-{suffix}", f"train-expert-{variant}", ["expert", variant]
    else:
        role = init_args.get("role", "generalist")
        name, job_type, tags = f"{role}-{suffix}", f"train-{role}", [role]
    return {"name": name, "group": suffix, "job_type": job_type, "tags": [*tags, *architecture_tags(init_args)]}
