"""ViT factory: presets, local pretrained weights, clear errors, parameter counts of the full shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from ask_the_expert.models.vit_factory import (
    ARCHS,
    VitArch,
    architecture_mismatch,
    create_vit,
    register_arch,
    resolved_architecture,
)
from ask_the_expert.utils.errors import SuiteError

TINY = dict(embed_dim=16, depth=1, num_heads=2)


def test_scratch32_takes_32x32_with_4x4_patches():
    model = create_vit("vit_tiny", "scratch32", **TINY)
    assert model.vit.patch_embed.patch_size == (4, 4) and model.vit.patch_embed.num_patches == 64
    seen = []
    model.vit.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 100)
    assert seen == [(3, 3, 32, 32)]  # no resize at the native size


@pytest.fixture(scope="module")
def deit_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny DeiT-shaped ImageNet state dict (1000-way head) saved as a local weights file."""
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=1000, **TINY)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "deit_tiny.pth"
    torch.save(state, path)
    return path, state


def test_pretrained224_loads_a_local_weights_file(deit_weights):
    path, saved = deit_weights
    model = create_vit("vit_tiny", "pretrained224", num_classes=100, pretrained_path=str(path), **TINY)
    loaded = model.vit.state_dict()
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "norm.bias"):
        assert torch.equal(loaded[name], saved[name]), name
    for name, value in model.blocks.state_dict().items():
        assert torch.equal(value, saved[f"blocks.{name}"]), name
    # The ImageNet head is replaced by a fresh 100-way one.
    assert saved["head.weight"].shape == (1000, 16) and loaded["head.weight"].shape == (100, 16)

    seen = []
    model.vit.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert seen == [(2, 3, 224, 224)]  # 32x32 data resized to the ViT's input size


def test_missing_pretrained_file_is_named(tmp_path: Path):
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(SuiteError, match=r"pretrained_path .*nope/model.safetensors.* does not exist"):
        create_vit("vit_tiny", "pretrained224", pretrained_path=str(missing), **TINY)


@pytest.mark.parametrize(("arch", "preset"), [("vit_huge", "scratch32"), ("vit_tiny", "pretrained32")])
def test_unknown_arch_or_preset_lists_the_choices(arch: str, preset: str):
    with pytest.raises(SuiteError, match=r"choose one of \["):
        create_vit(arch, preset, **TINY)


def vit_parameter_count(d: int, depth: int, patch: int, tokens: int, classes: int = 100) -> int:
    """Analytic parameter count of a ViT with a class token, MLP ratio 4 and a linear head."""
    patch_embed = 3 * patch * patch * d + d
    cls_and_pos = d + (tokens + 1) * d
    # Per block: 2 LayerNorms (4d), qkv (3d^2 + 3d), proj (d^2 + d), MLP (4d^2 + 4d, 4d^2 + d).
    block = 12 * d * d + 13 * d
    return patch_embed + cls_and_pos + depth * block + 2 * d + classes * d + classes


@pytest.mark.parametrize(("arch", "dim"), [("vit_tiny", 192), ("vit_small", 384)])
def test_full_scratch32_presets_have_the_vit_parameter_count(arch: str, dim: int):
    with torch.device("meta"):  # shapes only: skips allocating and initialising the weights
        model = create_vit(arch, "scratch32")
    assert model.vit.embed_dim == dim and len(model.blocks) == 12
    expected = vit_parameter_count(dim, depth=12, patch=4, tokens=(32 // 4) ** 2)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_pretrained224_checkpoint_restores_without_the_weights_file(deit_weights, tmp_path: Path):
    """A checkpoint holds every weight: restoring must not fetch ImageNet weights (offline, file gone)."""
    from lightning import Trainer

    from lightning_modules.classifier import ClassifierModule

    path, _ = deit_weights
    copy = tmp_path / "deit_copy.pth"
    copy.write_bytes(path.read_bytes())
    module = ClassifierModule(preset="pretrained224", pretrained_path=str(copy), **TINY)
    trainer = Trainer(logger=False, accelerator="cpu", enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "g.ckpt")
    copy.unlink()
    with pytest.raises(SuiteError, match="does not exist"):  # building it anew needs the file ...
        ClassifierModule(preset="pretrained224", pretrained_path=str(copy), **TINY)
    restored = ClassifierModule.load_from_checkpoint(tmp_path / "g.ckpt", map_location="cpu")  # ... restoring not
    images = torch.randn(2, 3, 32, 32)
    module.eval(), restored.eval()
    assert torch.equal(module(images), restored(images))


def test_an_unset_shape_means_the_arch_default_when_checkpoints_are_compared():
    config = {"arch": "vit_small", "preset": "scratch32", "num_classes": 100, "embed_dim": None, "patch_size": None}
    spelled_out = {**config, "embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 4}
    assert architecture_mismatch(config, spelled_out) == {}
    with torch.device("meta"):  # the table agrees with what timm builds
        model = create_vit("vit_small", "scratch32")
    assert (model.vit.embed_dim, len(model.blocks), model.vit.blocks[0].attn.num_heads) == (384, 12, 6)
    # A real difference is reported with the values each side builds, not as "None".
    smaller = {**config, "embed_dim": 96, "depth": 4, "num_heads": 3, "patch_size": 8}
    assert architecture_mismatch(config, smaller) == {
        "embed_dim": (384, 96), "depth": (12, 4), "num_heads": (6, 3), "patch_size": (4, 8),
    }  # fmt: skip


def test_adding_an_arch_is_one_registered_function() -> None:
    @register_arch
    def vit_micro() -> VitArch:
        """A toy arch: 32-dim, 2 blocks, 2 heads, built on timm's ViT-Tiny."""
        return VitArch("vit_tiny_patch16_224", "deit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2)

    try:
        model = create_vit("vit_micro", "scratch32", tokenizer="conv", patch_size=8)
        assert (model.vit.embed_dim, len(model.vit.blocks), model.vit.blocks[0].attn.num_heads) == (32, 2, 2)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        built = resolved_architecture({"arch": "vit_micro", "preset": "scratch32", "tokenizer": "conv"})
        assert (built["embed_dim"], built["depth"], built["num_heads"], built["patch_size"]) == (32, 2, 2, 4)
    finally:
        ARCHS.pop("vit_micro")
    with pytest.raises(SuiteError, match=r"unknown --model\.arch 'vit_micro'"):
        create_vit("vit_micro")
