"""LightningModules: the generalist (and stage-0 base), experts and the collaborative system."""

from lightning_modules.collaborative import CollaborativeSystem
from lightning_modules.expert import ExpertModule
from lightning_modules.generalist import GeneralistModule

__all__ = ["CollaborativeSystem", "ExpertModule", "GeneralistModule"]
