"""Deployment: export a generalist and its experts as a verified ONNX bundle and run it without torch.

- ``deploy.runtime``: numpy + onnxruntime only (load, verify, predict; edge and near-edge halves).
- ``deploy.profile_bundle``: times the bundle's models on this machine and writes a cost profile (torch-free).
- ``deploy.export`` / ``deploy.verify``: the torch side (checkpoints -> bundle, bundle vs checkpoints parity).
- ``python -m deploy export|verify|profile|predict``: the command line.

Nothing is imported here so that ``import deploy.runtime`` never pulls in torch.
"""
