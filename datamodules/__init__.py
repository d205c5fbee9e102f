"""LightningDataModules for CIFAR-100."""

from datamodules.cifar100 import CIFAR100DataModule
from datamodules.expert_data import ExpertDataModule

__all__ = ["CIFAR100DataModule", "ExpertDataModule"]
