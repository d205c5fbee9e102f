"""Weights & Biases: the logger that never fails a run, run identity and artifact lineage."""
