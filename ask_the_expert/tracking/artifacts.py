"""W&B artifacts with lineage: every checkpoint a training run writes is a ``model`` artifact, a bundle is a
``deploy-bundle`` artifact, and the runs that read them (evaluation, export) declare them with ``use_artifact``.

Artifacts are references to the files (``file://`` with their checksum), not copies, so a 90 MB expert is not stored
twice. A checkpoint's artifact name is derived from the checkpoint itself (what it is and the first 12 hex digits of
its sha256), so the run that reads it finds the name the run that wrote it used without any bookkeeping.

Offline, W&B (0.31) logs artifacts but refuses ``use_artifact``; an offline run therefore records the names of the
artifacts it read in its config (``lineage.inputs``), and after ``wandb sync`` one command links them, rebuilding the
same graph as an online run::

    ate-relink ENTITY/PROJECT/RUN_ID [ENTITY/PROJECT/RUN_ID ...]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ask_the_expert.deploy.bundle_format import MANIFEST_FILE
from ask_the_expert.tracking.wandb_logger import has_wandb_credentials
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from lightning_modules.checkpoints import read_checkpoint


def checkpoint_label(hparams: Mapping[str, Any]) -> str:
    """What a checkpoint is: ``generalist``, ``base``, ``expert-progressive-03``, ``expert-static-03`` ..."""
    role = hparams.get("role", "model")
    if role != "expert":
        return str(role)
    if hparams.get("static_steps") is None:
        variant = "progressive"
    else:
        variant = "static" if hparams.get("base_checkpoint") else "static-init"
    index = hparams.get("expert_index")
    return f"expert-{variant}-{index:02d}" if isinstance(index, int) else f"expert-{variant}"


def checkpoint_artifact(path: str | Path, hparams: Mapping[str, Any]) -> Any:
    """A ``model`` artifact referring to the checkpoint file (name: label and content hash)."""
    import wandb

    path = Path(path).resolve()
    sha = file_sha256(path)
    metadata = {
        "sha256": sha,
        "file": path.name,
        **{k: hparams.get(k) for k in ("role", "arch", "embed_dim", "depth", "num_heads", "expert_index", "subset")},
    }
    artifact = wandb.Artifact(f"{checkpoint_label(hparams)}-{sha[:12]}", type="model", metadata=_plain(metadata))
    artifact.add_reference(f"file://{path}", name=path.name)
    return artifact


def log_checkpoint(run: Any, path: str | Path, hparams: Mapping[str, Any]) -> None:
    """The training run that wrote ``path`` logs it as its output."""
    run.log_artifact(checkpoint_artifact(path, hparams))


def use_checkpoints(run: Any, sources: Mapping[str, Any]) -> list[str]:
    """The run reads these checkpoints (``{role: path or [paths]}``, as CollaborativeSystem.sources): online it
    declares their artifacts; offline it records their names for ``relink`` after syncing. Returns the names."""
    artifacts = [
        checkpoint_artifact(path, read_checkpoint(path, role).hparams)
        for role, value in sources.items()
        for path in (value if isinstance(value, list) else [value] if value is not None else [])
    ]
    names = [a.name for a in artifacts]
    run.config.update({"lineage": {"inputs": names}}, allow_val_change=True)
    if not run.offline:
        for artifact in artifacts:
            run.use_artifact(artifact)
    return names


def relink(run_paths: list[str]) -> None:
    """After ``wandb sync`` of offline runs: declare each run's recorded input artifacts (``lineage.inputs``).

    Needs the network and W&B credentials; any failure to reach the API, a run or an artifact is a SuiteError
    naming it and the fix."""
    import wandb

    bad = [p for p in run_paths if len(p.split("/")) != 3 or not all(p.split("/"))]
    if bad:
        raise SuiteError(f"Runs must be given as ENTITY/PROJECT/RUN_ID, got {bad}.")
    if not has_wandb_credentials():
        raise SuiteError(
            "ate-relink needs the W&B API, but no W&B credentials were found (WANDB_API_KEY or `wandb login`). Log in "
            "on a machine with network access and run it again."
        )
    for path in run_paths:
        try:
            api = wandb.Api(timeout=30)
            run = api.run(path)
            inputs = run.config.get("lineage", {}).get("inputs", [])
            entity_project = "/".join(path.split("/")[:2])
            for name in inputs:
                run.use_artifact(api.artifact(f"{entity_project}/{name}:latest"))
        except Exception as err:  # wandb raises UsageError, CommError, AuthenticationError, timeouts, ...
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise SuiteError(
                f"Could not link the inputs of the W&B run {path!r} ({first}). Check the run path, that the run and "
                "its input artifacts were synced (`wandb sync`), the network and `wandb login`."
            ) from None
        print(f"{path}: linked {len(inputs)} input artifacts", flush=True)


def log_bundle_artifact(run: Any, folder: str | Path, name: str) -> None:
    """Log a bundle folder as a ``deploy-bundle`` artifact (a reference to the folder, its manifest as metadata)."""
    import wandb

    folder = Path(folder).resolve()
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    artifact = wandb.Artifact(name, type="deploy-bundle", metadata=_plain(manifest))
    artifact.add_reference(f"file://{folder}")
    run.log_artifact(artifact)


def _plain(value: Any) -> Any:
    """JSON-safe metadata (W&B refuses some numpy types)."""
    return json.loads(json.dumps(value, default=str))
