"""Merging adapters into a standalone model (peft ``merge_and_unload``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from pemma.adapters.state import AdaptedModel, unwrap_model


def merge_adapters(model: AdaptedModel, inputs: Sequence[str] | None = None) -> AdaptedModel:
    """A copy of ``model`` with the active adapters merged into the weights (peft ``merge_and_unload``).

    The copy's network is a plain MONAI network (no peft layers; trainable base-module copies replace the
    originals), which gives the same ct+pet and pet outputs as ``model`` (up to float rounding) without
    the adapter overhead. It has no untouched CT path any more, so it refuses CT-only input: keep the
    unmerged model or the CT base for that. All parameters of the copy are frozen. ``model`` is unchanged.

    A model with stacked modalities (:mod:`pemma.models.stacking`) holds one adapter per level: the copy merges
    the adapter of the level serving ``inputs`` (default: every modality) and accepts only that level's input sets.
    """
    model = unwrap_model(model)
    if not isinstance(model, AdaptedModel):
        raise ValueError(f"merge_adapters needs a PEMMA model, got {type(model).__name__}")
    if model.merged:
        raise ValueError("model is already merged")
    level = model.level_of(model.modalities if inputs is None else tuple(inputs)) if model.stack else 0
    merged = copy.deepcopy(model)
    if model.stack:  # merge_and_unload merges the active adapter of each layer: the level's
        name = merged.level_adapter(level)
        for layer in merged.base_model.modules():
            if isinstance(layer, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                layer._active_adapter = name
    merged.merged_level = level
    merged.base_model = merged.base_model.merge_and_unload()
    merged._merged = True
    merged.requires_grad_(False)
    return merged
