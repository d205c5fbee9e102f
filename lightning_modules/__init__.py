"""LightningModules and what they are built from.

- ``classifier.ClassifierModule``: the 100-way ViT (the edge generalist, or the stage-0 base model).
- ``expert.ExpertModule``: an expert trained through a stage schedule (``stage_switch``), with routed-in sets
  (``routed_in``).
- ``collaborative.CollaborativeSystem``: generalist + experts + router, for evaluation and routed prediction.
- ``checkpoints``: finding, reading, checking and loading the suite's checkpoints.
- ``lr_schedules``, ``distributed``: learning-rate schedules, DDP gathering. The networks themselves are built by
  ask_the_expert.models.

Nothing is re-exported here: import from the module, so that each command imports only what it uses.
"""
