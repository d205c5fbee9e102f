"""Augmentation presets for 32x32 CIFAR images, built with torchvision transforms v2."""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import v2

# Channel statistics of the CIFAR-100 training images.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

Augmentation = Literal["none", "basic", "strong"]
AUGMENTATIONS: tuple[str, ...] = ("none", "basic", "strong")


def _to_normalised_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR100_MEAN, CIFAR100_STD)]


def build_transform(augmentation: Augmentation) -> v2.Compose:
    """``none``: normalise only (eval). ``basic``: pad-4 random crop + flip. ``strong``: basic + RandAugment
    before normalisation and random erasing after it."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{augmentation}'; choose one of {AUGMENTATIONS}")
    if augmentation == "none":
        return v2.Compose(_to_normalised_float())
    steps: list[v2.Transform] = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if augmentation == "strong":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    steps += _to_normalised_float()
    if augmentation == "strong":
        steps.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(steps)
