"""The training loop shared by every method: DiceCE, AdamW, cosine schedule, seeded crops, sliding-window
validation by DSCagg, atomic checkpoints, exact resume, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate
from monai.losses import DiceCELoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pemma.config import RunConfig
from pemma.data.dataset import EpochPlan, SeededCrops, cached_dataset, case_dicts
from pemma.data.layout import CaseRecord
from pemma.data.transforms import describe, preprocessing, training_augmentation
from pemma.errors import PemmaError
from pemma.evaluation.metrics import AggregatedDice
from pemma.inference.sliding import autocast, sliding_window_probs
from pemma.runs import CONFIG_FILE, load_state, save_state
from pemma.runtime import DistInfo, MetricsCSV, barrier, cleanup, init_distributed, resolve_device, run_logger

ForwardFn = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]


@dataclass
class TrainingTask:
    """What a method trains and how it is called; the loop itself is method-agnostic.

    Args:
        model: the module to train (parameters with ``requires_grad`` are optimised).
        modalities: channels loaded from the data, in [CT, PET] order.
        forward: ``(module, image, step) -> logits`` for a training batch (may drop modalities per step).
        predictor: ``(module) -> (window -> logits)`` used for validation.
        save: ``(module, run_dir, meta)`` writes the final artifacts (called for the best weights).
        describe: extra lines for the run log (trainable parameters, adapters).
        find_unused_parameters: DDP flag, True when some steps skip part of the model.
    """

    model: nn.Module
    modalities: list[str]
    forward: ForwardFn
    predictor: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    save: Callable[[nn.Module, Path, dict[str, Any]], None]
    describe: list[str]
    find_unused_parameters: bool = False


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus all buffers: what a resumable checkpoint must hold (frozen weights are
    rebuilt from their source)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}


def validate(task: TrainingTask, module: nn.Module, val_ds: Any, cfg: RunConfig, device: torch.device) -> dict:
    """DSCagg per class and mean over the validation cases (preprocessed grid, sliding window)."""
    module.eval()
    agg = AggregatedDice()
    predictor = task.predictor(module)
    for i in range(len(val_ds)):
        item = val_ds[i]
        probs = sliding_window_probs(predictor, item["image"].as_tensor(), cfg.model.roi_size,
                                     cfg.train.sw_batch_size, cfg.train.overlap, device=device, amp=cfg.train.amp)
        agg.update(probs.argmax(0).numpy(), item["label"][0].numpy().astype("uint8"))
    module.train()
    return agg.compute()


def train_task(task: TrainingTask, cfg: RunConfig, train_cases: list[CaseRecord], val_cases: list[CaseRecord],
               out_dir: str | Path, resume: bool = False, progress: bool = True,
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``task.model`` on ``train_cases``; keep the best weights by validation mean DSCagg (on a tie, the
    later step's).

    Returns:
        summary dict (steps, best_dsc, best_step, seconds).
    """
    out_dir = Path(out_dir)
    tc = cfg.train
    device = resolve_device(tc.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = init_distributed(device)
    try:
        return _train(task, cfg, train_cases, val_cases, out_dir, resume, progress, meta or {}, device, dist)
    finally:
        cleanup(dist)


def _train(task: TrainingTask, cfg: RunConfig, train_cases: list[CaseRecord], val_cases: list[CaseRecord],
           out_dir: Path, resume: bool, progress: bool, meta: dict[str, Any], device: torch.device,
           dist: DistInfo) -> dict[str, Any]:
    tc = cfg.train
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / CONFIG_FILE)
    barrier(dist)
    log = run_logger(out_dir, enabled=dist.is_main)
    for line in describe(task.modalities, cfg.preprocess) + task.describe:
        log.info(line)
    log.info(f"cases: {len(train_cases)} training, {len(val_cases)} validation; device {device}; "
             f"processes {dist.world_size}; amp {tc.amp}")

    pre = preprocessing(task.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True, label_indices=True)
    show = progress and dist.is_main
    train_ds = cached_dataset(case_dicts(train_cases, task.modalities, True), pre, cfg.data.cache_dir, show)
    val_ds = None
    if val_cases and dist.is_main:
        val_pre = preprocessing(task.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True)
        val_ds = cached_dataset(case_dicts(val_cases, task.modalities, True), val_pre, cfg.data.cache_dir, show)
    crops = SeededCrops(train_ds, training_augmentation(cfg.model.roi_size, tc.label_ratios, tc.samples_per_case))
    plan = EpochPlan(len(train_ds), tc.batch_size, tc.seed, dist.rank, dist.world_size)
    total = tc.epochs * plan.steps_per_epoch
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)

    model = task.model.to(device)
    module: nn.Module = model
    if dist.enabled:
        module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=task.find_unused_parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                                         / total)))
    scaler = torch.amp.GradScaler("cuda", enabled=tc.amp and device.type == "cuda")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=tc.dice_background, batch=tc.dice_batch)
    metrics = MetricsCSV(out_dir / "metrics.csv")
    step, best, best_step = 0, -1.0, -1
    if resume and (out_dir / "checkpoint.pt").is_file():
        state = load_state(out_dir)
        missing = set(trainable_state(model)) - set(state["model"])
        if missing:
            raise PemmaError(f"{out_dir / 'checkpoint.pt'}: checkpoint lacks {len(missing)} trained tensors "
                             f"(e.g. {sorted(missing)[0]}); it belongs to another model")
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, best, best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
        torch.set_rng_state(state["rng"])
        if dist.is_main:
            metrics.truncate(step)
        log.info(f"resumed at step {step} (best mean DSCagg {best:.4f} at step {best_step})")
    else:
        if dist.is_main:
            metrics.truncate(-1)
        torch.manual_seed(tc.seed + 1000 * dist.rank)
    log.info(f"training {total} steps ({plan.steps_per_epoch} per epoch, batch {tc.batch_size} x "
             f"{tc.samples_per_case} crops per process)")

    def checkpoint() -> None:
        if dist.is_main:
            save_state({"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                        "best": best, "best_step": best_step, "rng": torch.get_rng_state()}, out_dir)

    def end_of_validation(epoch: int, loss_value: float, started: float) -> None:
        nonlocal best, best_step
        row: dict[str, Any] = {"step": step, "epoch": epoch, "loss": f"{loss_value:.5f}",
                               "lr": f"{scheduler.get_last_lr()[0]:.3e}", "seconds": f"{time.time() - started:.1f}"}
        if val_ds is not None:
            scores = validate(task, model, val_ds, cfg, device)
            row.update({f"val_{k}": f"{v:.4f}" for k, v in scores.items()})
            mean = -1.0 if math.isnan(scores["mean"]) else scores["mean"]
            log.info(f"step {step} epoch {epoch}: loss {loss_value:.4f} validation DSCagg GTVp "
                     f"{scores['GTVp']:.3f} GTVn {scores['GTVn']:.3f} mean {scores['mean']:.3f}")
            if mean >= best:  # a tie keeps the later, longer-trained weights
                best, best_step = mean, step
                task.save(model, out_dir, {**meta, "step": step, "val_dsc": scores})
        metrics.append(row)

    started = time.time()
    model.train()
    bar = tqdm(total=total, initial=step, disable=not show, desc="train", unit="step", dynamic_ncols=True)
    loss_value = float("nan")
    while step < total:
        epoch, start_in_epoch = divmod(step, plan.steps_per_epoch)
        for visits in plan.batches(epoch, start_in_epoch):
            batch = list_data_collate([crops[v] for v in visits])
            image, label = batch["image"].as_tensor().to(device), batch["label"].as_tensor().to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, tc.amp):
                logits = task.forward(module, image, step)
                loss = loss_fn(logits.float(), label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}")
            bar.update(1)
            last_of_epoch = step % plan.steps_per_epoch == 0
            if dist.is_main and (step == total or (last_of_epoch and (epoch + 1) % tc.val_every == 0)):
                end_of_validation(epoch, loss_value, started)
            if step % tc.checkpoint_every == 0 or step == total:
                checkpoint()
            barrier(dist)
            if step >= total:
                break
    bar.close()
    if dist.is_main and best_step < 0:
        task.save(model, out_dir, {**meta, "step": step, "val_dsc": None})
        best_step = step
    barrier(dist)
    seconds = time.time() - started
    best_text = f"{best:.4f}" if best >= 0 else "n/a (no validation cases)"
    log.info(f"done: {step} steps in {seconds:.0f} s; best mean DSCagg {best_text} at step {best_step}")
    return {"steps": step, "best_dsc": best, "best_step": best_step, "seconds": seconds}
