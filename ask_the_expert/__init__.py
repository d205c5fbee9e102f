"""Ask the Expert: collaborative inference with an edge generalist ViT and near-edge expert ViTs on CIFAR-100.

- ``method``: the torch-free method (CIFAR-100 classes, splits, expert subsets, routing, policies, sweep, cost model,
  statistics, findings, learned deferral, break-even maps, stage schedules).
- ``models``: building the networks (timm ViTs, the convolutional tokenizer); torch, no Lightning.
- ``results``: an evaluation's output files, plots and the pipeline's markdown report.
- ``tracking``: the W&B logger, run identity and artifact lineage.
- ``deploy``: the ONNX bundle (format, wire, torch-free runtime, export, verify, profile, model card), the V2
  expert server, the edge client and the Triton model repository.
- ``commands``: the function behind every command and the console entry points (``ate-*``).
- ``utils``: plumbing (atomic writes, hashing, CLI errors, option groups, step fingerprints, config lookup).

Nothing is imported here, so that ``import ask_the_expert.deploy.runtime`` never pulls in torch.
"""
