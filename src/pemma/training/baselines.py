"""Baselines of the PEMMA paper, trained from a CT base run on CT+PET cases like ``pemma adapt``:

* ``early-fusion``: CT and PET as two input channels, all parameters train, started from the CT model (its
  first convolution gets a zero PET channel, so training starts from the CT model's function);
* ``full``: the PEMMA model (PET pathway + adapters) with every parameter trainable, the CT base included;
* ``late-fusion``: a PET model trained on its own, its logits summed with the CT model's by a weight chosen
  on the validation cases.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from pemma.adapters.base import unwrap_model
from pemma.adapters.config import AdapterConfig
from pemma.config import RunConfig
from pemma.data.dataset import cached_dataset, case_dicts
from pemma.data.layout import CaseSplit
from pemma.data.transforms import preprocessing
from pemma.evaluation.metrics import AggregatedDice
from pemma.io_utils import write_text_atomic
from pemma.models.late_fusion import LateFusion
from pemma.models.loading import build_pemma
from pemma.models.registry import build_backbone, count_parameters
from pemma.training.adaptation import ALL_INPUTS, AdaptationSetup, prepare_adaptation, select_channels
from pemma.training.checkpoint import MODEL_META, load_weights, read_meta, save_weights
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import backbone_task

BASELINES = ("early-fusion", "full", "late-fusion")
LATE_FUSION_INPUTS = [["ct", "pet"], ["ct"], ["pet"]]
LATE_FUSION_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def inflate_first_conv(net: nn.Module, ct_state: dict[str, torch.Tensor]) -> list[str]:
    """Load a 1-channel CT state into a 2-channel [CT, PET] network; input-channel mismatches get the CT
    weights on channel 0 and zeros on the PET channel. Returns the names of the inflated tensors."""
    own = net.state_dict()
    inflated = []
    for key, value in ct_state.items():
        if own[key].shape != value.shape:
            widened = torch.zeros_like(own[key])
            widened[:, : value.shape[1]] = value
            ct_state = {**ct_state, key: widened}
            inflated.append(key)
    net.load_state_dict(ct_state)
    return inflated


def early_fusion_task(setup: AdaptationSetup) -> TrainingTask:
    net = build_backbone(setup.cfg.model, in_channels=2)
    inflated = inflate_first_conv(net, setup.base.net.state_dict())
    task = backbone_task(setup.cfg, net=net, name="early fusion from the CT model",
                         extra_meta={"base_run": str(setup.base_run.resolve()),
                                     "base_sha256": setup.base.meta["sha256"]})
    task.describe.append(f"initialised from {setup.base_run}; PET channel added (zeros) to {inflated}")
    return task


def save_full_run(model: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
    """All weights of a fully fine-tuned PEMMA model, with what is needed to rebuild it."""
    model = unwrap_model(model)
    save_weights(model, run_dir, {**meta, "kind": "pemma_full", "method": "full fine-tuning",
                                  "adapter_config": model.config.to_dict(), "modalities": ALL_INPUTS,
                                  "input_sets": [["ct", "pet"], ["ct"], ["pet"]]})


def full_finetune_task(setup: AdaptationSetup, adapter_cfg: AdapterConfig) -> TrainingTask:
    model = build_pemma(setup.base, adapter_cfg)
    model.requires_grad_(True)
    trainable, total = count_parameters(model)
    seed = setup.cfg.train.seed

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        modalities = model.config.sample_modalities(random.Random(seed * 1_000_003 + step))
        return module(select_channels(image, modalities), modalities)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_full_run(module, run_dir, {"backbone": setup.cfg.model.backbone,
                                        "base_run": str(setup.base_run.resolve()),
                                        "base_sha256": setup.base.meta["sha256"], **meta})

    return TrainingTask(model=model, modalities=ALL_INPUTS, forward=forward,
                        predictor=lambda module: (lambda x: module(x, ("ct", "pet"))), save=save,
                        find_unused_parameters=True,
                        describe=[f"full fine-tuning of the CT model with the PET pathway: trainable {trainable:,}"
                                  f" of {total:,}; modality dropout {model.config.modality_dropout}"])


def late_fusion_task(setup: AdaptationSetup) -> TrainingTask:
    torch.manual_seed(setup.cfg.train.seed)
    pet_net = build_backbone(setup.cfg.model, in_channels=1)
    trainable, _ = count_parameters(pet_net)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_weights(module, run_dir, {
            "kind": "late_fusion", "backbone": setup.cfg.model.backbone, "method": "late fusion",
            "base_run": str(setup.base_run.resolve()), "base_sha256": setup.base.meta["sha256"],
            "weight": 0.5, "modalities": ALL_INPUTS, "input_sets": LATE_FUSION_INPUTS, **meta})

    return TrainingTask(model=pet_net, modalities=ALL_INPUTS, forward=lambda module, image, step: module(image[:, 1:]),
                        predictor=lambda module: (lambda x: module(x[:, 1:])), save=save,
                        find_unused_parameters=setup.cfg.model.backbone == "unetr",
                        describe=[f"late fusion: PET model ({trainable:,} parameters) trained alone; CT model "
                                  f"{setup.base_run} frozen; logit weight chosen on validation"])


@torch.no_grad()
def choose_late_fusion_weight(model: LateFusion, cfg: RunConfig, setup: AdaptationSetup,
                              device: torch.device) -> tuple[float, dict[float, float]]:
    """The CT weight in :data:`LATE_FUSION_WEIGHTS` with the best validation mean DSCagg."""
    pre = preprocessing(ALL_INPUTS, cfg.preprocess, cfg.model.roi_size, with_label=True)
    cases = setup.val_cases or setup.train_cases
    dataset = cached_dataset(case_dicts(cases, ALL_INPUTS, True), pre, cfg.data.cache_dir, progress=False)
    scores = {w: AggregatedDice() for w in LATE_FUSION_WEIGHTS}
    model.eval().to(device)
    for i in range(len(dataset)):
        item = dataset[i]
        both = sliding_window_inference(item["image"].as_tensor()[None].to(device), cfg.model.roi_size,
                                        cfg.train.sw_batch_size, lambda x: torch.cat(model.member_logits(x), 1),
                                        overlap=cfg.train.overlap, mode="gaussian")[0].cpu()
        label = item["label"][0].numpy().astype("uint8")
        for w, agg in scores.items():
            agg.update((w * both[:3] + (1 - w) * both[3:]).argmax(0).numpy(), label)
    means = {w: float(np.nan_to_num(agg.compute()["mean"], nan=-1.0)) for w, agg in scores.items()}
    return max(means, key=means.get), means


def train_baseline(method: str, base_run: str | Path, cfg: RunConfig, out_dir: str | Path,
                   adapter_cfg: AdapterConfig | None = None, resume: bool = False,
                   progress: bool = True, split: CaseSplit | None = None) -> dict[str, Any]:
    """Train one of :data:`BASELINES` from the CT base run on ``cfg.data`` (CT+PET cases) into ``out_dir``."""
    setup = prepare_adaptation(base_run, cfg, out_dir, split)
    if method == "early-fusion":
        task = early_fusion_task(setup)
    elif method == "full":
        task = full_finetune_task(setup, adapter_cfg or AdapterConfig())
    elif method == "late-fusion":
        task = late_fusion_task(setup)
    else:
        raise ValueError(f"method must be one of {BASELINES}, got {method!r}")
    summary = train_task(task, setup.cfg, setup.train_cases, setup.val_cases, out_dir, resume=resume,
                         progress=progress, meta=setup.meta)
    if method == "late-fusion" and int(os.environ.get("RANK", "0")) == 0:
        out_dir = Path(out_dir)
        pet_net = build_backbone(setup.cfg.model, in_channels=1)
        pet_net.load_state_dict(load_weights(out_dir))
        device = torch.device("cuda" if torch.cuda.is_available() and setup.cfg.train.device != "cpu" else "cpu")
        weight, means = choose_late_fusion_weight(LateFusion(setup.base.net, pet_net), setup.cfg, setup, device)
        meta = read_meta(out_dir)
        meta.update({"weight": weight, "weight_search": {str(w): m for w, m in means.items()}})
        write_text_atomic(out_dir / MODEL_META, json.dumps(meta, indent=2))
        summary["weight"] = weight
    return summary
