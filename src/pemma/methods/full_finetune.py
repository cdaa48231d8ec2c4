"""Full fine-tuning (a baseline of the PEMMA paper): the PEMMA model (PET, or another added modality's, pathway +
adapters) with every parameter trainable, the CT base included. The run stores all weights (kind ``pemma_full``).

It is one fine-tuned network for every input set: it is built on the shared CT route, so CT alone runs the same
(trained) modules as CT+PET and PET alone. Before 2026-12-06 it was built on the PEMMA default, the exact route, which
for a model whose base trains too meant CT alone ran a separate trained copy of ``encoder1``, ``encoder2``,
``decoder2`` and ``out`` (and no LoRA) that PET-only updates never reach: its CT output was protected from PET-only
updates by construction (measured: CT DSCagg 0.498 -> 0.497 after a PET-only update, 0.457 -> 0.109 as one network;
docs/measurements.md). Runs trained that way load and update as recorded (their ``adapter_config`` says ``exact``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.methods.adaptation import AdaptationSetup, select_channels
from pemma.methods.backbone import report_trained
from pemma.methods.pemma import dropout_seed, input_sets
from pemma.methods.registry import Method, RunKind, register_kind, register_method
from pemma.methods.update import update_task
from pemma.models.accounting import count_parameters
from pemma.models.loaded import LoadedModel, build_pemma
from pemma.models.registry import build_backbone
from pemma.runs import load_weights, save_weights
from pemma.training.loop import TrainingTask
from pemma.training.resume_settings import RESUME_REFUSALS
from pemma.vocab import KIND_PEMMA_FULL


def save_full_run(model: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
    """All weights of a fully fine-tuned PEMMA model, with what is needed to rebuild it."""
    model = unwrap_model(model)
    save_weights(model, run_dir, {**meta, "kind": KIND_PEMMA_FULL, "method": "full fine-tuning",
                                  "adapter_config": model.config.to_dict(), "modalities": list(model.modalities),
                                  "input_sets": input_sets(model)})


#: full fine-tuning's CT route: one network for every input set (the module docstring says why)
FULL_FINETUNE_ROUTE = "shared"


def full_finetune_config(adapter_cfg: AdapterConfig | None) -> AdapterConfig:
    """The adapter configuration full fine-tuning builds its PEMMA pathway with: ``adapter_cfg`` (default
    :class:`AdapterConfig`) on the shared CT route (:data:`FULL_FINETUNE_ROUTE`), whatever the recipe's route."""
    return dataclasses.replace(adapter_cfg or AdapterConfig(), ct_route=FULL_FINETUNE_ROUTE)


def _earlier_route_checkpoint(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why a ``--resume`` of a full fine-tuning checkpoint written on the exact route (before 2026-12-06) is refused:
    ``--ct-route exact`` is refused for full fine-tuning, so "rerun with the same flags" cannot be followed."""
    if (recorded.get("method") == "full_finetune" and recorded.get("ct_route") == "exact"
            and current.get("ct_route") == FULL_FINETUNE_ROUTE):
        return ("checkpoint of a full fine-tuning run of an earlier pemma, built on the exact CT route (CT alone ran "
                "separate copies of the modules PET-only updates train); full fine-tuning is now one network for "
                "every input set and cannot continue it: start the run over (--force, or delete the folder)")
    return None


RESUME_REFUSALS.append(_earlier_route_checkpoint)


def full_finetune_task(setup: AdaptationSetup, adapter_cfg: AdapterConfig | None) -> TrainingTask:
    added = setup.added_modality
    # the new PET parts are initialised from the run's seed, not from whatever drew from torch's RNG before (another
    # run in the same worker process of ``reproduce``), as in :func:`pemma.methods.pemma.pemma_task`
    torch.manual_seed(setup.cfg.train.seed)
    model = build_pemma(setup.base, full_finetune_config(adapter_cfg), added)
    model.requires_grad_(True)
    trainable, total = count_parameters(model)
    seed = setup.cfg.train.seed
    inputs = list(model.modalities)

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        modalities = model.config.sample_modalities(dropout_seed(seed, step), added=added)
        return module(select_channels(image, modalities, inputs), modalities)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_full_run(module, run_dir, {"backbone": setup.cfg.model.backbone, **setup.base_reference, **meta})

    return TrainingTask(model=model, modalities=inputs, forward=forward,
                        predictor=lambda module, chosen: (lambda x: module(x, chosen)), save=save,
                        find_unused_parameters=True, validation_sets=model.config.validation_sets(added=added),
                        describe=[f"full fine-tuning of the CT model with the {added.upper()} pathway: trainable "
                                  f"{trainable:,}"
                                  f" of {total:,}; one network for every input set (shared CT route: CT alone runs "
                                  f"the trained modules too); modality dropout {model.config.modality_dropout}"])


def _load(run_dir: Path, meta: dict[str, Any], config: RunConfig, base_run: Path | None) -> nn.Module:
    shell = LoadedModel(net=build_backbone(config.model, in_channels=1), config=config, meta={},
                        input_sets=[["ct"]], run_dir=run_dir)
    added = (meta.get("modalities") or ["ct", "pet"])[-1]  # runs before other modalities: ct, pet
    model = build_pemma(shell, AdapterConfig.from_dict(meta["adapter_config"]), added)
    model.requires_grad_(True)  # full fine-tuning trained everything
    try:
        model.load_state_dict(load_weights(run_dir))
    except RuntimeError as exc:
        raise PemmaError(f"{run_dir}: weights do not fit the configured model ({str(exc).splitlines()[0]})") from None
    return model


def _update(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], cfg: RunConfig) -> TrainingTask:
    model, seed = loaded.net.requires_grad_(True), cfg.train.seed
    carry = {k: loaded.meta[k] for k in ("backbone", "base_run", "base_sha256") if k in loaded.meta}

    def draw(step: int) -> tuple[str, ...]:
        if len(modalities) == 1:
            return modalities
        return model.config.sample_modalities(dropout_seed(seed, step), added=model.added_modality)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_full_run(module, run_dir, {**carry, **meta})

    sets = model.config.validation_sets(added=model.added_modality) if len(modalities) > 1 else ()
    return update_task(loaded, model_run, modalities, model, draw, save, sets)


register_kind(RunKind(name=KIND_PEMMA_FULL, load=_load, input_sets=lambda meta: [list(s) for s in meta["input_sets"]],
                      update=_update, report=lambda loaded: report_trained(loaded, loaded.net)))
register_method(Method(name="full_finetune", kind=KIND_PEMMA_FULL, build=full_finetune_task,
                       description="full fine-tuning: the PEMMA model with every parameter trained"))
