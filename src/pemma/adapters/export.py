"""Merging adapters into a standalone model, and parameter accounting against early fusion."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn

from pemma.adapters.base import PemmaAdaptedModel, unwrap_model
from pemma.models.registry import count_parameters


def merge_adapters(model: PemmaAdaptedModel) -> PemmaAdaptedModel:
    """A copy of ``model`` with the active adapters merged into the weights (peft ``merge_and_unload``).

    The copy's network is a plain MONAI network (no peft layers; trainable base-module copies replace the
    originals), which gives the same ct+pet and pet outputs as ``model`` (up to float rounding) without
    the adapter overhead. It has no untouched CT path any more, so it refuses CT-only input: keep the
    unmerged model or the CT base for that. All parameters of the copy are frozen. ``model`` is unchanged.
    """
    model = unwrap_model(model)
    if not isinstance(model, PemmaAdaptedModel):
        raise ValueError(f"merge_adapters needs a PEMMA model, got {type(model).__name__}")
    if model.merged:
        raise ValueError("model is already merged")
    merged = copy.deepcopy(model)
    merged.base_model = merged.base_model.merge_and_unload()
    merged._merged = True
    merged.requires_grad_(False)
    return merged


_NETS: dict[str, type[nn.Module]] = {"unetr": UNETR, "swin_unetr": SwinUNETR}


def early_fusion_parameter_count(backbone: str, base_kwargs: Mapping[str, Any]) -> int:
    """Parameters of the early-fusion reference: the same network with in_channels=2, all trainable.

    Args:
        backbone: "unetr" or "swin_unetr".
        base_kwargs: the MONAI constructor arguments of the CT base (``img_size`` for UNETR, ``feature_size``,
            ...); ``in_channels`` is replaced by 2, ``out_channels`` defaults to 3.
    """
    if backbone not in _NETS:
        raise ValueError(f"backbone must be one of {sorted(_NETS)}, got {backbone!r}")
    kwargs = {"out_channels": 3, **dict(base_kwargs), "in_channels": 2}
    try:
        with torch.device("meta"):  # no memory, no init
            net = _NETS[backbone](**kwargs)
    except (RuntimeError, NotImplementedError):  # SwinUNETR calls .item() while building
        net = _NETS[backbone](**kwargs)
    return sum(p.numel() for p in net.parameters())


def parameter_report(model: PemmaAdaptedModel, base_kwargs: Mapping[str, Any]) -> dict[str, float]:
    """``{"trainable", "total", "early_fusion", "percent_of_early_fusion"}`` for ``pemma params``.

    ``base_kwargs`` as for :func:`early_fusion_parameter_count`.
    """
    model = unwrap_model(model)
    trainable, total = count_parameters(model)
    early = early_fusion_parameter_count(model.backbone_name, base_kwargs)
    return {"trainable": trainable, "total": total, "early_fusion": early,
            "percent_of_early_fusion": 100.0 * trainable / early}
