"""Training-step time on this CPU for every shape the CPU presets train: fp32, bf16 autocast, torch.compile and the
AdamW implementations, side by side in one run; then a short bf16-vs-fp32 accuracy parity check.

    python benchmarks/bench_cpu_step.py [--shapes '[...]'] [--steps 8] [--repeats 3] \\
        [--parity_data.data_dir DATA --parity_data.check_integrity false] [--parity_steps 300]

1. Each variant trains the same network (``ClassifierModule``, the shape's arguments) on the same pre-built random
   batches through a Lightning ``Trainer`` (the presets' path): ``fp32`` (``32-true``, foreach AdamW), ``fused``
   (fused AdamW), ``bf16`` (``bf16-mixed``: autocast as Lightning applies it on a CPU) and ``compiled``
   (``torch.compile``, inductor; compilation is in the warm-up steps, not timed). Variants alternate, ``--repeats``
   times; medians and ratios to fp32 are printed. Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX,
   as oneDNN reports) is printed first: without them bf16 is emulated, and the suite trains in fp32.
2. With ``--parity_data.data_dir``: ``--parity_steps`` steps of the first shape on the real training images in fp32
   (two seeds: the seed-to-seed spread is the noise) and in bf16 (first seed), each validated on the val split.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from common import StepTimer, data_source, quiet_trainer, run_cli, training_datamodule
from lightning import seed_everything

from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from lightning_modules.classifier import ClassifierModule
from lightning_modules.precision import cpu_has_native_bf16


@dataclass(frozen=True)
class Shape:
    """A network the presets train: a name and its ``ClassifierModule`` arguments."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)


# The `cpu` preset's edge generalist and near-edge base/expert shapes (configs/experiments/cpu.yaml), and the
# plain-ViT shapes of the `mini` preset for comparison.
CPU_PRESET_SHAPE = dict(tokenizer="conv", patch_size=8, depth=4, num_heads=2, mlp_ratio=2.0, drop_path_rate=0.0)
DEFAULT_SHAPES = [
    Shape("cpu generalist", dict(CPU_PRESET_SHAPE, embed_dim=64)),
    Shape("cpu base/expert", dict(CPU_PRESET_SHAPE, embed_dim=128)),
    Shape("mini generalist (plain)", dict(patch_size=8, embed_dim=64, depth=4, num_heads=2)),
    Shape("mini base/expert (plain)", dict(patch_size=8, embed_dim=96, depth=4, num_heads=3)),
]
# variant -> (trainer precision, module arguments)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("32-true", {}),
    "fused": ("32-true", {"fused_adamw": True}),
    "bf16": ("bf16-mixed", {}),
    "compiled": ("32-true", {"compile": True}),
}


def step_seconds(shape: Shape, variant: str, batches: list, warmup: int) -> float:
    precision, extra = VARIANTS[variant]
    seed_everything(0, verbose=False)
    module = ClassifierModule(warmup_epochs=0.1, **shape.model, **extra)
    timer = StepTimer(warmup)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, precision=precision)
    trainer.callbacks.append(timer)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / (len(batches) - warmup)


def parity(shape: Shape, data: DataOptions, steps: int, batch_size: int) -> None:
    def val_accuracy(precision: str, seed: int) -> float:
        seed_everything(seed, verbose=False)
        module = ClassifierModule(lr=2e-3, warmup_epochs=0.1, label_smoothing=0.1, **shape.model)
        datamodule = training_datamodule(data, batch_size, 0, device_resident=True)
        trainer = quiet_trainer(max_steps=steps, max_epochs=-1, precision=precision, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=datamodule)
        return float(trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/acc"])

    fp32 = [val_accuracy("32-true", seed) for seed in (0, 1)]
    bf16 = val_accuracy("bf16-mixed", 0)
    print(f"\nparity: {shape.name}, {steps} steps of {batch_size} on the real training images, val accuracy")
    spread = 100 * abs(fp32[0] - fp32[1])
    print(f"  fp32 seed 0: {100 * fp32[0]:.2f} %   fp32 seed 1: {100 * fp32[1]:.2f} %   (seed spread {spread:.2f} pts)")
    print(f"  bf16 seed 0: {100 * bf16:.2f} %   (bf16 - fp32, same seed: {100 * (bf16 - fp32[0]):+.2f} pts)")


def main(
    shapes: list[Shape] | None = None,
    variants: list[str] | None = None,
    batch_size: int = 128,
    steps: int = 8,
    warmup: int = 3,
    repeats: int = 3,
    parity_data: DataOptions | None = None,
    parity_steps: int = 300,
) -> None:
    """Step time per shape and variant, then the bf16 parity check (see the module docstring).

    Args:
        shapes: the networks to time (default: the CPU presets' shapes).
        variants: which of fp32, fused, bf16, compiled to time (default: all).
        batch_size: training batch.
        steps: timed steps per measurement.
        warmup: untimed steps first (compilation happens here).
        repeats: measurements per variant, alternating; medians are printed.
        parity_data: the CIFAR-100 folder for the parity check (skipped when absent).
        parity_steps: training steps of each parity run.
    """
    shapes = shapes or DEFAULT_SHAPES
    variants = variants or list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or min(steps, repeats, parity_steps, batch_size) < 1 or warmup < 0:
        raise SuiteError(
            f"Bad settings: unknown variants {unknown} (choose from {list(VARIANTS)}); steps, repeats, parity_steps "
            "and batch_size must be >= 1, warmup >= 0."
        )
    native = cpu_has_native_bf16()
    print(
        f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if native else 'no (emulated)'}, "
        f"{torch.get_num_threads()} threads; batch {batch_size}, {steps} timed steps after {warmup}, "
        f"{repeats} alternating repeats, medians"
    )
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch_size, 3, 32, 32, generator=generator),
            torch.randint(0, 100, (batch_size,), generator=generator),
        )
        for _ in range(warmup + steps)
    ]
    for shape in shapes:
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):
            for variant in variants:
                times[variant].append(step_seconds(shape, variant, copy.copy(batches), warmup))
        medians = {v: statistics.median(t) for v, t in times.items()}
        base = medians.get("fp32")
        cells = [
            f"{v} {1e3 * m:.0f} ms" + (f" ({m / base:.2f}x)" if base and v != "fp32" else "")
            for v, m in medians.items()
        ]
        print(f"{shape.name:28s} " + "   ".join(cells))
    if parity_data is not None:
        parity(shapes[0], data_source(parity_data), parity_steps, batch_size)


if __name__ == "__main__":
    run_cli(main, __doc__)
