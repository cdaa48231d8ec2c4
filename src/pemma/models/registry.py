"""Backbone registry: MONAI UNETR and Swin UNETR built from a :class:`~pemma.config.ModelConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn
from torch.utils.checkpoint import checkpoint

from pemma.config import ModelConfig


class CheckpointedUNETR(UNETR):
    """MONAI UNETR whose transformer blocks recompute their activations in backward (gradient checkpointing).

    MONAI's UNETR has no checkpointing switch (its SwinUNETR has ``use_checkpoint``); this subclass adds
    one, ``gradient_checkpointing``. The module tree is UNETR's, so state-dict keys, parameter names and the
    initialisation for a given seed are the same; outputs and gradients equal UNETR's. With the switch off,
    or when autograd is off (inference), it runs ``UNETR.forward`` itself.

    Args:
        *args: ``UNETR`` arguments.
        gradient_checkpointing: recompute each transformer block in backward. Default True.
        **kwargs: ``UNETR`` keyword arguments.

    Example:
        >>> net = CheckpointedUNETR(in_channels=1, out_channels=3, img_size=32, hidden_size=48, num_heads=4)
    """

    def __init__(self, *args: Any, gradient_checkpointing: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gradient_checkpointing = bool(gradient_checkpointing)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return super().forward(x_in)
        # UNETR.forward, with ViT.forward unrolled so that each block runs under torch's checkpoint
        # (UNETR's ViT has no classification token or head)
        x = self.vit.patch_embedding(x_in)
        hidden = []
        for block in self.vit.blocks:
            x = checkpoint(block, x, use_reentrant=False)
            hidden.append(x)
        x = self.vit.norm(x)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(hidden[3]))
        enc3 = self.encoder3(self.proj_feat(hidden[6]))
        enc4 = self.encoder4(self.proj_feat(hidden[9]))
        dec3 = self.decoder5(self.proj_feat(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))


def _unetr(in_channels: int, out_channels: int, roi_size: list[int], use_checkpoint: bool = False,
           **kwargs: Any) -> nn.Module:
    if any(s % 16 for s in roi_size):
        raise ValueError(f"UNETR needs roi_size divisible by its 16-voxel patches, got {roi_size}")
    if use_checkpoint:
        return CheckpointedUNETR(in_channels=in_channels, out_channels=out_channels, img_size=roi_size, **kwargs)
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=roi_size, **kwargs)


def _swin_unetr(in_channels: int, out_channels: int, roi_size: list[int], **kwargs: Any) -> nn.Module:
    if any(s % 32 for s in roi_size):
        raise ValueError(f"Swin UNETR needs roi_size divisible by 32, got {roi_size}")
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, **kwargs)


BACKBONE_BUILDERS: dict[str, Callable[..., nn.Module]] = {"unetr": _unetr, "swin_unetr": _swin_unetr}


def build_backbone(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A MONAI segmentation network for ``in_channels`` inputs, sized by ``cfg`` (preset + overrides).

    ``cfg.gradient_checkpointing`` gives Swin UNETR MONAI's ``use_checkpoint`` and UNETR a
    :class:`CheckpointedUNETR`.

    Example:
        >>> net = build_backbone(build_config("tiny").model, in_channels=1)
    """
    builder = BACKBONE_BUILDERS[cfg.backbone]
    kwargs = cfg.backbone_kwargs
    if cfg.gradient_checkpointing:
        kwargs["use_checkpoint"] = True
    return builder(in_channels, cfg.out_channels, cfg.roi_size, **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared parameters counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
