"""Ask the Expert: collaborative inference with an edge generalist ViT and near-edge expert ViTs on CIFAR-100.

- ``method``: the torch-free method (CIFAR-100 classes, splits, expert subsets, routing and confidence measures,
  the policy registry, sweep, cost model, statistics, findings, diagnostics, learned deferral, break-even maps, stage
  schedules and expert variants).
- ``models``: building the networks (the registry of timm ViTs, the convolutional tokenizer); torch, no Lightning.
- ``results``: the evaluation results store (an evaluation folder's format, writer, reader and W&B metric names),
  plots and the pipeline's markdown report.
- ``tracking``: the W&B logger, run identity and artifact lineage.
- ``deploy``: the ONNX bundle (format, wire, torch-free runtime, export, verify, profile, model card), the V2
  expert server, the edge client and the Triton model repository.
- ``commands``: the function behind every command and the console entry points (``ate-*``); the pipeline's steps.
- ``utils``: plumbing (atomic writes, hashing, CLI errors, option groups, step fingerprints, config lookup).

Nothing is imported here, so that ``import ask_the_expert.deploy.runtime`` never pulls in torch.
"""
