"""``pemma train``: a segmentation backbone trained on the chosen modalities (CT-only, or early fusion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.data.layout import CaseSplit, discover_cases, select_cases, split_cases
from pemma.models.accounting import count_parameters
from pemma.models.registry import build_backbone, get_backbone
from pemma.runs import save_weights
from pemma.training.loop import TrainingTask, train_task


def backbone_task(cfg: RunConfig, net: nn.Module | None = None, name: str | None = None,
                  extra_meta: dict[str, Any] | None = None) -> TrainingTask:
    """All parameters of a MONAI backbone with ``len(modalities)`` input channels train.

    Args:
        cfg: run configuration (``data.modalities`` are the input channels).
        net: an initialised network (e.g. early fusion started from a CT model). Default: a fresh one.
        name: what the run is, for the log. extra_meta: stored in ``model.json``.
    """
    modalities = list(cfg.data.modalities)
    torch.manual_seed(cfg.train.seed)
    net = net if net is not None else build_backbone(cfg.model, in_channels=len(modalities))
    trainable, total = count_parameters(net)
    name = name or ("CT-only" if modalities == ["ct"] else "early fusion" if len(modalities) > 1
                    else "single-modality")

    def save(model: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_weights(model, run_dir, {"kind": "backbone", "backbone": cfg.model.backbone,
                                      "modalities": modalities, "method": name, **(extra_meta or {}), **meta})

    return TrainingTask(
        model=net, modalities=modalities, forward=lambda module, image, step: module(image),
        predictor=lambda module, inputs: module, save=save,
        # MONAI's TransformerBlock always builds a cross-attention norm that UNETR never uses
        find_unused_parameters=get_backbone(cfg.model.backbone).unused_parameters,
        describe=[f"model: {cfg.model.backbone} ({name}), {len(modalities)} input channel(s), "
                  f"roi {cfg.model.roi_size}, {cfg.model.backbone_kwargs}",
                  f"trainable parameters: {trainable:,} of {total:,}"])


def select_split(cfg: RunConfig, modalities: list[str]) -> CaseSplit:
    """The labelled cases of ``cfg.data`` with ``modalities`` (not nnU-Net ``imagesTs`` cases, unless there are only
    those), split per centre into training / validation."""
    every = discover_cases(cfg.data.root, cfg.preprocess.modality_registry(), cfg.data.roi_names)
    found = [c for c in every if not c.test] or every
    cases = select_cases(found, centres=cfg.data.centres, modalities=modalities,
                         require_label=True, source=str(cfg.data.root))
    return split_cases(cases, cfg.data.val_fraction, cfg.train.seed)


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          split: CaseSplit | None = None) -> dict[str, Any]:
    """Train a backbone on ``cfg.data`` and write the run folder ``out_dir``.

    ``split`` gives the (training, validation) cases explicitly (e.g. a protocol's split); by default they
    are the cases of ``cfg.data`` split per centre by ``cfg.data.val_fraction``.

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom", "centres": ["CHUM"]}})
        >>> train(cfg, "runs/ct_unetr")
    """
    train_cases, val_cases = split or select_split(cfg, cfg.data.modalities)
    return train_task(backbone_task(cfg), cfg, train_cases, val_cases, out_dir, resume=resume, progress=progress,
                      meta={"train_cases": [c.case_id for c in train_cases],
                            "val_cases": [c.case_id for c in val_cases]})
