"""``pemma survival train`` and ``adapt``: the prognosis stages CT -> CT+PET -> CT+PET+EHR.

* **train** (CT): the segmentation run's network is frozen; its pooled features are computed once per
  case and only the head trains (each step sees every training case: full-batch partial likelihood).
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
The head's weights carry an L2 penalty (``l2``); adapters and the PET pathway learn at ``lr *
encoder_lr_scale``. The final weights are kept (validation sets are too small to select on) and the
validation C-index is logged. Single process; no resume (each stage is short).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemma.adapters.artifacts import load_adapter, read_adapter_config
from pemma.adapters.config import AdapterConfig
from pemma.config import RunConfig
from pemma.data.transforms import describe
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file, write_text_atomic
from pemma.models.pemma_base import PEMMA_MODELS
from pemma.runs import MODEL_FILE
from pemma.runtime import resolve_device, run_logger
from pemma.survival.clinical import ClinicalConfig, ClinicalEncoder
from pemma.survival.data import CaseImages, Split, Tables, clinical_rows, prepare_splits, split_for_stage
from pemma.survival.heads import HEADS, TimeBins
from pemma.survival.metrics import concordance_counts
from pemma.survival.model import PrognosisModel, trainable_summary
from pemma.survival.runs import (
    build_model,
    load_base,
    load_run,
    pemma_adapter_config,
    save_run,
    stage_name,
)

#: learning-rate factor of trainable encoder parts (adapters, PET pathway) relative to the head's
ENCODER_LR_SCALE = 0.1
#: L2 penalty ``l2 / 2 * ||W||^2`` on the head's and the clinical projection's weights (MTLR's C1 regulariser)
L2_DEFAULT = 0.1


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@torch.no_grad()
def features_of(model: PrognosisModel, images: CaseImages, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, D) raw pooled image features of every case (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    out = [model.image_features(images.batch(range(i, min(i + batch_size, len(images)))).to(device))
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def risks_of(model: PrognosisModel, split: Split, batch_size: int, device: torch.device) -> np.ndarray:
    """(N,) risk scores of a split."""
    feats = features_of(model, split.images, batch_size, device)
    clin = None if split.clinical is None else split.clinical.to(device)
    model.eval()
    return model.risk(model.from_features(feats, clin)).float().cpu().numpy()


def c_index_or_none(split: Split | None, risk: np.ndarray | None) -> float | None:
    """Harrell's C of a split, or None when it has no comparable pair."""
    if split is None or risk is None:
        return None
    score, pairs = concordance_counts(split.time.numpy(), split.event.numpy(), risk)
    return score / pairs if pairs else None


def fit(model: PrognosisModel, train: Split, cfg: RunConfig, device: torch.device, out_dir: Path,
        log: Any, encoder_lr_scale: float = ENCODER_LR_SCALE, l2: float = L2_DEFAULT) -> dict[str, Any]:
    """Optimise the trainable parameters of ``model`` on ``train``; write ``metrics.csv``.

    The loss is the head's survival loss plus ``l2 / 2`` times the squared norm of the head's weight matrix
    and of the clinical projection's (when they train); ``metrics.csv`` logs the survival loss alone.

    AdamW with cosine decay; the head and clinical projection use ``cfg.train.lr``, trainable encoder parts
    (adapters, PET pathway) ``lr * encoder_lr_scale``; gradients are clipped to norm 1. The pooled features
    differ little between patients (their standardisation magnifies them), so encoder updates at the head's
    learning rate destabilise the head.
    """
    tc = cfg.train
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise PemmaError("nothing to train (no trainable parameter)")
    params = [p for _, p in named]
    encoder_params = [p for n, p in named if n.startswith("encoder.")]
    groups = [{"params": [p for n, p in named if not n.startswith("encoder.")], "lr": tc.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": tc.lr * encoder_lr_scale})
    encoder_trains = bool(encoder_params)
    if l2 < 0:
        raise PemmaError(f"l2 must be >= 0, got {l2}")
    penalised = [w for w in (model.head.linear.weight, getattr(model.clinical, "weight", None))
                 if w is not None and w.requires_grad]
    n = len(train.images)
    per_epoch = max(1, math.ceil(n / tc.batch_size))
    total = tc.epochs * per_epoch if tc.max_steps is None else min(tc.epochs * per_epoch, tc.max_steps)
    cached = None if encoder_trains else features_of(model, train.images, tc.batch_size, device)
    time_all, event_all = train.time.to(device), train.event.to(device)
    clin_all = None if train.clinical is None else train.clinical.to(device)
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                                         / total)))
    if encoder_trains and tc.batch_size < 2 and model.head.kind == "cox":
        log.warning("Cox partial likelihood needs >= 2 cases per batch; with --batch-size 1 every loss is 0")
    log.info(f"training {total} steps on {n} cases ("
             + (f"batches of {tc.batch_size} through the encoder" if encoder_trains
                else "encoder frozen: cached features, every case in each step") + ")")
    torch.manual_seed(tc.seed)
    rows, started, order = [], time.time(), np.arange(n)
    model.train()
    for step in range(total):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:
            order = np.random.default_rng([tc.seed, epoch, 11]).permutation(n)
        idx = torch.as_tensor(order[pos * tc.batch_size:(pos + 1) * tc.batch_size] if encoder_trains else order)
        clin = None if clin_all is None else clin_all[idx.to(device)]
        if cached is None:
            out = model(train.images.batch(idx.tolist()).to(device), clin)
        else:
            out = model.from_features(cached[idx.to(device)], clin)
        loss = model.head.loss(out, time_all[idx.to(device)], event_all[idx.to(device)])
        total_loss = loss + 0.5 * l2 * sum((w ** 2).sum() for w in penalised) if penalised and l2 else loss
        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        rows.append({"step": step + 1, "epoch": epoch, "loss": f"{value:.5f}",
                     "events": int(event_all[idx.to(device)].sum()), "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                     "seconds": f"{time.time() - started:.1f}"})
        if (step + 1) % max(1, total // 5) == 0 or step + 1 == total:
            log.info(f"step {step + 1}/{total} epoch {epoch}: loss {value:.4f}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss", "events", "lr", "seconds"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    model.eval()
    return {"steps": total, "loss": float(rows[-1]["loss"]) if rows else math.nan, "seconds": time.time() - started}


def _finish(model: PrognosisModel, cfg: RunConfig, train: Split, val: Split | None, out_dir: Path,
            meta: dict[str, Any], history: list[dict[str, Any]], log: Any, device: torch.device,
            fitted: dict[str, Any], params: dict[str, int]) -> dict[str, Any]:
    """Training median risk, validation C-index, history row; save the run."""
    bs = cfg.train.batch_size
    train_risk = risks_of(model, train, bs, device)
    val_risk = None if val is None else risks_of(model, val, bs, device)
    train_c, val_c = c_index_or_none(train, train_risk), c_index_or_none(val, val_risk)
    stage = stage_name(meta["modalities"], meta["ehr"])
    row = {"stage": stage, "run": str(out_dir.resolve()), "trainable": params["trainable"],
           "total": params["total"], "train_c_index": train_c, "val_c_index": val_c, "steps": fitted["steps"]}
    meta.update({"stage": stage, "risk_threshold": float(np.median(train_risk)), "train_c_index": train_c,
                 "val_c_index": val_c, "train_cases": train.case_ids,
                 "val_cases": [] if val is None else val.case_ids, "parameters": params,
                 "history": history + [row], "steps": fitted["steps"]})
    save_run(model, cfg, out_dir, meta)
    log.info(f"done {stage}: {fitted['steps']} steps in {fitted['seconds']:.0f} s; C-index train {_fmt(train_c)}, "
             f"validation {_fmt(val_c)}; training median risk {meta['risk_threshold']:.4g}")
    return {**row, "seconds": fitted["seconds"], "risk_threshold": meta["risk_threshold"]}


def _start(out_dir: str | Path, cfg: RunConfig, modalities: tuple[str, ...], source: Path) -> tuple[Path, Any]:
    out = Path(out_dir)
    if out.resolve() == source.resolve():
        raise PemmaError(f"{out}: the new run must not overwrite {source}")
    out.mkdir(parents=True, exist_ok=True)
    log = run_logger(out)
    for line in describe(list(modalities), cfg.preprocess):
        log.info(line)
    log.info(f"input: one centre crop of {cfg.model.roi_size} voxels per case (the label is never read)")
    return out, log


def train_survival(base_run: str | Path, cfg: RunConfig, out_dir: str | Path, head: str = "mtlr",
                   endpoints: str | Path | None = None, n_bins: int | None = None, l2: float = L2_DEFAULT,
                   progress: bool = False, split: tuple[Sequence[str], Sequence[str]] | None = None) -> dict[str, Any]:
    """Train a prognosis head on the frozen encoder of a segmentation run (stage ``ct``).

    Args:
        base_run: run folder of ``pemma train`` (plain backbone); its model and preprocessing are used.
        cfg: data (root, centres, modalities = the base's, val_fraction) and train settings.
        out_dir: the prognosis run folder.
        head: "mtlr" or "cox".
        endpoints: endpoint CSV; default: found under ``cfg.data.root``.
        n_bins: MTLR bins; default ``ceil(sqrt(training events))``.
        l2: weight penalty of the head (see :func:`fit`).
        split: (training, validation) case IDs; default: ``cfg.data.val_fraction`` of the cases, seeded.

    Returns:
        Summary (stage, trainable/total parameters, train/validation C-index, steps, seconds).

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom"}})
        >>> train_survival("runs/ct_unetr", cfg, "runs/surv_ct", head="mtlr")
    """
    if head not in HEADS:
        raise PemmaError(f"head must be one of {HEADS}, got {head!r}")
    base_run = Path(base_run)
    base = load_base(base_run)
    modalities = tuple(cfg.data.modalities)
    if list(modalities) != list(base.meta.get("modalities", [])):
        raise PemmaError(f"{base_run}: the segmentation run reads {','.join(base.meta.get('modalities', []))}, "
                         f"not {','.join(modalities)}; train on its inputs, then add modalities with "
                         "`pemma survival adapt`")
    cfg = dataclasses.replace(cfg, model=base.config.model, preprocess=base.config.preprocess)
    out, log = _start(out_dir, cfg, modalities, base_run)
    tables = Tables.find(cfg.data.root, endpoints=endpoints)
    train, val = prepare_splits(cfg, modalities, tables, None, progress,
                                *split_for_stage(cfg, modalities, tables, fixed=split))
    bins = TimeBins.from_times(train.time.numpy(), train.event.numpy(), n_bins) if head == "mtlr" else None
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(base, head, bins, modalities, None, 0).to(device)
    model.set_feature_scaling(features_of(model, train.images, cfg.train.batch_size, device))
    model.head.requires_grad_(True)
    params = trainable_summary(model)
    log.info(f"stage {stage_name(modalities, False)}: {head} head on {base.config.model.backbone} features "
             f"(D={model.feature_dim}){f', MTLR bins {list(bins.boundaries)}' if bins else ''}; trainable "
             f"parameters {params['trainable']:,} of {params['total']:,}")
    fitted = fit(model, train, cfg, device, out, log, l2=l2)
    meta = {"modalities": list(modalities), "ehr": False, "head": head, "l2": l2,
            "time_bins": list(bins.boundaries) if bins else None, "backbone": base.config.model.backbone,
            "feature_dim": model.feature_dim, "base_run": str(base_run.resolve()),
            "base_sha256": sha256_file(base_run / MODEL_FILE), "adapter_config": None, "clinical_encoder": None,
            "parent": None}
    return _finish(model, cfg, train, val, out, meta, [], log, device, fitted, params)


def adapt_survival(model_run: str | Path, cfg: RunConfig, out_dir: str | Path, add_modality: str | None = None,
                   add_ehr: bool = False, method: str | None = None, rank: int = 4, alpha: float = 8.0,
                   clinical_config: ClinicalConfig | None = None, endpoints: str | Path | None = None,
                   clinical: str | Path | None = None, base_run: str | Path | None = None,
                   encoder_lr_scale: float = ENCODER_LR_SCALE, l2: float = L2_DEFAULT,
                   progress: bool = False, split: tuple[Sequence[str], Sequence[str]] | None = None,
                   train_adapters: bool = True, init_adapters: str | Path | None = None) -> dict[str, Any]:
    """Add PET and/or EHR to a prognosis model, training adapters (and the new input pathway and head) only.

    Args:
        model_run: the previous prognosis run (``train`` or an earlier ``adapt``).
        cfg: data and train settings (model and preprocessing come from the previous run).
        out_dir: the new run folder (the previous run is not modified).
        add_modality: "pet" or None.
        add_ehr: add the clinical vector.
        method: "lora" or "dora" for new adapters; must equal the previous stage's when it has adapters.
            Default: the previous stage's, else "lora".
        rank, alpha: adapter rank and scaling for new adapters.
        clinical_config: clinical columns (default :class:`ClinicalConfig` ()).
        endpoints, clinical: explicit table paths; default: found under ``cfg.data.root``.
        base_run: the segmentation base if it moved.
        encoder_lr_scale: learning-rate factor of the adapters and PET pathway (see :func:`fit`).
        l2: weight penalty of the head and clinical projection (see :func:`fit`).
        split: (training, validation) case IDs; default: the previous stage's sides (new cases split by
            ``cfg.data.val_fraction``).
        train_adapters: train the adapters (LoRA/DoRA tensors and, when adding PET, the PET pathway) too
            (default). False keeps them frozen: the stage then trains the head (and clinical projection) on
            image features computed once per case. New adapters always train unless ``init_adapters`` gives
            them.
        init_adapters: a PEMMA segmentation run (``pemma adapt``) on the same base whose adapters and PET
            pathway start this stage (adding PET); its adapter config replaces ``method``/``rank``/``alpha``.

    Example:
        >>> adapt_survival("runs/surv_ct", cfg, "runs/surv_ctpet", add_modality="pet", method="lora")
    """
    prev = load_run(model_run, base_run=base_run)
    if add_modality not in (None, "pet"):
        raise PemmaError(f"--add-modality must be pet, got {add_modality!r}")
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
    adapter_cfg = old_cfg or pemma_adapter_config(backbone, method or "lora", rank, alpha)
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
    out, log = _start(out_dir, cfg, modalities, Path(model_run))
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
        encoder.fit(rows)
        log.info(f"clinical encoder fitted on {len(rows)} training cases: {encoder.n_features} features "
                 f"({', '.join(encoder.feature_names[:6])}, ...)")
    train, val = prepare_splits(cfg, modalities, tables, encoder if ehr else None, progress, report, train_cases,
                          val_cases)
    device = resolve_device(cfg.train.device)
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
    train_encoder = train_adapters or (old_cfg is None and init_adapters is None)
    if train_encoder:
        for name, p in model.encoder.named_parameters():
            if ".lora_" in name:
                p.requires_grad_(True)
    if add_modality and train_encoder:
        for part in PEMMA_MODELS[backbone].feature_pet_parts:
            getattr(model.encoder, part).requires_grad_(True)
    if add_ehr and model.clinical is not None:
        model.clinical.requires_grad_(True)
    model.head.requires_grad_(True)
    params = trainable_summary(model)
    log.info(f"stage {prev.stage} -> {stage_name(modalities, ehr)}: {adapter_cfg.method.upper()} rank "
             f"{adapter_cfg.rank} on {list(adapter_cfg.resolve(backbone).target_modules)}; trainable parameters "
             f"{params['trainable']:,} of {params['total']:,} ("
             + ", ".join(f"{k.split(':', 1)[1]} {v:,}" for k, v in params.items() if k.startswith("trainable:"))
             + ")")
    fitted = fit(model, train, cfg, device, out, log, encoder_lr_scale, l2)
    meta = {**{k: prev.meta[k] for k in ("head", "time_bins", "backbone", "feature_dim", "base_run", "base_sha256")},
            "modalities": list(modalities), "ehr": ehr, "l2": l2, "adapter_config": adapter_cfg.to_dict(),
            "clinical_encoder": encoder.to_dict() if (ehr and encoder) else None,
            "init_adapters": str(Path(init_adapters).resolve()) if init_adapters is not None else None,
            "parent": str(Path(model_run).resolve())}
    if base_run is not None:
        meta["base_run"] = str(Path(base_run).resolve())
    return _finish(model, cfg, train, val, out, meta, list(prev.meta.get("history", [])), log, device, fitted,
                   params)
