"""Deployment: export a generalist and its experts as a verified ONNX bundle and run it without torch.

- ``ask_the_expert.deploy.runtime``: numpy + onnxruntime only (load, verify, predict; edge and near-edge halves).
- ``ask_the_expert.deploy.profile_bundle``: times the bundle's models on this machine and writes a cost profile
  (torch-free).
- ``ask_the_expert.deploy.export`` / ``ask_the_expert.deploy.verify``: the torch side (checkpoints -> bundle, bundle vs
  checkpoints parity).
- ``ate-deploy export|verify|profile|predict``: the command line.

Nothing is imported here so that ``import ask_the_expert.deploy.runtime`` never pulls in torch.
"""
