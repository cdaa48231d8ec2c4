"""PEMMA (LoRA / DoRA): adapters on the frozen CT model plus a thin PET pathway (arXiv 2504.13645).

Only the adapters, the PET modules and the configured heads train; the run folder stores the trained tensors
(peft's two files: ``adapter_model.safetensors`` + ``adapter_config.json``), the SHA-256 of the base weights and
``model.json`` (which adapter serves which input set, parameter accounting). Updates:

* exact CT route (default): PET or CT+PET updates train the main adapter, the PET modules and the configured
  heads; CT-only input never touches those, so CT predictions on earlier centres stay exactly as they were.
  A CT-only update adds an adapter of its own on the CT route (``ct_update``), so it does not disturb the
  CT+PET / PET adapter;
* shared CT route (the paper's): every input set runs the main adapter, CT-only draws of modality dropout
  train, and every update (CT, PET or CT+PET) keeps training that adapter, so forgetting is measured;
* ``pemma params`` shows which route / adapter serves which input set.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.artifacts import format_load_report, load_adapter, read_adapter_config, save_adapter
from pemma.adapters.config import NEW_PARTS, AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.methods.adaptation import AdaptationSetup, select_channels
from pemma.methods.loading import load_base
from pemma.methods.registry import Method, RunKind, register_kind, register_method
from pemma.methods.update import update_task
from pemma.models.accounting import parameter_report
from pemma.models.budget import authors_count
from pemma.models.loaded import LoadedModel, base_constructor_kwargs, build_pemma
from pemma.runs import MODEL_FILE, stamp, write_meta
from pemma.training.loop import TrainingTask
from pemma.training.resume_settings import RESUME_REFUSALS
from pemma.vocab import (
    ALL_INPUT_SETS,
    KIND_PEMMA,
    PEMMA_METHODS,
    input_set_name,
)


def _earlier_pet_alone_checkpoint(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why a ``--resume`` of an ``authors``-recipe UNETR checkpoint written before ``pet_alone_skip`` existed is
    refused: it trained with PET alone reading ``encoder1`` too, the recipe now has it read the PET copy only, and
    the checkpoint records no value a flag can repeat (None, which builds what ``added`` builds:
    :data:`~pemma.adapters.config.SAME_CONSTRUCTION`), so "rerun with the same flags" could not be followed."""
    if (recorded.get("recipe") == "authors" and "pet_alone_skip" in recorded  # a prognosis checkpoint may lack it
            and recorded["pet_alone_skip"] is None and current.get("pet_alone_skip") == "replaces"):
        return ("checkpoint of an authors'-recipe run of an earlier pemma (PET alone read encoder1 besides its PET "
                "copy); the recipe now has PET alone read the copy only: continue it as it was built with "
                "--pet-alone-skip added, or start the run over (--force, or delete the folder)")
    return None


RESUME_REFUSALS.append(_earlier_pet_alone_checkpoint)


def dropout_seed(seed: int, step: int) -> random.Random:
    """The generator of step ``step``'s modality draw: a pure function of (seed, step), so every DDP rank and
    a resumed run draw the same input set."""
    return random.Random(seed * 1_000_003 + step)


def serving_adapters(model: nn.Module) -> dict[str, str]:
    """``{input set: adapter}`` of a PEMMA model, as recorded in ``model.json`` (``"none (exact CT base)"`` when
    CT alone runs the untouched base)."""
    ct, added = model.modalities
    return {input_set_name(s): model.adapter_for(s) or "none (exact CT base)"
            for s in ((ct, added), (added,), (ct,))}


def input_sets(model: nn.Module) -> list[list[str]]:
    """The input sets a PEMMA model accepts, in run-metadata order (:data:`pemma.vocab.ALL_INPUT_SETS` with the
    added modality in the place of PET)."""
    added = unwrap_model(model).added_modality
    return [[added if m == "pet" else m for m in s] for s in ALL_INPUT_SETS]


def save_pemma_run(model: nn.Module, run_dir: Path, base_run: Path, base_sha256: str, base_cfg: RunConfig,
                   meta: dict[str, Any]) -> None:
    """Write an adapted run's artifacts: adapter tensors + config (safetensors / JSON) and ``model.json``
    (kind, base run and SHA-256, which adapter serves which input set, parameter accounting)."""
    model = unwrap_model(model)
    backbone = base_cfg.model.backbone
    saved = save_adapter(model, run_dir, base_sha256, extra_config={"run": str(base_run), "backbone": backbone})
    serves = serving_adapters(model)
    info = {"backbone": backbone, "method": model.config.method, "base_run": str(base_run),
            "base_sha256": base_sha256, "modalities": list(model.modalities), "input_sets": input_sets(model),
            "adapters": serves, "ct_route": model.config.ct_route, "recipe": model.config.recipe,
            "adapter_bytes": saved["adapter_bytes"],
            "parameters": parameter_report(model, base_constructor_kwargs(base_cfg)), **meta}
    write_meta(run_dir, stamp(info, KIND_PEMMA))


def pemma_task(base: LoadedModel, base_run: Path, adapter_cfg: AdapterConfig, cfg: RunConfig,
               added_modality: str = "pet") -> TrainingTask:
    """The PEMMA model built on ``base`` and how it trains (seeded modality dropout per step over every subset of
    CT and ``added_modality``)."""
    backbone = base.config.model.backbone
    try:  # a new adaptation (a run adapted otherwise before this check still loads)
        adapter_cfg.check_added_modality_reaches(backbone)
    except ValueError as exc:
        raise PemmaError(f"invalid adapter settings for {backbone}: {exc}") from None
    torch.manual_seed(cfg.train.seed)
    model = build_pemma(base, adapter_cfg, added_modality)
    report = parameter_report(model, base_constructor_kwargs(base.config))
    skip_ct = not model.shared_route  # exact route: CT-only batches run the frozen base
    choices = model.config.modality_choices(trainable_only=skip_ct, added=added_modality)
    seed = cfg.train.seed
    inputs = list(model.modalities)

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        modalities = model.config.sample_modalities(dropout_seed(seed, step), trainable_only=skip_ct,
                                                    added=added_modality)
        return module(select_channels(image, modalities, inputs), modalities)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_pemma_run(module, run_dir, base_run, base.meta["sha256"], base.config, meta)

    return TrainingTask(
        model=model, modalities=inputs, forward=forward,
        predictor=lambda module, chosen: (lambda x: module(x, chosen)), save=save,
        find_unused_parameters=True,  # PET-only steps leave parts of the model unused
        validation_sets=model.config.validation_sets(skip_ct, added_modality),
        describe=[f"PEMMA {model.config.method.upper()} on {base.config.model.backbone}: rank "
                  f"{model.config.rank}, alpha {model.config.alpha}, targets {list(model.config.target_modules)}, "
                  f"training {list(model.config.train_parts)}, CT route {model.config.ct_route}",
                  f"trainable parameters: {report['trainable']:,} of {report['total']:,} "
                  f"({report['percent_of_early_fusion']:.2f}% of the early-fusion model's "
                  f"{report['early_fusion']:,})",
                  "modality dropout per step: " + ", ".join(f"{'+'.join(m)} {p:.2f}" for m, p in choices)
                  + (" (exact CT route: CT-only batches run the frozen CT base and train nothing, so they are "
                     "skipped)" if skip_ct else " (shared CT route: CT-only batches train the adapters too)")])


def _build(adapter_type: str):
    def build(setup: AdaptationSetup, adapter_cfg: AdapterConfig | None) -> TrainingTask:
        cfg = dataclasses.replace(adapter_cfg or AdapterConfig(), method=adapter_type)
        task = pemma_task(setup.base, setup.base_run.resolve(), cfg, setup.cfg, setup.added_modality)
        task.describe.insert(0, f"base: {setup.base_run} (sha256 {setup.base.meta['sha256'][:12]}); "
                                + format_load_report(task.model.load_report))
        return task
    return build


# ---------------------------------------------------------------------------------------------- run kind
def _load(run_dir: Path, meta: dict[str, Any], config: RunConfig, base_run: Path | None) -> nn.Module:
    base_dir = Path(base_run or meta["base_run"])
    base = load_base(run_dir, meta, base_run)  # a base retrained since is named with its path, before the adapter
    stored = read_adapter_config(run_dir)
    added = (meta.get("modalities") or ["ct", "pet"])[-1]  # runs before other modalities: ct, pet
    model = build_pemma(base, AdapterConfig.from_dict(stored["adapter_config"]), added)
    if stored.get("ct_adapter"):
        model.add_ct_adapter(stored["ct_adapter"])
    load_adapter(model, run_dir, sha256_file(base_dir / MODEL_FILE))
    return model


def train_only(model: nn.Module, names: list[str], modules: list[nn.Module] = ()) -> None:
    """Freeze ``model`` except the parameters under the named submodules / adapters and ``modules``."""
    model.requires_grad_(False)
    for key, param in model.named_parameters():
        if any(f".{n}." in key for n in names):
            param.requires_grad_(True)
    for module in modules:
        module.requires_grad_(True)


def _update(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], cfg: RunConfig) -> TrainingTask:
    model, seed = loaded.net, cfg.train.seed
    skip_ct = not model.shared_route
    if modalities == ("ct",) and skip_ct:
        if model.ct_adapter is None:
            model.add_ct_adapter()
        train_only(model, [model.ct_adapter])

        def draw(step: int) -> tuple[str, ...]:
            return ("ct",)
    else:
        parts = [getattr(model, p) for p in model.config.train_parts if p in NEW_PARTS[model.backbone_name]]
        train_only(model, [model.adapter_name], parts)

        def draw(step: int) -> tuple[str, ...]:
            if len(modalities) == 1:  # pet; or ct on the shared route (the same adapter keeps training)
                return modalities
            return model.config.sample_modalities(dropout_seed(seed, step), skip_ct, model.added_modality)
    # what the update draws is what it validates on ("each"); a single-modality update has that one set
    sets = model.config.validation_sets(skip_ct, model.added_modality) if len(modalities) > 1 else ()
    if sets:
        sets = tuple(s for s in sets if set(s) <= set(modalities))

    meta_in = dict(loaded.meta)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_pemma_run(module, run_dir, Path(meta_in["base_run"]), meta_in["base_sha256"], loaded.config, meta)

    return update_task(loaded, model_run, modalities, model, draw, save, sets)


def _report(loaded: LoadedModel) -> dict[str, Any]:
    kwargs = base_constructor_kwargs(loaded.config)
    report = parameter_report(loaded.net, kwargs)
    model = unwrap_model(loaded.net)
    authors = authors_count(loaded.config.model.backbone, kwargs, model.config, model=model,
                            early_fusion=int(report["early_fusion"]))
    out: dict[str, Any] = {"method": loaded.meta.get("method"), "trainable": int(report["trainable"]),
                           "total": int(report["total"]), "early_fusion": int(report["early_fusion"]),
                           "percent_of_early_fusion": float(report["percent_of_early_fusion"]),
                           "authors_trainable": authors["authors_trainable"],
                           "authors_reference": authors["authors_reference"],
                           "authors_percent": float(authors["authors_percent"]),
                           "authors_counted": authors["authors_counted"],
                           "adapter_bytes": int(loaded.meta.get("adapter_bytes", 0))}
    out["ct_route"] = model.config.ct_route
    out["recipe"] = model.config.recipe
    for inputs, adapter in loaded.meta.get("adapters", {}).items():
        out[f"adapter for {inputs}"] = adapter
    return out


register_kind(RunKind(name=KIND_PEMMA, load=_load, input_sets=lambda meta: [list(s) for s in meta["input_sets"]],
                      update=_update, report=_report))
for _name, _adapter in PEMMA_METHODS.items():
    register_method(Method(name=_name, kind=KIND_PEMMA, build=_build(_adapter),
                           description=f"PEMMA: {_adapter.upper()} adapters + PET pathway on the frozen CT model"))
