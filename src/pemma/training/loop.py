"""Segmentation training shared by every method: seeded crops, DiceCE, sliding-window validation by DSCagg and
the best weights, on the :class:`~pemma.training.engine.Engine` (AdamW, cosine schedule, AMP, atomic checkpoints,
exact resume, DistributedDataParallel under torchrun)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate
from monai.losses import DiceCELoss
from torch import nn
from tqdm.auto import tqdm

from pemma.config import RunConfig, TrainConfig
from pemma.data.check import preflight
from pemma.data.dataset import EpochPlan, SeededCrops, cached_dataset, case_dicts, preprocessing_key
from pemma.data.layout import CaseRecord
from pemma.data.registration import registrable
from pemma.data.registration_record import REGISTRATION_FILE, record_registration, registration_by_modality
from pemma.data.transforms import describe, preprocessing, training_augmentation
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.runs import CONFIG_FILE, MODEL_META, final_path, write_meta
from pemma.runtime import METRIC_FIELDS, DistInfo, agree_on_failure, barrier, launched_processes, run_logger
from pemma.training.engine import Engine, StepFn, process_group, trainable_state
from pemma.training.resume_settings import (
    PROCESSES_SETTING,
    RECORD_KEY,
    RESUME_REFUSALS,
    RESUME_SETTINGS,
    check_resume_settings,
    config_settings,
    refuse_other_settings,
)
from pemma.training.validation import set_score_key, validate, validated_text

__all__ = ["PROCESSES_SETTING", "RECORD_KEY", "RESUME_REFUSALS", "RESUME_SETTINGS", "SegmentationTraining",
           "TrainingTask", "check_resume_settings", "config_settings", "dice_ce_loss", "refuse_other_settings",
           "segmentation_engine", "segmentation_step", "train_task", "trainable_state", "validate", "validated_text"]

ForwardFn = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]


@dataclass
class TrainingTask:
    """What a method trains and how it is called; the loop itself is method-agnostic.

    Args:
        model: the module to train (parameters with ``requires_grad`` are optimised).
        modalities: channels loaded from the data, in [CT, PET] order.
        forward: ``(module, image, step) -> logits`` for a training batch (may drop modalities per step).
        predictor: ``(module, input set) -> (window of that set's channels -> logits)``, used for validation.
        save: ``(module, run_dir, meta)`` writes the final artifacts (called for the best weights).
        describe: extra lines for the run log (trainable parameters, adapters).
        find_unused_parameters: DDP flag, True when some steps skip part of the model.
        settings: ``{label: value}`` of what else determines the trained weights besides the run config (method,
            adapter settings, the base / parent run by weights checksum): recorded in the checkpoint, and a
            ``--resume`` with other values is refused (:func:`check_resume_settings`).
        validation_sets: the input sets validated (subsets of ``modalities``), each scored alone; the best weights
            are kept on their averaged mean DSCagg. Default (empty): ``modalities`` together.
    """

    model: nn.Module
    modalities: list[str]
    forward: ForwardFn
    predictor: Callable[[nn.Module, tuple[str, ...]], Callable[[torch.Tensor], torch.Tensor]]
    save: Callable[[nn.Module, Path, dict[str, Any]], None]
    describe: list[str]
    find_unused_parameters: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    validation_sets: tuple[tuple[str, ...], ...] = ()

    def validated_sets(self) -> tuple[tuple[str, ...], ...]:
        """The input sets validation scores (:attr:`validation_sets`, or every modality together)."""
        return self.validation_sets or (tuple(self.modalities),)


def mark_complete(run_dir: Path) -> None:
    """Record in the run's ``model.json`` (written with the best weights during training) that training ended, and
    the checksum of the ``config.yaml`` this command wrote: a ``--resume`` rewrites it (settings free to change on a
    resume, such as ``val_every``, may differ), and a finished run resumed (nothing left to train) kept its old
    checksum beside the new file, so the run no longer loaded ("config.yaml: changed after the run was written")."""
    path = run_dir / MODEL_META
    if path.is_file():
        meta = json.loads(path.read_text())
        config = run_dir / CONFIG_FILE
        stale = config.is_file() and meta.get("config_sha256") != sha256_file(config)
        if meta.get("complete") is False or stale:
            write_meta(run_dir, {**meta, "complete": True} if meta.get("complete") is False else meta)


def best_dsc_text(best: float) -> str:
    """A run summary's ``best_dsc`` for people: 4 decimals, or "n/a (no validation score)" for the -1 that a run
    records without validation cases (or whose validations never gave a defined mean)."""
    return f"{best:.4f}" if best >= 0 else "n/a (no validation score)"


def resumed_text(step: int, best: float, best_step: int) -> str:
    """The log line of a resumed run: its step and best validation score so far, or that no validation has run
    yet (the checkpoint records ``best_step`` -1 then)."""
    if best_step < 0:
        return f"resumed at step {step} (no validation score yet)"
    return f"resumed at step {step} (best mean DSCagg {best_dsc_text(best)} at step {best_step})"


def dice_ce_loss(tc: TrainConfig) -> DiceCELoss:
    """The segmentation loss: Dice + cross-entropy on softmax logits, Dice flags from the config."""
    weight = None if tc.class_weights is None else torch.tensor([float(w) for w in tc.class_weights])
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=tc.dice_background, batch=tc.dice_batch,
                      weight=weight)


def segmentation_engine(task: TrainingTask, tc: TrainConfig, total: int, device: torch.device,
                        dist: DistInfo | None = None) -> Engine:
    """The engine for ``task``: AdamW over its trainable parameters with ``tc``'s settings, cosine over ``total``."""
    return Engine(task.model, total, tc.lr, device, weight_decay=tc.weight_decay, dist=dist, amp=tc.amp,
                  find_unused_parameters=task.find_unused_parameters)


def segmentation_step(task: TrainingTask, loss_fn: nn.Module, image: torch.Tensor, label: torch.Tensor,
                      step: int) -> StepFn:
    """The closure of one :meth:`Engine.step`: ``task.forward`` (which may draw the inputs from ``step``), then
    ``loss_fn`` on the float logits."""
    def compute(module: nn.Module) -> torch.Tensor:
        return loss_fn(task.forward(module, image, step).float(), label)
    return compute


def train_task(task: TrainingTask, cfg: RunConfig, train_cases: list[CaseRecord], val_cases: list[CaseRecord],
               out_dir: str | Path, resume: bool = False, progress: bool = True,
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``task.model`` on ``train_cases``; keep the best weights by validation mean DSCagg (on a tie, the
    later step's).

    Returns:
        summary dict (steps, best_dsc, best_step, seconds).
    """
    meta = dict(meta or {})
    # the number of processes decides the epochs and the crops of every step (each takes every N-th visit), so it is
    # a setting of the weights like the batch size: recorded in the checkpoint, and a --resume on another is refused
    processes = launched_processes()
    task = dataclasses.replace(task, settings={**task.settings, PROCESSES_SETTING: processes})
    meta["processes"] = processes
    checkpoint = check_resume_settings(Path(out_dir), cfg, task.settings) if resume else None
    good, report = preflight([*train_cases, *val_cases], task.modalities, cfg.data.exclude_bad_cases,
                             source=cfg.data.root)
    if not report.ok:  # --exclude-bad-cases: leave them out, and say so in the run
        kept = {c.case_id for c in good}
        train_cases = [c for c in train_cases if c.case_id in kept]
        val_cases = [c for c in val_cases if c.case_id in kept]
        meta["excluded_cases"] = report.problems
        if "train_cases" in meta:
            meta.update(train_cases=[c.case_id for c in train_cases], val_cases=[c.case_id for c in val_cases])
        if not train_cases:
            raise PemmaError(f"{cfg.data.root}: every training case is bad ({report.summary()})")
    with process_group(cfg.train.device) as (device, dist):
        training = SegmentationTraining(task, cfg, Path(out_dir), progress, meta, device, dist, checkpoint)
        del checkpoint  # restored once by the engine, not held for the whole run
        summary = training.run(train_cases, val_cases, resume)
        del training  # its engine (a DDP reducer under torchrun) is freed before process_group leaves the group
    return summary


class SegmentationTraining:
    """One segmentation run on the :class:`~pemma.training.engine.Engine`: seeded crops of the training cases,
    DiceCE, validation by DSCagg every ``val_every`` epochs, the best weights saved through ``task.save``.

    Args:
        task: what trains and how it is called.
        cfg: the run configuration (``train`` section: optimisation, sampling, validation, checkpoints).
        out_dir: the run folder. progress: show progress bars (main process). meta: extra ``model.json`` entries.
        device, dist: where this process runs and the process group.
        checkpoint: ``out_dir``'s checkpoint when already read (:func:`check_resume_settings`), restored on
            ``resume`` instead of reading it again.
    """

    def __init__(self, task: TrainingTask, cfg: RunConfig, out_dir: Path, progress: bool, meta: dict[str, Any],
                 device: torch.device, dist: DistInfo, checkpoint: dict[str, Any] | None = None) -> None:
        self.task, self.cfg, self.out_dir, self.meta, self.device, self.dist = task, cfg, out_dir, meta, device, dist
        self.checkpoint = checkpoint
        self.show = progress and dist.is_main
        self.best, self.best_step = -1.0, -1
        self.val_ds: Any = None
        self.total = 0

    def run(self, train_cases: list[CaseRecord], val_cases: list[CaseRecord], resume: bool) -> dict[str, Any]:
        tc, dist = self.cfg.train, self.dist
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out_dir / CONFIG_FILE)
        barrier(dist)
        self.log = log = run_logger(self.out_dir, enabled=dist.is_main)
        for line in describe(self.task.modalities, self.cfg.preprocess) + self.task.describe:
            log.info(line)
        sets = self.task.validated_sets()
        if len(sets) > 1:
            log.info(f"validation: each input set alone ({', '.join('+'.join(s) for s in sets)}); the best weights "
                     "by their averaged mean DSCagg")
        log.info(f"cases: {len(train_cases)} training, {len(val_cases)} validation; device {self.device}; "
                 f"processes {dist.world_size}; amp {tc.amp}")
        # a case only one process reads (validation: rank 0) must fail every process with the same one line
        crops, plan = agree_on_failure(dist, lambda: self._data(train_cases, val_cases))
        if dist.is_main:  # registration.json (the preprocessing cached the transforms): QC per case
            record = record_registration(self.out_dir, train_cases + val_cases, self.task.modalities,
                                         self.cfg.preprocess)
            for modality, block in registration_by_modality(record or {}).items():
                log.info(f"registration QC, mean body Dice {modality.upper()}-CT: "
                         f"{block['mean_body_dice']['before']:.3f} on the header geometry, "
                         f"{block['mean_body_dice']['after']:.3f} registered ({REGISTRATION_FILE})")
        total = tc.epochs * plan.steps_per_epoch
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        self.total = total
        self.engine = engine = segmentation_engine(self.task, tc, total, self.device, dist)
        self.loss_fn = dice_ce_loss(tc)
        checkpoint, self.checkpoint = self.checkpoint, None
        sets = self.task.validated_sets()
        per_set = [f"val_{set_score_key(s)}" for s in sets] if len(sets) > 1 else []
        fields = [f for f in METRIC_FIELDS if f != "seconds"] + per_set + ["seconds"]
        extra = engine.begin(self.out_dir, resume, tc.seed, metric_fields=fields, checkpoint=checkpoint)
        del checkpoint
        if extra is not None:
            self.best, self.best_step = float(extra["best"]), int(extra["best_step"])
            log.info(resumed_text(engine.step_count, self.best, self.best_step))
        log.info(f"training {total} steps ({plan.steps_per_epoch} per epoch, batch {tc.batch_size} x "
                 f"{tc.samples_per_case} crops per process)")
        self.started = time.time()
        self._train_steps(crops, plan, total)
        return self._finish()

    def _data(self, train_cases: list[CaseRecord], val_cases: list[CaseRecord]) -> tuple[SeededCrops, EpochPlan]:
        """Cached training crops and this process's epoch plan; the validation set (main process)."""
        task, cfg, tc = self.task, self.cfg, self.cfg.train
        pre = preprocessing(task.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True, label_indices=True)
        key = {"modalities": list(task.modalities), "preprocess": cfg.to_dict()["preprocess"],  # as config.yaml
               "roi_size": list(cfg.model.roi_size)}
        moved = registrable(task.modalities, cfg.preprocess) if cfg.preprocess.register != "none" else []
        if set(moved) - {"pet"}:  # MR... registered: not a cache written when only the PET was (PET keys as before)
            key["registered"] = moved
        share = cfg.data.memory_cache_share
        train_ds = cached_dataset(case_dicts(train_cases, task.modalities, True), pre, cfg.data.cache_dir, self.show,
                                  memory_share=share, cache_key=preprocessing_key(**key, label_indices=True))
        if val_cases and self.dist.is_main:
            val_pre = preprocessing(task.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True)
            self.val_ds = cached_dataset(case_dicts(val_cases, task.modalities, True), val_pre, cfg.data.cache_dir,
                                         self.show, memory_share=share,
                                         cache_key=preprocessing_key(**key, label_indices=False))
        crops = SeededCrops(train_ds, training_augmentation(cfg.model.roi_size, tc.label_ratios, tc.samples_per_case))
        return crops, EpochPlan(len(train_ds), tc.batch_size, tc.seed, self.dist.rank, self.dist.world_size)

    def _train_steps(self, crops: SeededCrops, plan: EpochPlan, total: int) -> None:
        engine, tc, dist = self.engine, self.cfg.train, self.dist
        engine.model.train()
        bar = tqdm(total=total, initial=engine.step_count, disable=not self.show, desc="train", unit="step",
                   dynamic_ncols=True)
        while engine.step_count < total:
            epoch, start_in_epoch = divmod(engine.step_count, plan.steps_per_epoch)
            for visits in plan.batches(epoch, start_in_epoch):
                batch = list_data_collate([crops[v] for v in visits])
                image = batch["image"].as_tensor().to(self.device)
                label = batch["label"].as_tensor().to(self.device)
                loss_value = engine.step(segmentation_step(self.task, self.loss_fn, image, label, engine.step_count))
                bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}")
                bar.update(1)
                step = engine.step_count
                last_of_epoch = step % plan.steps_per_epoch == 0
                if dist.is_main and (step == total or (last_of_epoch and (epoch + 1) % tc.val_every == 0)):
                    self.validate_and_log(epoch, loss_value)
                if step % tc.checkpoint_every == 0 or step == total:
                    engine.save(self.out_dir, best=self.best, best_step=self.best_step,
                                **{RECORD_KEY: self.task.settings})
                barrier(dist)
                if step >= total:
                    break
        bar.close()

    def validate_and_log(self, epoch: int, loss_value: float) -> None:
        """Metrics row of this step; with validation cases, DSCagg and the best weights so far."""
        step = self.engine.step_count
        row: dict[str, Any] = {"step": step, "epoch": epoch, "loss": f"{loss_value:.5f}",
                               "lr": f"{self.engine.lr:.3e}", "seconds": f"{time.time() - self.started:.1f}"}
        if self.val_ds is not None:
            scores = validate(self.task, self.engine.model, self.val_ds, self.cfg, self.device)
            row.update({f"val_{k}": f"{v:.4f}" for k, v in scores.items()})
            mean = -1.0 if math.isnan(scores["mean"]) else scores["mean"]
            sets = self.task.validated_sets()
            each = "" if len(sets) == 1 else " (averaged over " + ", ".join(
                f"{'+'.join(s)} {scores[set_score_key(s)]:.3f}" for s in sets) + ")"
            self.log.info(f"step {step} epoch {epoch}: loss {loss_value:.4f} validation DSCagg GTVp "
                          f"{scores['GTVp']:.3f} GTVn {scores['GTVn']:.3f} mean {scores['mean']:.3f}{each}")
            if mean >= self.best:  # a tie keeps the later, longer-trained weights
                self.best, self.best_step = mean, step
                # the best weights so far; "complete" becomes true when the training ends (a run stopped before
                # then is interrupted, not finished: pemma.runs.interrupted_meta)
                self.task.save(self.engine.model, self.out_dir, {**self.meta, "step": step, "val_dsc": scores,
                                                                 "complete": False, "total_steps": self.total})
        self.engine.log_metrics(row)

    def _finish(self) -> dict[str, Any]:
        """Without validation cases the final weights are saved; the summary."""
        step = self.engine.step_count
        if self.dist.is_main and self.best_step < 0:
            self.task.save(self.engine.model, self.out_dir, {**self.meta, "step": step, "val_dsc": None,
                                                             "complete": True, "total_steps": self.total})
            self.best_step = step
        elif self.dist.is_main:
            mark_complete(self.out_dir)
        figure = self.engine.finish()
        if figure is not None:  # named where they will be (a --force run is written beside the run it replaces)
            final = final_path(self.out_dir)
            self.log.info(f"training curves: {final / Path(figure).name}; TensorBoard: tensorboard --logdir {final}")
        barrier(self.dist)
        seconds = time.time() - self.started
        self.log.info(f"done: {step} steps in {seconds:.0f} s; best mean DSCagg {best_dsc_text(self.best)} "
                      f"at step {self.best_step}")
        return {"steps": step, "best_dsc": self.best, "best_step": self.best_step, "seconds": seconds,
                "validated": validated_text(self.task.validated_sets())}
