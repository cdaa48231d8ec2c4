"""``pemma update``: continue training an adapted model on new centres with one or both modalities, no
replay. The CT base run is never modified, so the original CT model stays recoverable.

What trains, per kind of run:

* PEMMA (LoRA / DoRA): PET or CT+PET updates train the main adapter, the PET modules and the configured
  heads; CT-only input never touches those, so CT predictions on earlier centres stay exactly as they
  were. A CT-only update adds an adapter of its own on the CT route (``ct_update``), so it does not
  disturb the CT+PET / PET adapter; ``pemma params`` shows which adapter serves which input set.
* full fine-tuning: every parameter trains.
* early fusion (a two-channel backbone): every parameter trains; the missing modality is zero-filled.
* late fusion: the member of the given modality trains (CT+PET updates train both).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.base import unwrap_model
from pemma.adapters.config import NEW_PARTS
from pemma.config import RunConfig
from pemma.data.layout import CaseSplit
from pemma.errors import PemmaError
from pemma.io_utils import save_tensors
from pemma.models.loading import LoadedModel, load_model, run_network
from pemma.models.registry import count_parameters
from pemma.training.adaptation import save_pemma_run
from pemma.training.baselines import save_full_run
from pemma.training.checkpoint import save_weights
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import select_split

CT_MEMBER_FILE = "ct_member.safetensors"


def _train_only(model: nn.Module, names: list[str], modules: list[nn.Module] = ()) -> None:
    model.requires_grad_(False)
    for key, param in model.named_parameters():
        if any(f".{n}." in key for n in names):
            param.requires_grad_(True)
    for module in modules:
        module.requires_grad_(True)


def _pemma_update(loaded: LoadedModel, modalities: tuple[str, ...], seed: int) -> tuple[nn.Module, Any]:
    model = loaded.net
    if modalities == ("ct",):
        if model.ct_adapter is None:
            model.add_ct_adapter()
        _train_only(model, [model.ct_adapter])
        return model, lambda step: ("ct",)
    parts = [getattr(model, p) for p in model.config.train_parts if p in NEW_PARTS[model.backbone_name]]
    _train_only(model, [model.adapter_name], parts)
    if modalities == ("pet",):
        return model, lambda step: ("pet",)
    return model, lambda step: model.config.sample_modalities(random.Random(seed * 1_000_003 + step), True)


def update_task(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], cfg: RunConfig) -> TrainingTask:
    """What an update of ``loaded`` with ``modalities`` trains, and how it is saved."""
    kind, seed, meta_in = loaded.kind, cfg.train.seed, dict(loaded.meta)
    trained = meta_in.get("modalities", [])
    lineage = {"updated_from": str(model_run.resolve()), "update_modalities": list(modalities)}
    carry = {k: meta_in[k] for k in ("backbone", "base_run", "base_sha256", "weight") if k in meta_in}
    if kind == "pemma":
        model, draw = _pemma_update(loaded, modalities, seed)

        def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
            save_pemma_run(module, run_dir, Path(meta_in["base_run"]), meta_in["base_sha256"], loaded.config,
                           {**lineage, **meta})
    elif kind == "pemma_full":
        model = loaded.net.requires_grad_(True)

        def draw(step: int) -> tuple[str, ...]:
            if len(modalities) == 1:
                return modalities
            return model.config.sample_modalities(random.Random(seed * 1_000_003 + step))

        def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
            save_full_run(module, run_dir, {**carry, **lineage, **meta})
    elif kind == "backbone":
        model = loaded.net.requires_grad_(True)

        def draw(step: int) -> tuple[str, ...]:
            return modalities

        def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
            save_weights(unwrap_model(module), run_dir, {**meta_in, **lineage, **meta})
    elif kind == "late_fusion":
        model = loaded.net
        members = {"ct": model.ct_net, "pet": model.pet_net}
        _train_only(model, [], [members[m] for m in modalities])

        def draw(step: int) -> tuple[str, ...]:
            return modalities

        def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
            fused = unwrap_model(module)
            member = {}
            if "ct" in modalities or meta_in.get("ct_member_sha256"):
                member["ct_member_sha256"] = save_tensors(fused.ct_net.state_dict(), run_dir / CT_MEMBER_FILE)
            save_weights(fused.pet_net, run_dir, {**meta_in, **lineage, **member, **meta})
    else:
        raise PemmaError(f"{model_run}: runs of kind {kind!r} cannot be updated")

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        chosen = draw(step)
        channels = [modalities.index(m) for m in chosen]
        return run_network(module, kind, trained, image[:, channels], chosen)

    trainable, total = count_parameters(model)
    return TrainingTask(
        model=model, modalities=list(modalities), forward=forward,
        predictor=lambda module: (lambda x: run_network(module, kind, trained, x, modalities)),
        save=save, find_unused_parameters=True,
        describe=[f"update of {model_run} ({kind}, {loaded.meta.get('method')}) with {'+'.join(modalities)}, "
                  f"no replay; trainable parameters: {trainable:,} of {total:,}"])


def update(model_run: str | Path, cfg: RunConfig, modalities: list[str], out_dir: str | Path,
           resume: bool = False, progress: bool = True, split: CaseSplit | None = None) -> dict[str, Any]:
    """Continue training the run ``model_run`` on ``cfg.data`` with ``modalities`` into ``out_dir``.

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom", "centres": ["HGJ"]}})
        >>> update("runs/pemma_unetr", cfg, ["pet"], "runs/pemma_unetr_hgj")
    """
    model_run = Path(model_run)
    if Path(out_dir).resolve() == model_run.resolve():
        raise PemmaError(f"{out_dir}: write the update to a new run folder, not over {model_run}")
    loaded = load_model(model_run)
    mods = tuple(modalities)
    loaded.check_inputs(list(mods), str(model_run))
    cfg = dataclasses.replace(cfg, model=loaded.config.model, preprocess=loaded.config.preprocess,
                              data=dataclasses.replace(cfg.data, modalities=list(mods)))
    train_cases, val_cases = split or select_split(cfg, list(mods))
    task = update_task(loaded, model_run, mods, cfg)
    return train_task(task, cfg, train_cases, val_cases, out_dir, resume=resume, progress=progress,
                      meta={"train_cases": [c.case_id for c in train_cases],
                            "val_cases": [c.case_id for c in val_cases]})
