"""The conv-tokenizer ViT: its stem, its checks, and a bundle of conv-tokenizer models that the torch-free runtime
answers exactly as the checkpoints do (deploy verify)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from deploy_helpers import write_tiny_checkpoints

from ask_the_expert.commands.deploy import main as deploy_main
from ask_the_expert.deploy.export import export_bundle
from ask_the_expert.method.router import RouterSpec
from ask_the_expert.models.vit_factory import architecture_mismatch, create_vit
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100 import labelled_images

CONV = {"tokenizer": "conv", "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def test_the_stem_turns_32x32_into_a_4x4_token_grid_and_pools_by_averaging():
    model = create_vit("vit_tiny", "scratch32", **CONV)
    strides = [m.stride[0] for m in model.vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 1]  # three stride-2 3x3 convolutions, then the 1x1 projection
    assert model.vit.patch_embed.num_patches == 16 and model.vit.cls_token is None
    assert model.vit.global_pool == "avg"
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 100)


def test_extra_stem_widths_add_stride_1_convolutions_in_front():
    model = create_vit("vit_tiny", "scratch32", **CONV, stem_widths=[8, 8, 16, 16])
    convs = [m for m in model.vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [1, 2, 2, 2, 1] and [c.out_channels for c in convs[:4]] == [8, 8, 16, 16]
    assert model.vit.patch_embed.num_patches == 16


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patch_size": 1}, "power of two"),
        ({"stem_widths": [8, 8]}, "stride-2 convolutions"),
        ({"tokenizer": "patch", "stem_widths": [8, 8, 8]}, "--model.tokenizer conv"),
        ({"tokenizer": "pixels"}, "unknown --model.tokenizer"),
        ({"mlp_ratio": 0.0}, "--model.mlp_ratio"),
    ],
)
def test_bad_tokenizer_settings_name_the_option(changes, message):
    with pytest.raises(SuiteError, match=re.escape(message)):
        create_vit("vit_tiny", "scratch32", **{**CONV, **changes})


def test_pretrained224_refuses_the_conv_tokenizer():
    with pytest.raises(SuiteError, match="pretrained224 keeps"):
        create_vit("vit_tiny", "pretrained224", tokenizer="conv", fetch_pretrained=False)


def test_a_patch_checkpoint_is_another_architecture_than_a_conv_config():
    patch = {"arch": "vit_tiny", "preset": "scratch32", **CONV, "tokenizer": "patch"}
    conv = {"arch": "vit_tiny", "preset": "scratch32", **CONV}
    assert set(architecture_mismatch(conv, patch)) == {"tokenizer", "global_pool", "stem_widths"}
    # An unset stem means the default widths, so a config that spells them out matches.
    assert architecture_mismatch(conv, {**conv, "stem_widths": [8, 8, 16]}) == {}


def test_a_bundle_of_conv_tokenizer_models_verifies_on_val(fake_cifar_root: Path, tmp_path: Path, capsys):
    generalist, experts = write_tiny_checkpoints(tmp_path / "ckpt", model_args=CONV)
    data = DataOptions(data_dir=str(fake_cifar_root), check_integrity=False, val_size=100, num_workers=0)
    val = labelled_images(data, "val")
    bundle = tmp_path / "bundle"
    # tau 1.0 offloads every image, so every expert answers and is compared.
    export_bundle(generalist, experts, bundle, routing=RouterSpec(tau=1.0), data=val, batch_size=64)
    args = ["verify", "--bundle", str(bundle), "--data.data_dir", str(fake_cifar_root)]
    args += ["--data.check_integrity", "false", "--data.val_size", "100", "--data.num_workers", "0"]
    assert deploy_main(args) == 0
    out = capsys.readouterr().out
    assert "PARITY OK" in out and re.search(r"decision_mismatches +0\n", out)
