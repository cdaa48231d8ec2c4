"""``pemma adapt``: upgrade a CT-only run to CT+PET with the PEMMA PET pathway and LoRA / DoRA adapters.

Only the adapters, the PET modules and the configured heads train; the CT base run is read, never
written. The adapted run folder stores the trained tensors (safetensors), the adapter config and the
SHA-256 of the base weights, and points at the base run.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.artifacts import format_load_report, save_adapter
from pemma.adapters.base import unwrap_model
from pemma.adapters.config import AdapterConfig
from pemma.adapters.export import parameter_report
from pemma.config import RunConfig
from pemma.data.layout import CaseRecord, CaseSplit
from pemma.errors import PemmaError
from pemma.io_utils import write_text_atomic
from pemma.models.loading import LoadedModel, base_constructor_kwargs, build_pemma, load_model
from pemma.training.checkpoint import MODEL_META
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import select_split

ALL_INPUTS = ["ct", "pet"]


def select_channels(image: torch.Tensor, modalities: tuple[str, ...]) -> torch.Tensor:
    """The channels of ``modalities`` from an image holding [CT, PET]."""
    return image[:, [ALL_INPUTS.index(m) for m in modalities]]


def save_pemma_run(model: nn.Module, run_dir: Path, base_run: Path, base_sha256: str, base_cfg: RunConfig,
                   meta: dict[str, Any]) -> None:
    """Write an adapted run's artifacts: adapter tensors + config (safetensors / JSON) and ``model.json``
    (kind, base run and SHA-256, which adapter serves which input set, parameter accounting)."""
    model = unwrap_model(model)
    backbone = base_cfg.model.backbone
    saved = save_adapter(model, run_dir, base_sha256, extra_config={"run": str(base_run), "backbone": backbone})
    info = {"kind": "pemma", "backbone": backbone, "method": model.config.method, "base_run": str(base_run),
            "base_sha256": base_sha256, "modalities": ALL_INPUTS, "input_sets": [["ct", "pet"], ["ct"], ["pet"]],
            "adapters": {s: model.adapter_for(s.split("+")) or "none (exact CT base)" for s in ("ct+pet", "pet", "ct")},
            "adapter_bytes": saved["adapter_bytes"],
            "parameters": parameter_report(model, base_constructor_kwargs(base_cfg)), **meta}
    write_text_atomic(run_dir / MODEL_META, json.dumps(info, indent=2, default=str))


def pemma_task(base: LoadedModel, base_run: Path, adapter_cfg: AdapterConfig, cfg: RunConfig) -> TrainingTask:
    """The PEMMA model built on ``base`` and how it trains (seeded modality dropout per step)."""
    torch.manual_seed(cfg.train.seed)
    model = build_pemma(base, adapter_cfg)
    report = parameter_report(model, base_constructor_kwargs(base.config))
    choices = model.config.modality_choices(trainable_only=True)
    seed = cfg.train.seed

    def forward(module: nn.Module, image: torch.Tensor, step: int) -> torch.Tensor:
        # the same draw on every DDP rank: a pure function of (seed, step)
        modalities = model.config.sample_modalities(random.Random(seed * 1_000_003 + step), trainable_only=True)
        return module(select_channels(image, modalities), modalities)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_pemma_run(module, run_dir, base_run, base.meta["sha256"], base.config, meta)

    return TrainingTask(
        model=model, modalities=ALL_INPUTS, forward=forward,
        predictor=lambda module: (lambda x: module(x, ("ct", "pet"))), save=save,
        find_unused_parameters=True,  # PET-only steps leave parts of the model unused
        describe=[f"PEMMA {model.config.method.upper()} on {base.config.model.backbone}: rank "
                  f"{model.config.rank}, alpha {model.config.alpha}, targets {list(model.config.target_modules)}, "
                  f"training {list(model.config.train_parts)}",
                  f"trainable parameters: {report['trainable']:,} of {report['total']:,} "
                  f"({report['percent_of_early_fusion']:.2f}% of the early-fusion model's "
                  f"{report['early_fusion']:,})",
                  "modality dropout per step: " + ", ".join(f"{'+'.join(m)} {p:.2f}" for m, p in choices)
                  + " (CT-only batches run the frozen CT base and train nothing, so they are skipped)"])


@dataclasses.dataclass
class AdaptationSetup:
    """A CT base run, the run configuration with the base's model / preprocessing, and the case split."""

    base: LoadedModel
    base_run: Path
    cfg: RunConfig
    train_cases: list[CaseRecord]
    val_cases: list[CaseRecord]

    @property
    def meta(self) -> dict[str, Any]:
        return {"train_cases": [c.case_id for c in self.train_cases],
                "val_cases": [c.case_id for c in self.val_cases]}


def prepare_adaptation(base_run: str | Path, cfg: RunConfig, out_dir: str | Path,
                       split: CaseSplit | None = None) -> AdaptationSetup:
    """Load and check the CT-only base run, and select the CT+PET cases of ``cfg.data``.

    ``cfg.model`` and ``cfg.preprocess`` are taken from the base run (the adapted model must see what the
    base saw); ``cfg.data`` and ``cfg.train`` come from the caller.
    """
    base_run = Path(base_run)
    if Path(out_dir).resolve() == base_run.resolve():
        raise PemmaError(f"{out_dir}: the adapted run must not overwrite its base run")
    base = load_model(base_run)
    if base.kind != "backbone" or base.meta.get("modalities") != ["ct"]:
        raise PemmaError(f"{base_run}: the base must be a CT-only run of `pemma train` "
                         f"(got {base.kind} on {base.meta.get('modalities')})")
    cfg = dataclasses.replace(cfg, model=base.config.model, preprocess=base.config.preprocess,
                              data=dataclasses.replace(cfg.data, modalities=ALL_INPUTS))
    train_cases, val_cases = split or select_split(cfg, ALL_INPUTS)
    return AdaptationSetup(base, base_run, cfg, train_cases, val_cases)


def adapt(base_run: str | Path, cfg: RunConfig, adapter_cfg: AdapterConfig, out_dir: str | Path,
          resume: bool = False, progress: bool = True, split: CaseSplit | None = None) -> dict[str, Any]:
    """Adapt the CT-only run ``base_run`` to CT+PET on ``cfg.data`` with PEMMA and write ``out_dir``.

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom", "centres": ["MDA"]}})
        >>> adapt("runs/ct_unetr", cfg, AdapterConfig(method="lora"), "runs/pemma_unetr")
    """
    setup = prepare_adaptation(base_run, cfg, out_dir, split)
    task = pemma_task(setup.base, setup.base_run.resolve(), adapter_cfg, setup.cfg)
    task.describe.insert(0, f"base: {setup.base_run} (sha256 {setup.base.meta['sha256'][:12]}); "
                            + format_load_report(task.model.load_report))
    return train_task(task, setup.cfg, setup.train_cases, setup.val_cases, out_dir, resume=resume,
                      progress=progress, meta=setup.meta)
