"""``pemma survival train`` and ``adapt``: the prognosis stages CT -> CT+PET -> CT+PET+EHR.

* **train** (CT): the segmentation run's network is frozen; its pooled features are computed once per
  case and only the head trains: it is solved to the penalised optimum on those features (L-BFGS, full batch).
* **adapt --add-modality pet**: the PEMMA model is built around the same base (LoRA/DoRA on the attention
  projections, a PET patch embedding [+ fusion for Swin]); adapters, the PET pathway and the head train.
  Feature scaling is re-estimated on the CT+PET training features first.
* **adapt --add-ehr**: a zero-initialised Linear projection of the encoded clinical vector is added to the
  image features (the model starts from the previous stage's predictions); adapters, the projection and
  the head train. The clinical encoder is fitted on the training cases only.

Every stage keeps the training / validation cases of the stage it extends (new cases are split by
``val_fraction``), so no stage is validated on cases an earlier stage trained on. Steps that run the
encoder use ``train.batch_size`` cases per step (Cox batches without an event give a zero loss and a zero
gradient). The number of steps is ``epochs * ceil(training cases / batch_size)``, capped by ``max_steps``.
The head's weights carry an L2 penalty (``l2``), chosen by inner cross-validation on the training cases unless
given (:mod:`pemma.survival.probe`); every stage first solves its head on its starting (frozen) features, and a
stage that trains the encoder continues from there, adapters and PET pathway learning at ``lr *
encoder_lr_scale``. The final weights are kept (validation sets are too small to select on) and the
validation C-index is logged.

Every stage runs on :class:`pemma.training.engine.Engine`: ``resume`` continues an interrupted stage in its
folder (bit-identical final weights), and under torchrun the stages that run the encoder train with
DistributedDataParallel (see :func:`fit` for the head-only stage). The stage's settings
(:class:`~pemma.survival.config.SurvivalConfig`) are saved in ``survival.json`` under ``"settings"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemma.adapters.artifacts import load_adapter, read_adapter_config
from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import is_adapter_param
from pemma.config import RunConfig
from pemma.data.transforms import describe
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.models.pemma_base import PEMMA_MODELS
from pemma.runs import MODEL_FILE, final_path
from pemma.runtime import DistInfo, barrier, run_logger
from pemma.survival.clinical import ClinicalConfig, ClinicalEncoder
from pemma.survival.config import OVERFIT_GAP, SurvivalConfig, survival_settings
from pemma.survival.data import Split, Tables, clinical_rows, prepare_splits, split_for_stage
from pemma.survival.fit import features_of, fit, risks_of
from pemma.survival.heads import TimeBins
from pemma.survival.metrics import c_index_or_none
from pemma.survival.model import PrognosisModel, trainable_summary
from pemma.survival.runs import (
    build_model,
    load_base,
    load_run,
    pemma_adapter_config,
    save_run,
    stage_name,
)
from pemma.training.engine import process_group


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def scored_text(c_index: float | None, n: int | None, events: int | None) -> str:
    """``0.833 (15 cases, 6 relapses)``: a C-index with what it was computed on (``n/a`` when undefined)."""
    if n is None:
        return _fmt(c_index)
    return f"{_fmt(c_index)} ({n} case{'' if n == 1 else 's'}, {events} relapse{'' if events == 1 else 's'})"




def _finish(model: PrognosisModel, cfg: RunConfig, train: Split, val: Split | None, out_dir: Path,
            meta: dict[str, Any], history: list[dict[str, Any]], log: Any, device: torch.device,
            fitted: dict[str, Any], params: dict[str, int], dist: DistInfo) -> dict[str, Any]:
    """Training median risk, validation C-index, history row; save the run (main process)."""
    bs = cfg.train.batch_size
    train_risk = risks_of(model, train, bs, device)
    val_risk = None if val is None else risks_of(model, val, bs, device)
    train_c = c_index_or_none(train.time.numpy(), train.event.numpy(), train_risk)
    val_c = None if val is None else c_index_or_none(val.time.numpy(), val.event.numpy(), val_risk)
    stage = stage_name(meta["modalities"], meta["ehr"])
    overfit = train_c is not None and val_c is not None and train_c - val_c > OVERFIT_GAP
    if overfit:
        log.warning(f"stage {stage}: overfitting: training C-index {train_c:.3f} exceeds the validation C-index "
                    f"{val_c:.3f} by more than {OVERFIT_GAP} ({model.feature_dim} pooled features, "
                    f"{len(train.case_ids)} training cases)")
    row = {"stage": stage, "run": str(final_path(out_dir).resolve()), "trainable": params["trainable"],
           "total": params["total"], "train_c_index": train_c, "val_c_index": val_c, "steps": fitted["steps"],
           "overfitting": overfit, "l2": fitted["l2"], "n_train": len(train.case_ids),
           "events_train": int(train.event.sum()), "n_val": None if val is None else len(val.case_ids),
           "events_val": None if val is None else int(val.event.sum())}
    meta.update({"stage": stage, "risk_threshold": float(np.median(train_risk)), "train_c_index": train_c,
                 "val_c_index": val_c, "overfitting": overfit, "train_cases": train.case_ids,
                 "val_cases": [] if val is None else val.case_ids, "parameters": params,
                 "history": history + [row], "steps": fitted["steps"]})
    if dist.is_main:
        save_run(model, cfg, out_dir, meta)
    barrier(dist)
    how = f"{fitted['steps']} steps" if fitted["steps"] else "head solved"
    log.info(f"done {stage}: {how} in {fitted['seconds']:.0f} s (l2 {fitted['l2']:g}); C-index train "
             f"{scored_text(train_c, row['n_train'], row['events_train'])}, validation "
             f"{scored_text(val_c, row['n_val'], row['events_val'])}; training median risk "
             f"{meta['risk_threshold']:.4g}")
    return {**row, "seconds": fitted["seconds"], "risk_threshold": meta["risk_threshold"]}


def _start(out_dir: str | Path, cfg: RunConfig, modalities: tuple[str, ...], source: Path,
           dist: DistInfo) -> tuple[Path, Any]:
    out = Path(out_dir)
    if out.resolve() == source.resolve():
        raise PemmaError(f"{out}: the new run must not overwrite {source}")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(dist)
    log = run_logger(out, enabled=dist.is_main)
    for line in describe(list(modalities), cfg.preprocess):
        log.info(line)
    log.info(f"input: one centre crop of {cfg.model.roi_size} voxels per case (the label is never read)")
    return out, log


def train_survival(base_run: str | Path, cfg: RunConfig, out_dir: str | Path, settings: SurvivalConfig | None = None,
                   *, endpoints: str | Path | None = None, progress: bool = False,
                   split: tuple[Sequence[str], Sequence[str]] | None = None, resume: bool = False,
                   **changes: Any) -> dict[str, Any]:
    """Train a prognosis head on the frozen encoder of a segmentation run (stage ``ct``).

    Args:
        base_run: run folder of ``pemma train`` (plain backbone); its model and preprocessing are used.
        cfg: data (root, centres, modalities = the base's, val_fraction) and train settings.
        out_dir: the prognosis run folder.
        settings: ``head`` ("mtlr" or "cox"), ``bins`` (MTLR bins; default ``ceil(sqrt(training events))``),
            ``l2`` (weight penalty of the head, see :func:`fit`), ``clip_norm``; default :class:`SurvivalConfig` ().
        endpoints: endpoint CSV; default: found under ``cfg.data.root``.
        split: (training, validation) case IDs; default: ``cfg.data.val_fraction`` of the cases, seeded.
        progress: show progress bars. Default False.
        resume: continue an interrupted run in ``out_dir`` (from its ``checkpoint.pt``; none: start afresh).
        changes: fields of ``settings`` to change (e.g. ``head="cox", l2=0.5``).

    Returns:
        Summary (stage, trainable/total parameters, train/validation C-index, steps, seconds).

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom"}})
        >>> train_survival("runs/ct_unetr", cfg, "runs/surv_ct", head="mtlr")
    """
    settings = survival_settings(settings, **changes)
    with process_group(cfg.train.device) as (device, dist):
        return _train_survival(Path(base_run), cfg, Path(out_dir), settings, endpoints, progress, split, resume,
                               device, dist)


def _train_survival(base_run: Path, cfg: RunConfig, out_dir: Path, settings: SurvivalConfig,
                    endpoints: str | Path | None, progress: bool, split: tuple[Sequence[str], Sequence[str]] | None,
                    resume: bool, device: torch.device, dist: DistInfo) -> dict[str, Any]:
    head = settings.head
    base = load_base(base_run)
    modalities = tuple(cfg.data.modalities)
    if list(modalities) != list(base.meta.get("modalities", [])):
        raise PemmaError(f"{base_run}: the segmentation run reads {','.join(base.meta.get('modalities', []))}, "
                         f"not {','.join(modalities)}; train on its inputs, then add modalities with "
                         "`pemma survival adapt`")
    cfg = dataclasses.replace(cfg, model=base.config.model, preprocess=base.config.preprocess)
    out, log = _start(out_dir, cfg, modalities, base_run, dist)
    tables = Tables.find(cfg.data.root, endpoints=endpoints)
    train, val = prepare_splits(cfg, modalities, tables, None, progress,
                                *split_for_stage(cfg, modalities, tables, fixed=split))
    bins = TimeBins.from_times(train.time.numpy(), train.event.numpy(), settings.bins) if head == "mtlr" else None
    torch.manual_seed(cfg.train.seed)
    model = build_model(base, head, bins, modalities, None, 0).to(device)
    model.set_feature_scaling(features_of(model, train.images, cfg.train.batch_size, device))
    model.head.requires_grad_(True)
    params = trainable_summary(model)
    log.info(f"stage {stage_name(modalities, False)}: {head} head on {base.config.model.backbone} features "
             f"(D={model.feature_dim}){f', MTLR bins {list(bins.boundaries)}' if bins else ''}; trainable "
             f"parameters {params['trainable']:,} of {params['total']:,}")
    base_sha256 = sha256_file(base_run / MODEL_FILE)
    lineage = {"base": {"run": str(base_run.resolve()), "sha256": base_sha256},
               "endpoints": str(Path(tables.endpoint_path).resolve())}
    fitted = fit(model, train, cfg, device, out, log, settings, dist=dist, resume=resume, lineage=lineage)
    meta = {"modalities": list(modalities), "ehr": False, "head": head, "l2": fitted["l2"], "l2_cv": fitted["l2_cv"],
            "time_bins": list(bins.boundaries) if bins else None, "backbone": base.config.model.backbone,
            "feature_dim": model.feature_dim, "base_run": str(base_run.resolve()),
            "base_sha256": base_sha256, "adapter_config": None, "clinical_encoder": None,
            "parent": None, "settings": settings.to_dict()}
    return _finish(model, cfg, train, val, out, meta, [], log, device, fitted, params, dist)


def adapt_survival(model_run: str | Path, cfg: RunConfig, out_dir: str | Path, settings: SurvivalConfig | None = None,
                   *, clinical_config: ClinicalConfig | None = None, endpoints: str | Path | None = None,
                   clinical: str | Path | None = None, base_run: str | Path | None = None, progress: bool = False,
                   split: tuple[Sequence[str], Sequence[str]] | None = None,
                   init_adapters: str | Path | None = None, resume: bool = False, **changes: Any) -> dict[str, Any]:
    """Add PET and/or EHR to a prognosis model, training adapters (and the new input pathway and head) only.

    Args:
        model_run: the previous prognosis run (``train`` or an earlier ``adapt``).
        cfg: data and train settings (model and preprocessing come from the previous run).
        out_dir: the new run folder (the previous run is not modified).
        settings: what to add and how (:class:`SurvivalConfig`): ``add_modality`` ("pet" or None), ``add_ehr``
            (the clinical vector); ``method`` ("lora" or "dora" for new adapters; must equal the previous
            stage's when it has adapters; default: the previous stage's, else "lora"); ``rank``, ``alpha``
            (of new adapters); ``encoder_lr_scale`` (learning-rate factor of the adapters and PET pathway) and
            ``l2`` (weight penalty of the head and clinical projection), see :func:`fit`; ``train_adapters``:
            train the adapters (LoRA/DoRA tensors and, when adding PET, the PET pathway) too (default). False
            keeps them frozen: the stage then trains the head (and clinical projection) on image features
            computed once per case. New adapters always train unless ``init_adapters`` gives them. The head
            is the previous stage's.
        clinical_config: clinical columns (default :class:`ClinicalConfig` ()).
        endpoints, clinical: explicit table paths; default: found under ``cfg.data.root``.
        base_run: the segmentation base if it moved.
        split: (training, validation) case IDs; default: the previous stage's sides (new cases split by
            ``cfg.data.val_fraction``).
        init_adapters: a PEMMA segmentation run (``pemma adapt``) on the same base whose adapters and PET
            pathway start this stage (adding PET); its adapter config replaces ``method``/``rank``/``alpha``.
        progress: show progress bars. Default False.
        resume: continue an interrupted run in ``out_dir`` (from its ``checkpoint.pt``; none: start afresh).
        changes: fields of ``settings`` to change (e.g. ``add_modality="pet", method="lora"``).

    Example:
        >>> adapt_survival("runs/surv_ct", cfg, "runs/surv_ctpet", add_modality="pet", method="lora")
    """
    settings = survival_settings(settings, **changes)
    with process_group(cfg.train.device) as (device, dist):
        return _adapt_survival(Path(model_run), cfg, Path(out_dir), settings, clinical_config, endpoints, clinical,
                               base_run, progress, split, init_adapters, resume, device, dist)


def _adapt_survival(model_run: Path, cfg: RunConfig, out_dir: Path, settings: SurvivalConfig,
                    clinical_config: ClinicalConfig | None, endpoints: str | Path | None,
                    clinical: str | Path | None, base_run: str | Path | None, progress: bool,
                    split: tuple[Sequence[str], Sequence[str]] | None, init_adapters: str | Path | None,
                    resume: bool, device: torch.device, dist: DistInfo) -> dict[str, Any]:
    add_modality, add_ehr, method = settings.add_modality, settings.add_ehr, settings.method
    prev = load_run(model_run, base_run=base_run)
    settings = dataclasses.replace(settings, head=prev.meta["head"])
    if add_modality is None and not add_ehr:
        raise PemmaError("nothing to add: give --add-modality pet and/or --add-ehr")
    if add_modality and add_modality in prev.modalities:
        raise PemmaError(f"{model_run}: already reads {add_modality.upper()} (stage {prev.stage})")
    if add_ehr and prev.ehr:
        raise PemmaError(f"{model_run}: already uses EHR (stage {prev.stage})")
    old_cfg = prev.adapter_config
    if old_cfg is not None and method is not None and method != old_cfg.method:
        raise PemmaError(f"{model_run}: has {old_cfg.method} adapters; adapt it with --method {old_cfg.method}")
    backbone = prev.base.config.model.backbone
    adapter_cfg = old_cfg or pemma_adapter_config(backbone, method or "lora", settings.rank, settings.alpha)
    if init_adapters is not None:
        if old_cfg is not None or not add_modality:
            raise PemmaError(f"{init_adapters}: segmentation adapters can only start the stage that adds PET")
        adapter_cfg = AdapterConfig.from_dict(read_adapter_config(init_adapters)["adapter_config"])
        if method is not None and method != adapter_cfg.method:
            raise PemmaError(f"{init_adapters}: holds {adapter_cfg.method} adapters, not {method}")
    modalities = tuple(m for m in ("ct", "pet") if m in prev.modalities or m == add_modality)
    ehr = prev.ehr or add_ehr
    cfg = dataclasses.replace(cfg, model=prev.config.model, preprocess=prev.config.preprocess,
                              data=dataclasses.replace(cfg.data, modalities=list(modalities)))
    out, log = _start(out_dir, cfg, modalities, model_run, dist)
    tables = Tables.find(cfg.data.root, endpoints=endpoints, clinical=clinical, need_clinical=ehr)
    encoder = prev.clinical_encoder
    report, train_cases, val_cases = split_for_stage(cfg, modalities, tables, prev.meta, fixed=split)
    if add_ehr:
        assert tables.clinical is not None
        encoder = ClinicalEncoder(clinical_config or ClinicalConfig())
        encoder.check_columns(tables.clinical.columns, str(tables.clinical.path))
        rows = [r for r in clinical_rows(train_cases, tables.clinical) if r is not None]
        if not rows:
            raise PemmaError(f"{tables.clinical.path}: no training case has a clinical row")
        encoder.fit(rows, source=str(tables.clinical.path))
        log.info(f"clinical encoder fitted on {len(rows)} training cases: {encoder.n_features} features "
                 f"({', '.join(encoder.feature_names[:6])}, ...)")
    train, val = prepare_splits(cfg, modalities, tables, encoder if ehr else None, progress, report, train_cases,
                          val_cases)
    torch.manual_seed(cfg.train.seed)
    model = build_model(prev.base, prev.meta["head"], prev.bins, modalities, adapter_cfg,
                        encoder.n_features if (ehr and encoder) else 0)
    new_parts = ("encoder.",) if old_cfg is None else ()
    new_parts += ("clinical.",) if add_ehr else ()
    model.load_saved_state(prev.model.saved_state(), f"{model_run} weights", allow_new=new_parts)
    if init_adapters is not None:
        load_adapter(model.encoder, init_adapters, prev.meta["base_sha256"])
        log.info(f"adapters and PET pathway initialised from the segmentation run {init_adapters}")
    model.to(device)
    if add_modality:  # features of the new input set: re-estimate the scaling the head reads
        model.set_feature_scaling(features_of(model, train.images, cfg.train.batch_size, device))
    model.requires_grad_(False)
    train_encoder = settings.train_adapters or (old_cfg is None and init_adapters is None)
    if train_encoder:
        for name, p in model.encoder.named_parameters():
            if is_adapter_param(name):
                p.requires_grad_(True)
    if add_modality and train_encoder:
        for part in PEMMA_MODELS[backbone].feature_pet_parts:
            module = getattr(model.encoder, part, None)
            if module is not None:  # the authors' UNETR has none: PET through the frozen CT patch embedding
                module.requires_grad_(True)
    if add_ehr and model.clinical is not None:
        model.clinical.requires_grad_(True)
    model.head.requires_grad_(True)
    params = trainable_summary(model)
    log.info(f"stage {prev.stage} -> {stage_name(modalities, ehr)}: {adapter_cfg.method.upper()} rank "
             f"{adapter_cfg.rank} on {list(adapter_cfg.resolve(backbone).target_modules)}; trainable parameters "
             f"{params['trainable']:,} of {params['total']:,} ("
             + ", ".join(f"{k.split(':', 1)[1]} {v:,}" for k, v in params.items() if k.startswith("trainable:"))
             + ")")
    init = None if init_adapters is None else {"run": str(Path(init_adapters).resolve()),
                                               "sha256": read_adapter_config(init_adapters)["weights_sha256"]}
    lineage = {"parent": {"run": str(model_run.resolve()), "sha256": prev.meta["weights_sha256"]},
               "base": {"run": str(prev.meta["base_run"]), "sha256": prev.meta["base_sha256"]},
               **adapter_cfg.resume_settings(), "init_adapters": init,
               "endpoints": str(Path(tables.endpoint_path).resolve()),
               "clinical": str(Path(tables.clinical_path).resolve()) if ehr else None,
               "clinical_columns": dataclasses.asdict(clinical_config or ClinicalConfig()) if add_ehr else None}
    fitted = fit(model, train, cfg, device, out, log, settings, dist=dist, resume=resume, lineage=lineage)
    meta = {**{k: prev.meta[k] for k in ("head", "time_bins", "backbone", "feature_dim", "base_run", "base_sha256")},
            "modalities": list(modalities), "ehr": ehr, "l2": fitted["l2"], "l2_cv": fitted["l2_cv"],
            "settings": settings.to_dict(),
            "adapter_config": adapter_cfg.to_dict(),
            "clinical_encoder": encoder.to_dict() if (ehr and encoder) else None,
            "init_adapters": str(Path(init_adapters).resolve()) if init_adapters is not None else None,
            "parent": str(model_run.resolve())}
    if base_run is not None:
        meta["base_run"] = str(Path(base_run).resolve())
    return _finish(model, cfg, train, val, out, meta, list(prev.meta.get("history", [])), log, device, fitted,
                   params, dist)
