"""bf16 on CPUs: Lightning's ``bf16-mixed`` where the CPU has native bf16 instructions, fp32 elsewhere.

Without native bf16 (AVX512-BF16 or AMX-BF16) oneDNN emulates bf16 arithmetic, and a ViT training step in
``bf16-mixed`` was about 20x slower than in fp32 on an AVX2-only CPU (benchmarks/bench_cpu_step.py). A config or
preset may therefore ask for bf16 and still run at full speed on any CPU: ``resolve_precision`` keeps the request on a
GPU or a CPU with native bf16 and trains in ``32-true`` otherwise, saying so once.
"""

from __future__ import annotations

import os
from functools import cache

import torch
from lightning.pytorch.utilities import rank_zero_info

BF16_PRECISIONS = frozenset({"bf16", "bf16-mixed", "bf16-true"})
# Set to 1 to keep bf16 on a CPU without native bf16 (to measure the emulation, say).
KEEP_EMULATED_BF16 = "ATE_KEEP_EMULATED_BF16"


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix arithmetic natively (oneDNN's own check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def runs_on_cpu(accelerator: object) -> bool:
    """Whether a Trainer with this ``accelerator`` setting (a name; an Accelerator object counts as not) trains on
    the CPU."""
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return accelerator == "cpu"


def resolve_precision(precision: str | int | None, accelerator: object) -> str | int | None:
    """``precision``, or ``32-true`` for a bf16 precision on a CPU without native bf16 (see the module docstring)."""
    if str(precision) not in BF16_PRECISIONS or not runs_on_cpu(accelerator) or cpu_has_native_bf16():
        return precision
    if os.environ.get(KEEP_EMULATED_BF16) == "1":
        return precision
    rank_zero_info(
        f"precision {precision} asked for on a CPU without native bf16 instructions (no AVX512-BF16/AMX): emulated "
        f"bf16 is many times slower than fp32 here, so this run uses 32-true (set {KEEP_EMULATED_BF16}=1 to keep bf16)."
    )
    return "32-true"
