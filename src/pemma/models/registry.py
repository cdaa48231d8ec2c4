"""Backbone registry: MONAI UNETR and Swin UNETR built from a :class:`~pemma.config.ModelConfig`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn
from torch.utils.checkpoint import checkpoint

from pemma.config import ModelConfig


def _unetr(in_channels: int, out_channels: int, roi_size: list[int], **kwargs: Any) -> nn.Module:
    if any(s % 16 for s in roi_size):
        raise ValueError(f"UNETR needs roi_size divisible by its 16-voxel patches, got {roi_size}")
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=roi_size, **kwargs)


def _swin_unetr(in_channels: int, out_channels: int, roi_size: list[int], **kwargs: Any) -> nn.Module:
    if any(s % 32 for s in roi_size):
        raise ValueError(f"Swin UNETR needs roi_size divisible by 32, got {roi_size}")
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, **kwargs)


#: The MONAI class of each backbone name of :data:`pemma.vocab.BACKBONES`.
BACKBONE_NETS: dict[str, type[nn.Module]] = {"unetr": UNETR, "swin_unetr": SwinUNETR}
BACKBONE_BUILDERS: dict[str, Callable[..., nn.Module]] = {"unetr": _unetr, "swin_unetr": _swin_unetr}


def _checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in backward (the module tree and state-dict keys are unchanged)."""
    for block in blocks:
        forward = block.forward

        def wrapped(*args: Any, _forward: Callable = forward, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = functools.update_wrapper(wrapped, forward)


def build_backbone(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A MONAI segmentation network for ``in_channels`` inputs, sized by ``cfg`` (preset + overrides).

    Example:
        >>> net = build_backbone(build_config("tiny").model, in_channels=1)
    """
    builder = BACKBONE_BUILDERS[cfg.backbone]
    kwargs = cfg.backbone_kwargs
    if cfg.backbone == "swin_unetr":
        kwargs["use_checkpoint"] = cfg.gradient_checkpointing
    net = builder(in_channels, cfg.out_channels, cfg.roi_size, **kwargs)
    if cfg.gradient_checkpointing and cfg.backbone == "unetr":
        _checkpoint_blocks(net.vit.blocks)
    return net
