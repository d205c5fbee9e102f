"""W&B artifacts with lineage: checkpoints and bundles as artifacts, and the links from the runs that read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.bundle_format import MANIFEST_FILE


def log_bundle_artifact(run: Any, folder: str | Path, name: str) -> None:
    """Log a bundle folder as a W&B artifact of type ``deploy-bundle`` on an active run."""
    import wandb

    manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    artifact = wandb.Artifact(name, type="deploy-bundle", metadata=manifest)
    artifact.add_dir(str(folder))
    run.log_artifact(artifact)
