"""A convolutional tokenizer for timm's ``VisionTransformer``: a small conv stem in place of the patch embedding.

From-scratch ViTs on 32x32 images learn far faster per FLOP when a few 3x3 convolutions, rather than one strided
linear projection, turn pixels into tokens (CCT, Hassani et al. 2021; "Early convolutions help transformers see
better", Xiao et al. 2021). This stem follows the second: ``log2(patch_size)`` stride-2 3x3 convolutions with
batch norm and ReLU, doubling the width up to ``embed_dim``, then a 1x1 projection to ``embed_dim``; widths given
beyond those convolutions add stride-1 3x3 convolutions in front, at full resolution. A
``patch_size`` of 8 turns a 32x32 image into a 4x4 grid of 16 tokens, as many as a plain patch-8 ViT, but each
token is computed by a receptive field of 15x15 pixels.

It is passed to timm as ``embed_layer``, so everything else (blocks, pooling, head, init, ``no_weight_decay``) is
timm's own; it exports to ONNX as plain Conv/BatchNormalization/Relu nodes (batch norm folded in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ask_the_expert.utils.errors import SuiteError


def default_stem_widths(embed_dim: int, patch_size: int) -> list[int]:
    """Widths of the stride-2 convolutions: doubling up to ``embed_dim`` (e.g. 64, 128, 256 for 256 and patch 8)."""
    levels = patch_size.bit_length() - 1
    return [max(8, embed_dim >> (levels - 1 - i)) for i in range(levels)]


class ConvTokenizer(nn.Module):
    """Image -> tokens by a conv stem; the interface timm's ``VisionTransformer`` expects of ``embed_layer``.

    Args:
        img_size: input side in pixels (square).
        patch_size: total stride of the stem, a power of two >= 2; the token grid is ``img_size / patch_size``.
        in_chans: input channels.
        embed_dim: token width.
        bias: bias of the final 1x1 projection (timm passes ``not pre_norm``).
        widths: widths of the 3x3 convolutions (default ``default_stem_widths(embed_dim, patch_size)``): the last
            ``log2(patch_size)`` have stride 2, any before them stride 1.
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        embed_dim: int = 192,
        bias: bool = True,
        widths: Sequence[int] | None = None,
        **_timm_options: object,  # dynamic_img_pad and friends: not supported by a fixed stem, timm passes them
    ) -> None:
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1) or img_size % patch_size:
            raise SuiteError(
                f"--model.patch_size {patch_size} does not fit the conv tokenizer: it is the stem's total stride, "
                f"a power of two >= 2 that divides the input size {img_size} (2, 4, 8, 16)."
            )
        widths = list(widths) if widths is not None else default_stem_widths(embed_dim, patch_size)
        downsampling = patch_size.bit_length() - 1
        if len(widths) < downsampling or min(widths) < 1:
            raise SuiteError(
                f"--model.stem_widths {widths} must give a positive width to each of the stem's {downsampling} "
                f"stride-2 convolutions (patch {patch_size}), and may add stride-1 ones in front."
            )
        strides = [1] * (len(widths) - downsampling) + [2] * downsampling
        layers: list[nn.Module] = []
        channels = in_chans
        for width, stride in zip(widths, strides, strict=True):
            conv = nn.Conv2d(channels, width, 3, stride, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)
        grid = img_size // patch_size
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (grid, grid)
        self.num_patches = grid * grid
        self.dynamic_img_pad = False

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, tokens, embed_dim)
