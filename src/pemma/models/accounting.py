"""Parameter accounting: trainable / total parameters, and their share of the early-fusion model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pemma.adapters.state import unwrap_model
from pemma.models.registry import backbone_nets


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared parameters counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def early_fusion_parameter_count(backbone: str, base_kwargs: Mapping[str, Any]) -> int:
    """Parameters of the early-fusion reference: the same network with in_channels=2, all trainable.

    Args:
        backbone: "unetr" or "swin_unetr".
        base_kwargs: the MONAI constructor arguments of the CT base (``img_size`` for UNETR, ``feature_size``,
            ...); ``in_channels`` is replaced by 2, ``out_channels`` defaults to 3.
    """
    nets = backbone_nets()
    if backbone not in nets:
        raise ValueError(f"backbone must be one of {sorted(nets)}, got {backbone!r}")
    kwargs = {"out_channels": 3, **dict(base_kwargs), "in_channels": 2}
    try:
        with torch.device("meta"):  # no memory, no init
            net = nets[backbone](**kwargs)
    except (RuntimeError, NotImplementedError):  # SwinUNETR calls .item() while building
        net = nets[backbone](**kwargs)
    return sum(p.numel() for p in net.parameters())


def parameter_report(model: nn.Module, base_kwargs: Mapping[str, Any]) -> dict[str, float]:
    """``{"trainable", "total", "early_fusion", "percent_of_early_fusion"}`` for ``pemma params``.

    ``base_kwargs`` as for :func:`early_fusion_parameter_count`.
    """
    model = unwrap_model(model)
    trainable, total = count_parameters(model)
    early = early_fusion_parameter_count(model.backbone_name, base_kwargs)
    return {"trainable": trainable, "total": total, "early_fusion": early,
            "percent_of_early_fusion": 100.0 * trainable / early}
