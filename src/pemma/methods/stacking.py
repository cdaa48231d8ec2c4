"""``pemma adapt --base <an adapted run> --add-modality X``: stack a modality on an adapted run (issue 14).

The adapted run's model (CT+PET, or CT+PET+MR...) is the frozen base; the new modality gets a level of its own
(:mod:`pemma.models.stacking`: a second named peft adapter copied from the level below, its own embedding / skip
modules, a route). The run folder holds that level only: ``adapter_model.safetensors`` (the level's tensors) and
``model.json`` (kind ``pemma_stacked``, the base run and the SHA-256 of its adapter weights, the level, which
adapter serves which input set). Loading rebuilds the base run (recursively, so any number of levels stack) and
adds the level. Such a run is not updated (``pemma update``); stack again instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.artifacts import WEIGHTS_NAME
from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.data.layout import CaseSplit
from pemma.errors import PemmaError
from pemma.io_utils import copy_tensors_into, load_tensors, save_tensors, sha256_file
from pemma.methods.adaptation import AdaptationSetup, record_resume_settings, select_channels
from pemma.methods.loading import load_model
from pemma.methods.pemma import dropout_seed
from pemma.methods.registry import RunKind, register_kind
from pemma.models.accounting import parameter_report
from pemma.models.loaded import base_constructor_kwargs
from pemma.models.stacking import StackLevel, input_subsets, stacked_dropout
from pemma.runs import MODEL_META, read_meta, stamp, write_meta
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import select_split
from pemma.vocab import KIND_PEMMA, KIND_PEMMA_STACKED, PEMMA_METHODS, canonical_method, input_set_name

#: the run kinds a modality can be stacked on
STACKABLE_KINDS: tuple[str, ...] = (KIND_PEMMA, KIND_PEMMA_STACKED)


def is_adapted_run(run_dir: str | Path) -> bool:
    """True for a run folder a modality can be stacked on (``pemma adapt`` with a PEMMA method, or stacked)."""
    return read_meta(Path(run_dir)).get("kind") in STACKABLE_KINDS


def prepare_stacking(base_run: str | Path, cfg: RunConfig, out_dir: str | Path, added_modality: str,
                     split: CaseSplit | None = None) -> AdaptationSetup:
    """Load the adapted run ``base_run``, check ``added_modality`` against it and select the cases with every
    modality. Model and preprocessing are the base's (its input sets must see what they saw); declared modality
    specs are the caller's; ``cfg.data`` / ``cfg.train`` the caller's."""
    base_run = Path(base_run)
    if Path(out_dir).resolve() == base_run.resolve():
        raise PemmaError(f"{out_dir}: the adapted run must not overwrite its base run")
    base = load_model(base_run)
    model = unwrap_model(base.net)
    if added_modality in model.modalities:
        raise PemmaError(f"--add-modality {added_modality}: {base_run} already has {added_modality} "
                         f"(modalities {', '.join(model.modalities)})")
    own = {"modality_specs": cfg.preprocess.modality_specs} if cfg.preprocess.modality_specs else {}
    preprocess = dataclasses.replace(base.config.preprocess, **own)
    inputs = [*model.modalities, added_modality]
    order = list(preprocess.modality_registry())
    if added_modality not in order:
        raise PemmaError(f"--add-modality {added_modality}: unknown modality (known: {', '.join(order)})")
    if sorted(inputs, key=order.index) != inputs:
        raise PemmaError(f"--add-modality {added_modality}: its channel comes before one of {base_run}'s "
                         f"({', '.join(model.modalities)}) in the modality order {', '.join(order)}; stack modalities "
                         "in that order")
    cfg = dataclasses.replace(cfg, model=base.config.model, preprocess=preprocess,
                              data=dataclasses.replace(cfg.data, modalities=inputs))
    train_cases, val_cases = split or select_split(cfg, inputs)
    return AdaptationSetup(base, base_run, cfg, train_cases, val_cases, added_modality)


def stack_task(setup: AdaptationSetup, adapter_type: str, adapter_cfg: AdapterConfig | None) -> TrainingTask:
    """The base model with ``setup.added_modality`` stacked, and how it trains: modality dropout over the input
    sets the new level serves (those with the new modality; every subset on the shared route)."""
    model = unwrap_model(setup.base.net)
    if adapter_type != model.config.method:
        raise PemmaError(f"{setup.base_run} was adapted with {model.config.method}; a stacked modality uses the same "
                         f"adapter type (--method pemma_{model.config.method}), not {adapter_type}")
    adapter_cfg = adapter_cfg or AdapterConfig()
    torch.manual_seed(setup.cfg.train.seed)
    level = model.add_modality(setup.added_modality, route=adapter_cfg.ct_route)
    depth = len(model.stack)
    inputs = list(model.modalities)
    trainable = [s for s in input_subsets(inputs) if model.level_of(s) == depth]
    choices = stacked_dropout(inputs, adapter_cfg.modality_dropout[0], trainable)
    seed, base_run = setup.cfg.train.seed, setup.base_run.resolve()

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        modalities = dropout_seed(seed, step).choices([m for m, _ in choices], weights=[p for _, p in choices])[0]
        return module(select_channels(image, modalities, inputs), modalities)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_stacked_run(module, run_dir, base_run, setup.base.config, meta)

    report = parameter_report(model, base_constructor_kwargs(setup.base.config))
    serves = model.serving()
    return TrainingTask(
        model=model, modalities=inputs, forward=forward,
        predictor=lambda module, chosen: (lambda x: module(x, chosen)), save=save, find_unused_parameters=True,
        describe=[f"base: {setup.base_run} ({'+'.join(inputs[:-1])}, kept frozen); stacking {level.modality}: "
                  f"adapter {level.adapter!r} (a copy of {model.level_adapter(depth - 1)!r}: {model.config.method}, "
                  f"rank {model.config.rank}, alpha {model.config.alpha}, as the base), route {level.route}",
                  f"trainable parameters: {report['trainable']:,} of {report['total']:,}",
                  "adapters per input set: " + ", ".join(f"{s} {a}" for s, a in serves.items()),
                  "modality dropout per step: " + ", ".join(f"{input_set_name(m)} {p:.2f}" for m, p in choices)])


def save_stacked_run(model: nn.Module, run_dir: Path, base_run: Path, base_cfg: RunConfig,
                     meta: dict[str, Any]) -> None:
    """Write the newest level's tensors (``adapter_model.safetensors``) and ``model.json``."""
    model = unwrap_model(model)
    level = model.stack[-1]
    weights = run_dir / WEIGHTS_NAME
    digest = save_tensors(model.level_state_dict(len(model.stack)), weights,
                          metadata={"format": "pt", "pemma": "pemma-stacked-level"})
    info = {"backbone": base_cfg.model.backbone, "method": model.config.method, "base_run": str(base_run),
            "base_sha256": sha256_file(base_run / WEIGHTS_NAME), "level": level.to_dict(),
            "weights_sha256": digest, "modalities": list(model.modalities),
            "input_sets": [list(s) for s in input_subsets(model.modalities)], "adapters": model.serving(),
            "ct_route": level.route, "recipe": model.config.recipe, "adapter_bytes": weights.stat().st_size,
            "parameters": parameter_report(model, base_constructor_kwargs(base_cfg)), **meta}
    write_meta(run_dir, stamp(info, KIND_PEMMA_STACKED))


def adapt_stacked(base_run: str | Path, cfg: RunConfig, out_dir: str | Path, method: str,
                  adapter_cfg: AdapterConfig | None, added_modality: str, resume: bool = False,
                  progress: bool = True, split: CaseSplit | None = None) -> dict[str, Any]:
    """:func:`pemma.methods.adapt` on an adapted run: stack ``added_modality`` (PEMMA methods only)."""
    name = canonical_method(method)
    if name not in PEMMA_METHODS:
        raise PemmaError(f"--method {name}: {base_run} is an adapted run; stacking a modality on it needs a PEMMA "
                         f"method ({', '.join(PEMMA_METHODS)}); the baselines start from a CT-only run")
    recorded = read_meta(Path(base_run)).get("method")
    if recorded and recorded != PEMMA_METHODS[name]:  # before the data are read
        raise PemmaError(f"{base_run} was adapted with {recorded}; a stacked modality uses the same adapter type "
                         f"(--method pemma_{recorded}), not {PEMMA_METHODS[name]}")
    setup = prepare_stacking(base_run, cfg, out_dir, added_modality, split)
    task = stack_task(setup, PEMMA_METHODS[name], adapter_cfg)
    record_resume_settings(task, name, setup.base_run, setup.base.meta)
    return train_task(task, setup.cfg, setup.train_cases, setup.val_cases, out_dir, resume=resume,
                      progress=progress, meta=setup.meta)


# ---------------------------------------------------------------------------------------------- run kind
def _load(run_dir: Path, meta: dict[str, Any], config: RunConfig, base_run: Path | None) -> nn.Module:
    base_dir = Path(base_run or meta["base_run"])
    weights = base_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise PemmaError(f"{weights}: not found (base of {run_dir}; pass --base if it moved)")
    if sha256_file(weights) != meta["base_sha256"]:
        raise PemmaError(f"{run_dir}: was stacked on other adapter weights than {base_dir} now holds")
    model = unwrap_model(load_model(base_dir).net)
    level = StackLevel(**meta["level"])
    model.add_modality(level.modality, level.route, level.adapter)
    if list(model.modalities) != list(meta["modalities"]):
        raise ValueError(f"modalities {meta['modalities']} do not match the base's and the level's")
    path = run_dir / WEIGHTS_NAME
    state = load_tensors(path, sha256=meta["weights_sha256"], what="stacked adapter weights", manifest=MODEL_META)
    copy_tensors_into(model.level_state_dict(len(model.stack)), state, str(path))
    return model


def _report(loaded: Any) -> dict[str, Any]:
    model = unwrap_model(loaded.net)
    report = parameter_report(model, base_constructor_kwargs(loaded.config))
    out: dict[str, Any] = {"method": loaded.meta.get("method"), "base_run": loaded.meta.get("base_run"),
                           "stacked": " -> ".join(["+".join(model.level_modalities(0))]
                                                  + [level.modality for level in model.stack]),
                           "trainable": int(report["trainable"]), "total": int(report["total"]),
                           "early_fusion": int(report["early_fusion"]),
                           "percent_of_early_fusion": float(report["percent_of_early_fusion"]),
                           "adapter_bytes": int(loaded.meta.get("adapter_bytes", 0)),
                           "ct_route": loaded.meta.get("ct_route")}  # the key adapted runs report it under
    for inputs, adapter in loaded.meta.get("adapters", {}).items():
        out[f"adapter for {inputs}"] = adapter
    return out


register_kind(RunKind(name=KIND_PEMMA_STACKED, load=_load,
                      input_sets=lambda meta: [list(s) for s in meta["input_sets"]], report=_report))
