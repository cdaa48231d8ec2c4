"""Late fusion (a baseline of the PEMMA paper): a PET model trained on its own, its logits summed with the CT
model's by a weight chosen on the validation cases. The run stores the PET member (``model.safetensors``), the
weight, and a reference to the CT base run; an update that trains the CT member stores it beside
(``ct_member.safetensors``), so the base run is never written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.data.dataset import cached_dataset, case_dicts
from pemma.data.transforms import preprocessing
from pemma.errors import PemmaError
from pemma.evaluation.metrics import AggregatedDice
from pemma.inference.sliding import labels_of
from pemma.io_utils import load_tensors, save_tensors, write_text_atomic
from pemma.methods.adaptation import ALL_INPUTS, AdaptationSetup
from pemma.methods.backbone import load_backbone, report_trained
from pemma.methods.loading import load_base
from pemma.methods.pemma import train_only
from pemma.methods.registry import Method, RunKind, register_kind, register_method
from pemma.methods.update import update_task
from pemma.models.accounting import count_parameters
from pemma.models.late_fusion import LateFusion
from pemma.models.loaded import LoadedModel
from pemma.models.registry import build_backbone, get_backbone
from pemma.runs import MODEL_META, load_weights, read_meta, save_weights
from pemma.runtime import resolve_device
from pemma.training.loop import TrainingTask
from pemma.vocab import ALL_INPUT_SETS, KIND_LATE_FUSION

CT_MEMBER_FILE = "ct_member.safetensors"
#: CT weights searched on the validation cases (the PET member gets 1 - weight)
LATE_FUSION_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def late_fusion_task(setup: AdaptationSetup, adapter_cfg: AdapterConfig | None = None) -> TrainingTask:
    """A fresh PET network trained alone; ``adapter_cfg`` is not used."""
    torch.manual_seed(setup.cfg.train.seed)
    pet_net = build_backbone(setup.cfg.model, in_channels=1)
    trainable, _ = count_parameters(pet_net)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_weights(module, run_dir, {
            "kind": KIND_LATE_FUSION, "backbone": setup.cfg.model.backbone, "method": "late fusion",
            **setup.base_reference, "weight": 0.5, "modalities": ALL_INPUTS,
            "input_sets": [list(s) for s in ALL_INPUT_SETS], **meta})

    pet = ALL_INPUTS.index("pet")
    return TrainingTask(model=pet_net, modalities=ALL_INPUTS,
                        forward=lambda module, image, step: module(image[:, pet:pet + 1]),
                        predictor=lambda module, chosen: (lambda x: module(x[:, pet:pet + 1])), save=save,
                        find_unused_parameters=get_backbone(setup.cfg.model.backbone).unused_parameters,
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
    n_classes = cfg.model.out_channels
    for i in range(len(dataset)):
        item = dataset[i]
        both = sliding_window_inference(item["image"].as_tensor()[None].to(device), cfg.model.roi_size,
                                        cfg.train.sw_batch_size, lambda x: torch.cat(model.member_logits(x), 1),
                                        overlap=cfg.train.overlap, mode="gaussian")[0].cpu()
        label = item["label"][0].numpy().astype("uint8")
        for w, agg in scores.items():
            agg.update(labels_of(w * both[:n_classes] + (1 - w) * both[n_classes:]).numpy(), label)
    means = {w: float(np.nan_to_num(agg.compute()["mean"], nan=-1.0)) for w, agg in scores.items()}
    return max(means, key=means.get), means


def _finish(setup: AdaptationSetup, out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Search the CT logit weight on the validation cases and record it in the run."""
    pet_net = build_backbone(setup.cfg.model, in_channels=1)
    pet_net.load_state_dict(load_weights(out_dir))
    device = resolve_device("cpu" if setup.cfg.train.device == "cpu" else "auto")
    weight, means = choose_late_fusion_weight(LateFusion(setup.base.net, pet_net), setup.cfg, setup, device)
    meta = read_meta(out_dir)
    meta.update({"weight": weight, "weight_search": {str(w): m for w, m in means.items()}})
    write_text_atomic(out_dir / MODEL_META, json.dumps(meta, indent=2))
    return {**summary, "weight": weight}


def _load(run_dir: Path, meta: dict[str, Any], config: RunConfig, base_run: Path | None) -> nn.Module:
    base = load_base(run_dir, meta, base_run)
    pet_net = load_backbone(run_dir, {"modalities": ["pet"]}, config)
    if meta.get("ct_member_sha256"):  # an update trained the CT member: its weights live in this run
        ct_member = run_dir / CT_MEMBER_FILE
        state = load_tensors(ct_member, sha256=meta["ct_member_sha256"], what="CT member weights",
                             manifest=MODEL_META)
        try:
            base.net.load_state_dict(state)
        except RuntimeError as exc:
            raise PemmaError(f"{ct_member}: does not fit the CT network ({str(exc).splitlines()[0]})") from None
    return LateFusion(base.net, pet_net, float(meta["weight"]))


def _update(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], cfg: RunConfig) -> TrainingTask:
    model = loaded.net
    members = {"ct": model.ct_net, "pet": model.pet_net}
    train_only(model, [], [members[m] for m in modalities])
    meta_in = dict(loaded.meta)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        fused = unwrap_model(module)
        member = {}
        if "ct" in modalities or meta_in.get("ct_member_sha256"):
            member["ct_member_sha256"] = save_tensors(fused.ct_net.state_dict(), run_dir / CT_MEMBER_FILE)
        save_weights(fused.pet_net, run_dir, {**meta_in, **member, **meta})

    return update_task(loaded, model_run, modalities, model, lambda step: modalities, save)


register_kind(RunKind(name=KIND_LATE_FUSION, load=_load, input_sets=lambda meta: [list(s) for s in meta["input_sets"]],
                      update=_update, report=lambda loaded: report_trained(loaded, loaded.net.pet_net)))
register_method(Method(name="late_fusion", kind=KIND_LATE_FUSION, build=late_fusion_task, finish=_finish,
                       description="late fusion: a PET model alone, logits summed with the CT model's"))
