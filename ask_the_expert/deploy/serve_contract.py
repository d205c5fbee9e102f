"""The Open Inference Protocol (KServe V2) contract between the edge client and the near-edge expert server.

One V2 model per expert, named ``expert_<j>`` (the same names in ``ate-deploy serve`` and in the exported Triton model
repository), with a batch axis:

- input ``images``: UINT8 (batch, H, W, 3), raw RGB pixels as in router.json (the cost model's 3,072 B per image);
  the model normalises them itself;
- output ``logits``: FP32 (batch, num_classes);
- output ``server_ms`` (``ate-deploy serve`` only, optional for a client): FP32 (batch, 1), the wall time of the model
  run that answered the row, so a client can split its round trip into server compute and transfer + queueing.
"""

from __future__ import annotations

from ask_the_expert.deploy.bundle_format import INPUT_NAME, OUTPUT_NAME

IMAGES = INPUT_NAME
LOGITS = OUTPUT_NAME
SERVER_MS = "server_ms"
MODEL_PREFIX = "expert_"


def expert_model_name(index: int) -> str:
    """V2 model name of expert ``index``."""
    return f"{MODEL_PREFIX}{index}"
