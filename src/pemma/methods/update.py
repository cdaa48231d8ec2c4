"""``pemma update``: continue training a run on new centres with one or both modalities, no replay.

The CT base run is never modified, so the original CT model stays recoverable. What trains is decided by the
run's kind (:mod:`pemma.methods.registry`): PEMMA trains its adapters (on the exact CT route a CT-only update gets
an adapter of its own; on the shared route every update trains the same adapter), full fine-tuning and early
fusion train every parameter (early fusion zero-fills the missing modality), late fusion trains the member of the
given modality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.data.layout import CaseSplit
from pemma.errors import PemmaError
from pemma.methods.adaptation import record_resume_settings
from pemma.methods.loading import load_model
from pemma.methods.registry import get_kind
from pemma.models.accounting import count_parameters
from pemma.models.loaded import LoadedModel, run_network
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import select_split
from pemma.vocab import CT_ROUTES, KIND_PEMMA_FULL, RECIPES

#: ``(module, run_dir, meta)``: writes the updated run's artifacts
SaveFn = Callable[[nn.Module, Path, dict[str, Any]], None]


def update_task(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], model: nn.Module,
                draw: Callable[[int], tuple[str, ...]], save: SaveFn,
                validation_sets: tuple[tuple[str, ...], ...] = ()) -> TrainingTask:
    """The training task of an update, once a run kind has chosen what trains.

    Args:
        loaded: the run being updated. model_run: its folder. modalities: the channels the update reads.
        model: ``loaded.net`` with ``requires_grad`` set on what trains.
        draw: ``step -> input set`` used at that step (a subset of ``modalities``).
        save: writes the run; it receives the lineage (``updated_from``, ``update_modalities``) in its ``meta``.
        validation_sets: the input sets validated, each alone (:attr:`TrainingTask.validation_sets`). Default:
            ``modalities`` together.
    """
    trained = loaded.meta.get("modalities", [])
    lineage = {"updated_from": str(model_run.resolve()), "update_modalities": list(modalities)}

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        chosen = draw(step)
        channels = [modalities.index(m) for m in chosen]
        return run_network(module, trained, image[:, channels], chosen)

    def save_with_lineage(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save(module, run_dir, {**lineage, **meta})

    trainable, total = count_parameters(model)
    return TrainingTask(
        model=model, modalities=list(modalities), forward=forward,
        predictor=lambda module, chosen: (lambda x: run_network(module, trained, x, chosen)),
        save=save_with_lineage, find_unused_parameters=True, validation_sets=validation_sets,
        describe=[f"update of {model_run} ({loaded.kind}, {loaded.meta.get('method')}) with {'+'.join(modalities)}, "
                  f"no replay; trainable parameters: {trainable:,} of {total:,}"])


def check_adaptation_settings(loaded: LoadedModel, model_run: Path, ct_route: str | None,
                              recipe: str | None) -> None:
    """Raise PemmaError when the CT route or recipe a caller expects differs from the run's (an update keeps the
    run's; old runs without the keys are ``exact`` / ``pemma``). Runs without adapters (early / late fusion)
    have neither and accept any expectation."""
    if ct_route is not None and ct_route not in CT_ROUTES:
        raise PemmaError(f"--ct-route must be one of {', '.join(CT_ROUTES)}, got {ct_route!r}")
    if recipe is not None and recipe not in RECIPES:
        raise PemmaError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    config = getattr(loaded.net, "config", None)
    has = getattr(config, "ct_route", None)
    if has is None:
        return
    if ct_route is not None and ct_route != has:
        again = "adapt again to change it" if loaded.kind != KIND_PEMMA_FULL or ct_route == "shared" else \
            "full fine-tuning is one network for every input set and is adapted on the shared route only"
        raise PemmaError(f"{model_run}: the run was adapted with --ct-route {has}; an update keeps the route "
                         f"(asked for {ct_route}; {again})")
    stored = getattr(config, "recipe", "pemma")
    if recipe is not None and recipe != stored:
        raise PemmaError(f"{model_run}: the run was adapted with --recipe {stored}; an update keeps the recipe "
                         f"(asked for {recipe})")


def update(model_run: str | Path, cfg: RunConfig, modalities: list[str], out_dir: str | Path,
           resume: bool = False, progress: bool = True, split: CaseSplit | None = None,
           base_run: str | Path | None = None, ct_route: str | None = None,
           recipe: str | None = None) -> dict[str, Any]:
    """Continue training the run ``model_run`` on ``cfg.data`` with ``modalities`` into ``out_dir``.

    ``base_run`` names the CT base of ``model_run`` if it moved (its weights must still match); the updated run
    records it. ``ct_route`` / ``recipe``: what the caller expects the run to have been adapted with (an update
    keeps both; a mismatch is an error). None: whatever the run has.

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom", "centres": ["HGJ"]}})
        >>> update("runs/pemma_unetr", cfg, ["pet"], "runs/pemma_unetr_hgj")
    """
    model_run = Path(model_run)
    if Path(out_dir).resolve() == model_run.resolve():
        raise PemmaError(f"{out_dir}: write the update to a new run folder, not over {model_run}")
    loaded = load_model(model_run, base_run=base_run)
    if base_run is not None and "base_run" in loaded.meta:
        loaded.meta["base_run"] = str(Path(base_run).resolve())
    check_adaptation_settings(loaded, model_run, ct_route, recipe)
    mods = tuple(modalities)
    loaded.check_inputs(list(mods), str(model_run))
    kind = get_kind(loaded.kind, str(model_run))
    if kind.update is None:
        raise PemmaError(f"{model_run}: runs of kind {loaded.kind!r} cannot be updated")
    cfg = dataclasses.replace(cfg, model=loaded.config.model, preprocess=loaded.config.preprocess,
                              data=dataclasses.replace(cfg.data, modalities=list(mods)))
    train_cases, val_cases = split or select_split(cfg, list(mods))
    task = kind.update(loaded, model_run, mods, cfg)
    record_resume_settings(task, f"update of {loaded.kind}", model_run, loaded.meta, label="model")
    return train_task(task, cfg, train_cases, val_cases, out_dir, resume=resume, progress=progress,
                      meta={"train_cases": [c.case_id for c in train_cases],
                            "val_cases": [c.case_id for c in val_cases]})
