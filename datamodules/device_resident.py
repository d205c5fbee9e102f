"""Device-resident training data: the split as one uint8 tensor on the accelerator, augmented there.

CIFAR-100 fits in accelerator memory many times over (50k x 3 x 40 x 40 bytes = 240 MB with the crop
padding), so a small ViT need not wait for DataLoader workers: each batch is one gather from the padded uint8
tensor that selects the samples, the pad-4 random crop window and the horizontal flip at once, followed by the
same ``ToDtype(scale=True)`` + ``Normalize`` arithmetic as the DataLoader path
(``datamodules/transforms.py``), so a sample with the same crop and flip is bit-identical on both paths.

Shuffling and augmentation draws come from a CPU ``torch.Generator`` seeded with ``seed + epoch``, identical
on every DDP rank; each rank then takes its strided share of the permutation. Lightning sets the epoch through
the loader's ``sampler.set_epoch`` (as for a ``DistributedSampler``) from its own epoch counter, which a
resumed run restores, so a resumed epoch repeats the order and augmentations of the interrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ask_the_expert.utils.errors import SuiteError
from datamodules.transforms import CIFAR100_MEAN, CIFAR100_STD

PAD = 4  # the pad-4 random crop of the ``basic`` augmentation (v2.RandomCrop(32, padding=4), zero fill)


class EpochShards:
    """The per-epoch draws of a device-resident split: a seeded permutation of ``n`` samples with one crop
    offset and flip per position, cut into ``world_size`` disjoint equal shards of whole batches.

    Every epoch uses ``len(self) * batch_size * world_size`` samples; the fewer than
    ``batch_size * world_size`` left over are dropped (the DataLoader path's ``drop_last``), a different few
    each epoch. Because the draws are made for the whole permutation and then sharded, the union over ranks of
    one epoch is the same set of (sample, crop, flip) for any ``world_size`` that uses as many samples.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise SuiteError(f"rank {rank} is outside 0..{world_size - 1}; pass the trainer's global rank.")
        if n < batch_size * world_size:
            raise SuiteError(
                f"The training split has {n} images, fewer than one batch of {batch_size} on each of "
                f"{world_size} processes; lower --data.batch_size or use fewer devices."
            )
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``draw`` returns (Lightning calls this at each epoch start)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        return self.n // (self.batch_size * self.world_size)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's ``(positions, offsets, flips)`` for the current epoch, on the CPU.

        ``positions`` index the split (``len(self) * batch_size`` of them, batch after batch), ``offsets``
        are the (row, column) of the crop window in the padded image, 0..2*PAD, and ``flips`` say whether to
        mirror it.
        """
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        offsets = torch.randint(0, 2 * PAD + 1, (self.n, 2), generator=generator)
        flips = torch.rand(self.n, generator=generator) < 0.5
        used = len(self) * self.batch_size * self.world_size
        return tuple(t[:used][self.rank :: self.world_size] for t in (order, offsets, flips))


def crop_flip_gather(
    padded: torch.Tensor, positions: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Crop 32x32 windows at ``offsets`` out of the padded NHWC uint8 images at ``positions`` and mirror
    those with ``flips``, in one gather; returns NCHW uint8."""
    size = padded.shape[1] - 2 * PAD
    steps = torch.arange(size, device=padded.device)
    rows = offsets[:, :1] + steps  # (B, size)
    # A flipped window reads its columns right to left.
    cols = offsets[:, 1:] + torch.where(flips[:, None], size - 1 - steps, steps)
    images = padded[positions[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, size, size, C)
    return images.permute(0, 3, 1, 2).contiguous()


class DeviceResidentLoader:
    """Training batches ``(images, fine_labels, file_indices)`` of one split held on ``device``.

    Args:
        images: the split's uint8 NHWC images (any device; copied to ``device`` once, padded by ``PAD``).
        labels: fine labels, one per image.
        file_indices: the images' indices in their pickle file (the third item of every batch, as on the
            DataLoader path).
        batch_size: per-rank batch size.
        augment: pad-4 random crop + horizontal flip (the ``basic`` augmentation); ``False`` only normalises.
        seed: shuffling seed; epoch ``e`` uses ``seed + e``.
        rank, world_size: this process's DDP shard.
        device: where the data lives and the batches are made (the model's device).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        file_indices: torch.Tensor,
        batch_size: int,
        augment: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if not (len(images) == len(labels) == len(file_indices)):
            raise SuiteError(
                f"images, labels and file_indices differ in length ({len(images)}, {len(labels)}, "
                f"{len(file_indices)}); pass one entry per image."
            )
        self.sampler = EpochShards(len(images), batch_size, seed, rank, world_size)
        self.batch_size = batch_size
        self.augment = augment
        self.device = torch.device(device)
        # NHWC, so that the batch gather reads whole pixels (C contiguous bytes) and the crop indexes H and W.
        self.padded = (
            torch.nn.functional.pad(torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2), (PAD,) * 4)
            .permute(0, 2, 3, 1)
            .contiguous()
        )
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.file_indices = torch.as_tensor(file_indices, dtype=torch.int64).to(self.device)
        self.mean = torch.tensor(CIFAR100_MEAN, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(CIFAR100_STD, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        positions, offsets, flips = self.sampler.draw()
        if not self.augment:
            offsets = torch.full_like(offsets, PAD)
            flips = torch.zeros_like(flips)
        # One host-to-device copy per epoch; the batches below only slice.
        positions, offsets, flips = (t.to(self.device) for t in (positions, offsets, flips))
        for start in range(0, len(positions), self.batch_size):
            batch = slice(start, start + self.batch_size)
            images = crop_flip_gather(self.padded, positions[batch], offsets[batch], flips[batch])
            # The arithmetic of v2.ToDtype(float32, scale=True) + v2.Normalize, step for step (bit-identical).
            images = images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)
            index = positions[batch]
            yield images, self.labels[index], self.file_indices[index]
