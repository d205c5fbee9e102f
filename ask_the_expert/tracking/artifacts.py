"""W&B artifacts with lineage: every checkpoint a training run writes is a ``model`` artifact, a bundle is a
``deploy-bundle`` artifact, and the runs that read them (evaluation, export) declare them with ``use_artifact``.

Artifacts carry their files (uploaded when the run is online, recorded with an offline run and uploaded by ``wandb
sync``), so that a model or a bundle can be downloaded on another machine. The files are added without a staging copy
(``policy="immutable"``) where the suite writes them once under their final name (bundles, ate-train- experts'
checkpoints, Lightning's ``best-*.ckpt``): they must stay as they are until an offline run is synced. Lightning's
``last.ckpt``, which a resumed fit rewrites, is staged as a copy. A checkpoint's artifact name is derived from the
checkpoint itself (what it is and the first 12 hex digits of its sha256), so the run that reads it finds the name the
run that wrote it used without any bookkeeping; a bundle's from its experts and its manifest's sha256. The writer adds
the aliases ``latest`` and, for the best checkpoint of a fit, ``best``.

Offline, W&B (0.31) logs artifacts but refuses ``use_artifact``; an offline run therefore records the names of the
artifacts it read in its config (``lineage.inputs``), and after ``wandb sync`` one command links them, rebuilding the
same graph as an online run::

    ate-relink ENTITY/PROJECT/RUN_ID [ENTITY/PROJECT/RUN_ID ...]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ask_the_expert.deploy.bundle_format import MANIFEST_FILE
from ask_the_expert.tracking.run_identity import architecture, model_label
from ask_the_expert.tracking.wandb_logger import has_wandb_credentials
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from lightning_modules.checkpoints import read_checkpoint


def checkpoint_artifact(path: str | Path, hparams: Mapping[str, Any], copy: bool = False) -> Any:
    """A ``model`` artifact holding the checkpoint file (name: what it is and its content hash; metadata: the
    network it really holds); ``copy``: stage a copy (for a file that may be rewritten before it is uploaded, such
    as Lightning's ``last.ckpt``)."""
    import wandb

    path = Path(path).resolve()
    sha = file_sha256(path)
    metadata = {
        "sha256": sha,
        "file": path.name,
        "label": model_label(hparams),
        **{k: hparams.get(k) for k in ("role", "expert_index", "subset", "num_classes")},
        **architecture(hparams),
    }
    artifact = wandb.Artifact(f"{model_label(hparams)}-{sha[:12]}", type="model", metadata=_plain(metadata))
    artifact.add_file(str(path), name=path.name, policy="mutable" if copy else "immutable")
    return artifact


def log_checkpoint(
    run: Any, path: str | Path, hparams: Mapping[str, Any], aliases: Sequence[str] = ("latest",), copy: bool = False
) -> None:
    """The training run that wrote ``path`` logs it as its output, with ``aliases`` (``copy``: as
    ``checkpoint_artifact``)."""
    run.log_artifact(checkpoint_artifact(path, hparams, copy), aliases=list(aliases))


def source_paths(sources: Mapping[str, Any]) -> list[Path]:
    """The checkpoint files of ``{role: path or [paths] or None}`` (CollaborativeSystem.sources), in order."""
    return [
        Path(path)
        for value in sources.values()
        for path in (value if isinstance(value, list) else [value] if value is not None else [])
    ]


def use_checkpoints(run: Any, sources: Mapping[str, Any]) -> list[str]:
    """The run reads these checkpoints (``{role: path or [paths]}``, as CollaborativeSystem.sources): online it
    declares their artifacts; offline it records their names for ``relink`` after syncing. Returns the names."""
    artifacts = [
        checkpoint_artifact(path, read_checkpoint(path, "a checkpoint read").hparams) for path in source_paths(sources)
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


def bundle_artifact_name(manifest: Mapping[str, Any], manifest_sha256: str) -> str:
    """``bundle-<n>experts-<first 12 hex digits of the manifest's sha256>``: what the bundle is, never its folder's
    name (a folder called ``bundle`` would give ``bundle-bundle``)."""
    experts = len(manifest.get("sources", {}).get("experts", []))
    return f"bundle-{experts}experts-{manifest_sha256[:12]}"


def log_bundle_artifact(run: Any, folder: str | Path) -> str:
    """Log a bundle folder as a ``deploy-bundle`` artifact holding its files (its manifest as metadata, alias
    ``latest``); returns the artifact's name."""
    import wandb

    folder = Path(folder).resolve()
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    name = bundle_artifact_name(manifest, file_sha256(manifest_path))
    artifact = wandb.Artifact(name, type="deploy-bundle", metadata=_plain(manifest))
    artifact.add_dir(str(folder), policy="immutable")
    run.log_artifact(artifact, aliases=["latest"])
    return name


def _plain(value: Any) -> Any:
    """JSON-safe metadata (W&B refuses some numpy types)."""
    return json.loads(json.dumps(value, default=str))
