"""Backbone registry: the MONAI networks pemma builds from a :class:`~pemma.config.ModelConfig`.

Each backbone registers itself once, in the file of its PEMMA model (``pemma_unetr.py``, ``pemma_swin.py``): its
MONAI class, how it is constructed, the ROI multiple it needs and whether DDP must look for unused parameters.
Adding a backbone is that one file (plus its name in :data:`pemma.vocab.BACKBONES` and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from pemma.config import ModelConfig
from pemma.vocab import BACKBONES


@dataclass(frozen=True)
class BackboneSpec:
    """One MONAI backbone.

    Args:
        name: its name in :data:`pemma.vocab.BACKBONES`.
        net_class: the MONAI network class.
        roi_kwarg: the constructor argument that receives the ROI size (UNETR's ``img_size``), if any.
        roi_multiple: every ROI side must be a multiple of this (patch size, window / downsampling).
        unused_parameters: the network owns parameters its forward never uses (DDP needs
            ``find_unused_parameters``). Default False.
        checkpointing_kwarg: the constructor flag that turns on MONAI's own gradient checkpointing, if any.
        checkpointed_class: for networks without such a flag, a subclass of ``net_class`` with the same module tree
            (and state-dict keys) that recomputes its blocks in backward; built when checkpointing is on.
    """

    name: str
    net_class: type[nn.Module]
    roi_multiple: int
    roi_kwarg: str | None = None
    unused_parameters: bool = False
    checkpointing_kwarg: str | None = None
    checkpointed_class: type[nn.Module] | None = None


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Register a backbone (once per name; the name must be in :data:`pemma.vocab.BACKBONES`)."""
    if spec.name not in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is not in pemma.vocab.BACKBONES {BACKBONES}")
    if spec.name in _BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone ``name`` (ValueError listing the known ones)."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(_BACKBONES)}") from None


def check_roi(name: str, roi_size: list[int]) -> None:
    """ValueError when ``roi_size`` does not fit backbone ``name``."""
    multiple = get_backbone(name).roi_multiple
    if any(int(s) % multiple for s in roi_size):
        raise ValueError(f"{name} needs roi_size divisible by {multiple}, got {list(roi_size)}")


def constructor_kwargs(cfg: ModelConfig, in_channels: int) -> dict[str, Any]:
    """The MONAI constructor arguments of the network of ``cfg`` with ``in_channels`` inputs."""
    spec = get_backbone(cfg.backbone)
    kwargs = {**cfg.backbone_kwargs, "in_channels": in_channels, "out_channels": cfg.out_channels}
    if spec.roi_kwarg:
        kwargs[spec.roi_kwarg] = list(cfg.roi_size)
    return kwargs


def build_backbone(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A MONAI segmentation network for ``in_channels`` inputs, sized by ``cfg`` (preset + overrides).

    ``cfg.gradient_checkpointing`` turns on the backbone's checkpointing (Swin UNETR: MONAI's ``use_checkpoint``;
    UNETR: :class:`~pemma.models.checkpointed_unetr.CheckpointedUNETR`).

    Example:
        >>> net = build_backbone(build_config("tiny").model, in_channels=1)
    """
    spec = get_backbone(cfg.backbone)
    check_roi(cfg.backbone, cfg.roi_size)
    kwargs = constructor_kwargs(cfg, in_channels)
    if spec.checkpointing_kwarg:
        kwargs[spec.checkpointing_kwarg] = cfg.gradient_checkpointing
    if cfg.gradient_checkpointing and spec.checkpointed_class is not None:
        return spec.checkpointed_class(**kwargs)
    return spec.net_class(**kwargs)


def backbone_nets() -> dict[str, type[nn.Module]]:
    """``{name: MONAI class}`` of the registered backbones."""
    return {name: spec.net_class for name, spec in _BACKBONES.items()}
