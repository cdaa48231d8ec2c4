"""Fitting one prognosis stage on the training engine: the step over batches of cases (or full-batch steps on
cached features), pooled image features, risks and the C-index of a split.

Used by the stages of :mod:`pemma.survival.training`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemma.config import RunConfig
from pemma.runs import STATE_FILE, load_state
from pemma.runtime import DistInfo, barrier
from pemma.survival.config import SurvivalConfig
from pemma.survival.data import CaseImages, Split
from pemma.survival.model import PrognosisModel
from pemma.survival.probe import probe_parameters, select_penalty, solve_head, weight_penalty
from pemma.training.engine import Engine, StepFn
from pemma.training.resume_settings import PROCESSES_SETTING, RECORD_KEY, config_settings, refuse_other_settings

#: columns of a prognosis stage's ``metrics.csv``
METRIC_FIELDS = ("step", "epoch", "loss", "events", "lr", "seconds")
#: :class:`SurvivalConfig` fields a stage's checkpoint does not record for ``--resume``: the adapters' own settings
#: are recorded as the stage's effective adapter config (``lineage``), which may be the previous stage's
UNRECORDED_SETTINGS = ("method", "rank", "alpha")


def resume_record(cfg: RunConfig, settings: SurvivalConfig, lineage: dict[str, Any] | None) -> dict[str, Any]:
    """``{label: value}`` of what determines a stage's trained weights, saved with its checkpoint (a stage writes no
    ``config.yaml`` before it ends) and compared on ``--resume``: the config's
    :data:`~pemma.training.resume_settings.RESUME_SETTINGS`, the stage's settings and ``lineage`` (base / parent run
    by weights checksum, adapter settings, tables). Free to change: ``train.device``, ``checkpoint_every``, progress."""
    own = {k: v for k, v in settings.to_dict().items() if k not in UNRECORDED_SETTINGS}
    return {**config_settings(cfg), **own, **(lineage or {})}


#: pooled features already computed in this process: (encoder weights, input set, case crop) -> (D,) tensor. A stage
#: with a frozen encoder reads the same features for scaling, fitting, its training risks and its evaluation, and
#: the +EHR stage's frozen encoder is the +PET stage's: each case goes through that encoder once.
_FEATURES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
#: most features kept (a few MB; the oldest are dropped first)
FEATURE_MEMO_SIZE = 20000


def encoder_fingerprint(model: PrognosisModel) -> str:
    """SHA-1 of everything the pooled features depend on: the encoder's weights and buffers, its class, the input
    modalities (the tensors' bytes are hashed, so any change of any weight gives another fingerprint)."""
    digest = hashlib.sha1(f"{type(model.encoder).__name__}|{model.is_pemma}|{model.modalities}".encode())
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def features_of(model: PrognosisModel, images: CaseImages, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, D) raw pooled image features of every case (eval mode, no gradient).

    Cases whose features this process already computed with the same encoder weights and crop are not run through
    the encoder again (:data:`_FEATURES`); the others are computed in batches of ``batch_size``.
    """
    was_training = model.training
    model.eval()
    key_of = getattr(images, "case_key", None)  # an images object without case keys is never memoised
    keys = [key_of(i) if key_of is not None else None for i in range(len(images))]
    if any(k is None for k in keys):
        out = [model.image_features(images.batch(range(i, min(i + batch_size, len(images)))).to(device))
               for i in range(0, len(images), batch_size)]
        model.train(was_training)
        return torch.cat(out)
    fingerprint = encoder_fingerprint(model)
    keys = [(fingerprint, *k) for k in keys]
    missing = [i for i, k in enumerate(keys) if k not in _FEATURES]
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        for i, feats in zip(batch, model.image_features(images.batch(batch).to(device)).cpu(), strict=True):
            _FEATURES[keys[i]] = feats
    model.train(was_training)
    out = torch.stack([_FEATURES[k] for k in keys]).to(device)
    for k in keys:
        _FEATURES.move_to_end(k)
    while len(_FEATURES) > FEATURE_MEMO_SIZE:
        _FEATURES.popitem(last=False)
    return out


@torch.no_grad()
def risks_of(model: PrognosisModel, split: Split, batch_size: int, device: torch.device) -> np.ndarray:
    """(N,) risk scores of a split."""
    feats = features_of(model, split.images, batch_size, device)
    clin = None if split.clinical is None else split.clinical.to(device)
    model.eval()
    return model.risk(model.from_features(feats, clin)).float().cpu().numpy()


def _batch(order: np.ndarray, pos: int, batch_size: int, dist: DistInfo) -> np.ndarray:
    """Cases of this process at position ``pos`` of an epoch: the ``pos * world + rank``-th batch of ``order``
    (single process: the slice, short at the end; several: wrapped around, so every process has a full batch)."""
    start = (pos * dist.world_size + dist.rank) * batch_size
    if not dist.enabled:
        return order[start:start + batch_size]
    return np.take(order, np.arange(start, start + batch_size), mode="wrap")


def _step_fn(model: PrognosisModel, inputs: torch.Tensor, clin: torch.Tensor | None, times: torch.Tensor,
             events: torch.Tensor, penalised: list[torch.Tensor], l2: float) -> StepFn:
    """The engine closure: survival loss (+ the L2 penalty as objective), the survival loss reported."""
    def compute(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        out = module(inputs, clin)
        loss = model.head.loss(out, times, events)
        return loss + weight_penalty(penalised, l2), loss
    return compute


def fit(model: PrognosisModel, train: Split, cfg: RunConfig, device: torch.device, out_dir: Path,
        log: Any, settings: SurvivalConfig, *, dist: DistInfo | None = None, resume: bool = False,
        lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the trainable parameters of ``model`` on ``train``: the head solved on the frozen features, then (when
    the encoder trains) the Engine's steps; the latter append to ``metrics.csv`` and checkpoint every
    ``train.checkpoint_every`` steps.

    1. **The head on the stage's starting features** (:mod:`pemma.survival.probe`): the penalty ``settings.l2``,
       or when it is None the one of ``settings.l2_grid`` with the best inner-CV C-index (``settings.cv_folds``
       folds, seeded by ``train.seed``); then the head (and clinical projection) solved to the penalised optimum by
       L-BFGS on all training cases. A stage whose encoder is frozen ends here (no optimiser steps, no
       ``metrics.csv``): ``train.epochs`` / ``max_steps`` do not apply to it.
    2. **Encoder training** (adapters, PET pathway): the head's survival loss plus ``l2 / 2`` times the squared norm
       of the head's weight matrix and of the clinical projection's; ``metrics.csv`` logs the survival loss alone.
       AdamW with cosine decay; the head and clinical projection use ``cfg.train.lr``, trainable encoder parts
       ``lr * settings.encoder_lr_scale``; gradients are clipped to norm ``settings.clip_norm``. The pooled
       features differ little between patients (their standardisation magnifies them), so encoder updates at the
       head's learning rate destabilise the head. No mixed precision (the head's loss is computed in float32).

    Under torchrun (``dist`` with several processes): every process solves the same head on all cached features
    (one process's work repeated; the main process writes); when the encoder trains, DDP wraps the model and each
    process takes its own batch of ``train.batch_size`` cases per step (``ceil(cases / (batch_size x
    processes))`` steps per epoch). ``resume`` continues the encoder steps from ``out_dir/checkpoint.pt``
    (weights, optimiser, schedule, step, RNG), so the final weights equal an uninterrupted run's. The checkpoint
    records :func:`resume_record` (``lineage``: what the stage starts from, see there); a ``resume`` with other
    settings is refused before anything is computed.

    Returns:
        ``steps`` (optimiser steps), ``probe_iterations``, ``loss``, ``seconds``, ``l2`` (the penalty used) and
        ``l2_cv`` (``[{l2, c_index}]`` of the grid; empty when ``l2`` was given).
    """
    tc, dist = cfg.train, dist or DistInfo()
    # the processes decide each step's batch when the encoder trains (DDP, a batch each): another number trains
    # other weights, so a resume on another is refused like other settings
    record = {**resume_record(cfg, settings, lineage), PROCESSES_SETTING: dist.world_size}
    checkpoint = load_state(out_dir) if resume and (out_dir / STATE_FILE).is_file() else None
    if checkpoint is not None and isinstance(checkpoint.get(RECORD_KEY), dict):
        refuse_other_settings(out_dir, checkpoint[RECORD_KEY], record)
    encoder_trains = any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder."))
    started = time.time()
    feats = features_of(model, train.images, tc.batch_size, device)
    time_all, event_all = train.time.to(device), train.event.to(device)
    clin_all = None if train.clinical is None else train.clinical.to(device)
    if settings.l2 is None:
        l2, cv, folds = select_penalty(model, feats, time_all, event_all, clin_all, settings.l2_grid,
                                       settings.cv_folds, tc.seed, settings.probe_iterations)
        log.info(f"L2 penalty {l2:g} chosen by {folds}-fold inner cross-validation on the "
                 f"{len(feats)} training cases (out-of-fold C-index per penalty: "
                 + ", ".join(f"{k:g}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in cv.items()) + ")")
    else:
        l2, cv = float(settings.l2), {}
    solved = solve_head(model, feats, time_all, event_all, clin_all, l2, settings.probe_iterations)
    log.info(f"head solved on the {'starting ' if encoder_trains else ''}frozen features ({model.feature_dim} "
             f"pooled features, L-BFGS, {solved['iterations']} iterations): survival loss {solved['loss']:.4f}")
    result = {"steps": 0, "probe_iterations": solved["iterations"], "loss": round(solved["loss"], 5), "l2": l2,
              "l2_cv": [{"l2": k, "c_index": v} for k, v in cv.items()]}
    if not encoder_trains:
        model.eval()
        return {**result, "seconds": time.time() - started}
    penalised = probe_parameters(model)[1]
    n = len(train.images)
    per_epoch = max(1, math.ceil(n / (tc.batch_size * dist.world_size)))
    total = tc.epochs * per_epoch if tc.max_steps is None else min(tc.epochs * per_epoch, tc.max_steps)
    engine = Engine(model, total, tc.lr, device, weight_decay=tc.weight_decay, dist=dist,
                    lr_scales={"encoder.": settings.encoder_lr_scale}, clip_norm=settings.clip_norm, ddp=True)
    if tc.batch_size < 2 and model.head.kind == "cox":
        log.warning("Cox partial likelihood needs >= 2 cases per batch; with --batch-size 1 every loss is 0")
    log.info(f"training {total} steps on {n} cases (batches of {tc.batch_size} through the encoder)")
    if dist.enabled:
        log.info(f"DistributedDataParallel over {dist.world_size} processes, a batch each")
    extra = engine.begin(out_dir, resume, tc.seed, METRIC_FIELDS, checkpoint=checkpoint)
    del checkpoint
    value = math.nan
    if extra is not None:
        value = float(extra.get("loss", math.nan))
        log.info(f"resumed at step {engine.step_count} of {total}")
    order, order_epoch = np.arange(n), -1
    model.train()
    while engine.step_count < total:
        epoch, pos = divmod(engine.step_count, per_epoch)
        if epoch != order_epoch:  # a pure function of the epoch: a resumed run draws the same order
            order, order_epoch = np.random.default_rng([tc.seed, epoch, 11]).permutation(n), epoch
        idx = torch.as_tensor(_batch(order, pos, tc.batch_size, dist)).to(device)
        clin = None if clin_all is None else clin_all[idx]
        inputs = train.images.batch(idx.tolist()).to(device)
        value = engine.step(_step_fn(model, inputs, clin, time_all[idx], event_all[idx], penalised, l2))
        step = engine.step_count
        engine.log_metrics({"step": step, "epoch": epoch, "loss": f"{value:.5f}", "events": int(event_all[idx].sum()),
                            "lr": f"{engine.lr:.3e}", "seconds": f"{time.time() - started:.1f}"})
        if step % max(1, total // 5) == 0 or step == total:
            log.info(f"step {step}/{total} epoch {epoch}: loss {value:.4f}")
        if step % tc.checkpoint_every == 0 or step == total:
            engine.save(out_dir, loss=value, **{RECORD_KEY: record})
    engine.finish()
    barrier(dist)
    model.eval()
    return {**result, "steps": total, "loss": float(f"{value:.5f}"), "seconds": time.time() - started}
