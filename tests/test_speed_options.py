"""Speed options build and train on CPU: bf16 autocast, torch.compile, gradient accumulation, the preset."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from conftest import CONFIG_DIR, TINY_MODEL_ARGS, cli_overrides
from lightning import Callback, Trainer
from torch.utils.data import DataLoader

from ask_the_expert.commands import train
from benchmarks.common import quiet_trainer
from lightning_modules.classifier import ClassifierModule

TINY = dict(embed_dim=16, depth=1, num_heads=2, drop_path_rate=0.0, warmup_epochs=0)


def _batches(count: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 100, (size,), generator=generator),
         torch.arange(size))
        for _ in range(count)
    ]  # fmt: skip


def _fit(module: ClassifierModule, batches: list, callbacks: list[Callback] = (), **trainer_kwargs) -> Trainer:
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=list(callbacks), **trainer_kwargs)
    # batch_size=None: the loader yields the pre-built batches as they are.
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def _weights(module: ClassifierModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: ClassifierModule) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items())


def test_bf16_mixed_runs_the_network_in_bfloat16():
    torch.manual_seed(0)
    module = ClassifierModule(**TINY)
    dtypes = []
    module.model.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    before = _weights(module)
    trainer = _fit(module, _batches(2, 8), precision="bf16-mixed")
    assert dtypes == [torch.bfloat16] * 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and _changed(before, module)
    # Master weights stay float32 under mixed precision.
    assert all(v.dtype == torch.float32 for v in module.model.parameters())


def test_compile_trains_and_keeps_the_eager_parameter_names():
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # aot_eager traces forward and backward like inductor but skips its code generation (minutes on 2 cores).
    module = ClassifierModule(**TINY, compile=True, compile_backend="aot_eager")
    eager_keys = list(ClassifierModule(**TINY).state_dict())
    before = _weights(module)
    trainer = _fit(module, _batches(2, 8))
    assert counters["stats"]["unique_graphs"] > 0, "torch.compile never captured the network"
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and _changed(before, module)
    assert list(module.state_dict()) == eager_keys


class GradientRecorder(Callback):
    def __init__(self) -> None:
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradients.append({k: p.grad.clone() for k, p in pl_module.model.named_parameters()})


def test_gradient_accumulation_equals_the_full_batch():
    torch.manual_seed(0)
    reference = ClassifierModule(**TINY)
    ((images, labels, indices),) = _batches(1, 16)
    halves = [(images[:8], labels[:8], indices[:8]), (images[8:], labels[8:], indices[8:])]
    gradients = {}
    for accumulate, batches in ((1, [(images, labels, indices)]), (2, halves)):
        recorder = GradientRecorder()
        trainer = _fit(copy.deepcopy(reference), batches, [recorder], accumulate_grad_batches=accumulate)
        assert trainer.global_step == 1 and len(recorder.gradients) == 1
        gradients[accumulate] = recorder.gradients[0]
    for name, grad in gradients[1].items():
        torch.testing.assert_close(gradients[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_speed_preset_trains_through_the_cli(fake_cifar_root: Path, tmp_path: Path):
    preset = CONFIG_DIR / "trainer" / "speed.yaml"
    assert yaml.safe_load(preset.read_text())["model"]["init_args"]["compile"] is True
    out = tmp_path / "out"
    args = [
        "fit", "-c", str(CONFIG_DIR / "generalist.yaml"), *cli_overrides(fake_cifar_root, out), "-c", str(preset),
        *TINY_MODEL_ARGS,
        # aot_eager: inductor's C++ code generation takes minutes on a 2-core CPU.
        "--model.compile_backend", "aot_eager",
        "--data.device_resident", "true", "--data.augmentation", "basic",
        "--trainer.accumulate_grad_batches", "2", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    assert train.main(args) == 0
    (last,) = out.glob("ask-the-expert/*/checkpoints/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["compile"] is True
    assert checkpoint["global_step"] == 2  # 4 batches, accumulated in pairs
    # Compiled training saves eager parameter names: the checkpoint loads into an uncompiled module.
    ClassifierModule(embed_dim=16, depth=1, num_heads=2).load_state_dict(checkpoint["state_dict"])
