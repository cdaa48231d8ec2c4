"""Merging adapters into a standalone model (peft ``merge_and_unload``)."""

from __future__ import annotations

import copy

from pemma.adapters.state import AdaptedModel, unwrap_model


def merge_adapters(model: AdaptedModel) -> AdaptedModel:
    """A copy of ``model`` with the active adapters merged into the weights (peft ``merge_and_unload``).

    The copy's network is a plain MONAI network (no peft layers; trainable base-module copies replace the
    originals), which gives the same ct+pet and pet outputs as ``model`` (up to float rounding) without
    the adapter overhead. It has no untouched CT path any more, so it refuses CT-only input: keep the
    unmerged model or the CT base for that. All parameters of the copy are frozen. ``model`` is unchanged.
    """
    model = unwrap_model(model)
    if not isinstance(model, AdaptedModel):
        raise ValueError(f"merge_adapters needs a PEMMA model, got {type(model).__name__}")
    if model.merged:
        raise ValueError("model is already merged")
    merged = copy.deepcopy(model)
    merged.base_model = merged.base_model.merge_and_unload()
    merged._merged = True
    merged.requires_grad_(False)
    return merged
