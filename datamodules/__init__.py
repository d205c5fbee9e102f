"""LightningDataModules for CIFAR-100.

- ``cifar100.CIFAR100DataModule``: the seeded stratified train/val split, class subsets, augmentation presets.
- ``expert_data.ExpertDataModule``: training batches that mix an expert's subset with a second pool (``mixing``).
- ``cifar100_files``, ``transforms``, ``eval_sampler``, ``device_resident``: files, transforms, DDP sharding, the
  device-resident training path.
"""
