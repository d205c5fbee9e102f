"""ViT model factory over timm for the presets of docs/design.md §2 and §8.

The suite's ViT shapes are a timm-style registry: an arch (``--model.arch``) is one function under
``@register_arch`` whose name is the arch's name and which returns its ``VitArch`` (the timm models to build from
scratch and to load ImageNet weights from, and its default shape). How pixels become tokens is an option of every
arch: timm's patch embedding or the convolutional tokenizer (ask_the_expert/models/conv_tokenizer.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ask_the_expert.method.cifar100_classes import NUM_CLASSES
from ask_the_expert.models.conv_tokenizer import ConvTokenizer, default_stem_widths
from ask_the_expert.utils.errors import SuiteError

Preset = Literal["scratch32", "pretrained224"]
# How pixels become tokens: timm's patch embedding (one strided linear projection) or a conv stem
# (ask_the_expert/models/conv_tokenizer.py; scratch32 only).
Tokenizer = Literal["patch", "conv"]
GlobalPool = Literal["token", "avg"]
# Init arguments that fix the network's shape: a checkpoint must agree on them to load.
ARCHITECTURE_KEYS = (
    "arch",
    "preset",
    "num_classes",
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "tokenizer",
    "mlp_ratio",
    "global_pool",
    "stem_widths",
)
# What an unset tokenizer / mlp_ratio / global_pool means: timm's ViT (class token for the patch tokenizer; the
# conv tokenizer averages its tokens, which trains faster from scratch and needs no class token).
DEFAULT_MLP_RATIO = 4.0


def default_global_pool(tokenizer: str | None) -> str:
    return "avg" if tokenizer == "conv" else "token"


# preset -> (input size the ViT sees, patch size)
PRESETS: dict[str, tuple[int, int]] = {"scratch32": (32, 4), "pretrained224": (224, 16)}


@dataclass(frozen=True)
class VitArch:
    """A ViT the suite builds: the timm model trained from scratch (``scratch32``), the timm model whose ImageNet
    weights ``pretrained224`` loads, and the default shape an unset ``--model.embed_dim/depth/num_heads`` means."""

    scratch_model: str
    pretrained_model: str
    embed_dim: int
    depth: int
    num_heads: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.embed_dim, self.depth, self.num_heads


ARCHS: dict[str, VitArch] = {}


def register_arch(fn: Callable[[], VitArch]) -> Callable[[], VitArch]:
    """Register an arch: the function's name is ``--model.arch``, its return value the arch."""
    ARCHS[fn.__name__] = fn()
    return fn


@register_arch
def vit_tiny() -> VitArch:
    """ViT-Tiny shape: the edge generalist (docs/design.md §2)."""
    return VitArch("vit_tiny_patch16_224", "deit_tiny_patch16_224", embed_dim=192, depth=12, num_heads=3)


@register_arch
def vit_small() -> VitArch:
    """ViT-Small shape: the stage-0 base model and the experts (docs/design.md §2)."""
    return VitArch("vit_small_patch16_224", "deit_small_patch16_224", embed_dim=384, depth=12, num_heads=6)


@register_arch
def vit_base() -> VitArch:
    """ViT-Base shape."""
    return VitArch("vit_base_patch16_224", "deit_base_patch16_224", embed_dim=768, depth=12, num_heads=12)


class ViTClassifier(nn.Module):
    """A timm ViT plus the resize from the 32x32 data to the ViT's input size (a no-op for ``scratch32``).

    Resizing inside the model keeps the data pipeline at 32x32 and makes exported graphs take raw-size images.
    """

    def __init__(self, vit: nn.Module, input_size: int) -> None:
        super().__init__()
        self.vit = vit
        self.input_size = input_size

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay besides norms and biases (timm's convention for ViTs)."""
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        return self.vit(images)


def create_vit(
    arch: str = "vit_tiny",
    preset: Preset = "scratch32",
    num_classes: int = NUM_CLASSES,
    pretrained_path: str | None = None,
    drop_path_rate: float = 0.1,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    fetch_pretrained: bool = True,
    patch_size: int | None = None,
    tokenizer: Tokenizer = "patch",
    mlp_ratio: float | None = None,
    global_pool: GlobalPool | None = None,
    stem_widths: list[int] | None = None,
) -> ViTClassifier:
    """Build a ViT classifier.

    ``scratch32`` trains from random init at 32x32 with 4x4 patches. ``pretrained224`` loads timm's DeiT ImageNet
    weights, from ``pretrained_path`` when given (a ``.safetensors``/``.pth`` state dict) or else from the hub, and
    resizes inputs to 224. ``embed_dim``/``depth``/``num_heads`` override the arch's shape (tests use tiny models);
    ``patch_size`` overrides the preset's patch (``scratch32`` only: 8 gives 16 tokens, ~5x cheaper than 4 on a CPU).
    ``fetch_pretrained=False`` builds the ``pretrained224`` network without loading weights (a checkpoint that is
    restored next holds them all), so restoring works offline. ``tokenizer="conv"`` replaces the patch embedding by
    a conv stem of total stride ``patch_size`` (``scratch32`` only); ``mlp_ratio`` sets the MLP width (timm: 4) and
    ``global_pool`` the pooling (``token``: class token; ``avg``: mean of the tokens, the conv tokenizer's default);
    ``stem_widths`` the conv tokenizer's convolution widths (see ``ConvTokenizer``).
    """
    if arch not in ARCHS:
        raise SuiteError(f"unknown --model.arch '{arch}'; choose one of {sorted(ARCHS)}.")
    if preset not in PRESETS:
        raise SuiteError(f"unknown --model.preset '{preset}'; choose one of {sorted(PRESETS)}.")
    input_size, preset_patch = PRESETS[preset]
    pretrained = preset == "pretrained224"
    if patch_size is not None and (pretrained or patch_size < 1 or input_size % patch_size):
        raise SuiteError(
            f"--model.patch_size {patch_size} does not fit preset {preset!r}: scratch32 takes a patch that divides "
            f"32 (2, 4, 8, 16); pretrained224 keeps the weights' patch 16 (leave patch_size unset)."
        )
    if tokenizer not in ("patch", "conv"):
        raise SuiteError(f"unknown --model.tokenizer '{tokenizer}'; choose 'patch' or 'conv'.")
    if pretrained and (tokenizer != "patch" or mlp_ratio not in (None, DEFAULT_MLP_RATIO) or global_pool):
        raise SuiteError(
            "pretrained224 keeps the DeiT weights' patch tokenizer, MLP ratio and class token: leave "
            "--model.tokenizer, --model.mlp_ratio and --model.global_pool unset, or use --model.preset scratch32."
        )
    if global_pool not in (None, "token", "avg"):
        raise SuiteError(f"unknown --model.global_pool '{global_pool}'; choose 'token' or 'avg'.")
    if mlp_ratio is not None and not mlp_ratio > 0:
        raise SuiteError(f"--model.mlp_ratio {mlp_ratio} must be > 0 (timm's ViT uses 4).")
    patch_size = patch_size or preset_patch
    name = ARCHS[arch].pretrained_model if pretrained else ARCHS[arch].scratch_model
    # The arch's shape, unless overridden (tests use tiny models).
    shape = dict(zip(("embed_dim", "depth", "num_heads"), ARCHS[arch].shape, strict=True))
    shape.update({k: v for k, v in dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads).items() if v})
    kwargs = dict(
        num_classes=num_classes, img_size=input_size, patch_size=patch_size, drop_path_rate=drop_path_rate, **shape
    )
    if not pretrained:
        pool = global_pool or default_global_pool(tokenizer)
        kwargs.update(mlp_ratio=mlp_ratio or DEFAULT_MLP_RATIO, global_pool=pool, class_token=pool == "token")
        if tokenizer == "conv":
            kwargs["embed_layer"] = partial(ConvTokenizer, widths=stem_widths)
        elif stem_widths is not None:
            raise SuiteError("--model.stem_widths shapes the conv tokenizer; set --model.tokenizer conv or drop it.")
    if not (pretrained and fetch_pretrained):
        return ViTClassifier(timm.create_model(name, pretrained=False, **kwargs), input_size)
    if pretrained_path is not None:
        if not Path(pretrained_path).is_file():
            raise SuiteError(
                f"--model.pretrained_path '{pretrained_path}' does not exist. Provide the weights file of timm's "
                f"'{name}' (model.safetensors from the hub repo timm/{name}.fb_in1k)."
            )
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_path))
    try:
        vit = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, ConnectionError) as err:
        source = f"'{pretrained_path}'" if pretrained_path else f"the Hugging Face hub (timm/{name}.fb_in1k)"
        raise SuiteError(
            f"Could not load the ImageNet weights of '{name}' from {source} ({type(err).__name__}: {err}). "
            f"Without internet, download 'model.safetensors' of timm/{name}.fb_in1k on a connected machine and "
            f"pass it as --model.pretrained_path; or use --model.preset scratch32."
        ) from None
    return ViTClassifier(vit, input_size)


def resolved_architecture(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The ARCHITECTURE_KEYS of ``hparams`` with an unset shape (None) replaced by what it builds: the arch's
    embed_dim/depth/num_heads and the preset's patch, so a config that leaves them to the arch matches a checkpoint
    that spells them out."""
    out = {k: hparams.get(k) for k in ARCHITECTURE_KEYS}
    shape = ARCHS[out["arch"]].shape if out["arch"] in ARCHS else (None,) * 3
    for key, default in zip(("embed_dim", "depth", "num_heads"), shape, strict=True):
        out[key] = out[key] or default
    out["patch_size"] = out["patch_size"] or PRESETS.get(out["preset"], (None, None))[1]
    out["tokenizer"] = out["tokenizer"] or "patch"
    out["mlp_ratio"] = float(out["mlp_ratio"] or DEFAULT_MLP_RATIO)
    out["global_pool"] = out["global_pool"] or default_global_pool(out["tokenizer"])
    if out["tokenizer"] == "conv" and out["stem_widths"] is None and out["embed_dim"] and out["patch_size"]:
        out["stem_widths"] = default_stem_widths(out["embed_dim"], out["patch_size"])
    out["stem_widths"] = list(out["stem_widths"]) if out["stem_widths"] is not None else None
    return out


def architecture_mismatch(
    expected: Mapping[str, Any], found: Mapping[str, Any], raise_as: str | None = None
) -> dict[str, tuple[Any, Any]]:
    """The ARCHITECTURE_KEYS on which two hyperparameter sets differ, as {key: (expected, found)}.

    With ``raise_as`` (the option that named the checkpoint) a mismatch raises SuiteError instead.
    """
    want, got = resolved_architecture(expected), resolved_architecture(found)
    diff = {k: (want[k], got[k]) for k in ARCHITECTURE_KEYS if want[k] != got[k]}
    if diff and raise_as is not None:
        details = "; ".join(f"{k}: config {want!r}, checkpoint {got!r}" for k, (want, got) in diff.items())
        raise SuiteError(
            f"The checkpoint of {raise_as} is another architecture than the model config ({details}). Use the "
            "config the checkpoint was trained with, or set those --model.* values to the checkpoint's."
        )
    return diff
