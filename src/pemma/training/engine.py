"""The training engine every pemma training uses: the optimiser step, AdamW, the cosine schedule, AMP,
DistributedDataParallel and resumable checkpoints.

It knows nothing about segmentation or survival: a caller hands it a model and, for every step, a closure
``module -> loss`` (the module is the DDP wrapper under torchrun); the caller owns its data, validation and
what "best" means, and keeps any state of its own in the checkpoint's ``extra`` entries.

Example:
    >>> engine = Engine(model, total_steps=100, lr=1e-3, device=torch.device("cpu"))
    >>> engine.seed(0)
    >>> while engine.step_count < engine.total_steps:
    ...     loss = engine.step(lambda module: loss_fn(module(image), label))
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pemma.errors import PemmaError
from pemma.inference.sliding import autocast
from pemma.runs import STATE_FILE, load_state, save_state
from pemma.runtime import (
    METRIC_FIELDS,
    DistInfo,
    MetricsCSV,
    barrier,
    cleanup,
    init_distributed,
    mean_over_processes,
    native_bf16_cpu,
    resolve_device,
)
from pemma.training.curves import CURVES_FILE, TensorBoardLog, plot_training_curves
from pemma.training.precision import guard_small_convolutions

#: what a step closure returns: the objective to minimise, or (objective, the value to report)
Loss = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
StepFn = Callable[[nn.Module], Loss]
#: checkpoint entries the engine writes itself; everything else in a checkpoint is the caller's ``extra``
ENGINE_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "rng")
#: consecutive optimiser steps with non-finite gradients (each skipped, the weights kept) after which training
#: stops as diverged; one such step can be a transient, several in a row are a learning rate or precision problem
#: (a kernel defect made them too: bf16 Swin UNETR on the CPU, see pemma.training.precision)
MAX_NONFINITE_STEPS = 5

log = logging.getLogger("pemma.run")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus all buffers: what a resumable checkpoint must hold (frozen weights are
    rebuilt from their source)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}


def cosine_factor(total: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: ``0.5 (1 + cos(pi min(s, total) / total))``, from 1 down to 0."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over ``total`` steps (closed form, so a resumed schedule gives the same values)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(total))


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[tuple[torch.device, DistInfo]]:
    """This process's device (``cuda:<LOCAL_RANK>`` under torchrun) and the process group it joins when
    launched by torchrun (single process otherwise); the group is left on exit.

    On a normal exit every process first collects what the body freed (a DDP reducer in a reference cycle) and waits
    for the others: a DDP model freed after the group is left made gloo's destructor wait for a worker thread that
    waited for the GIL, and a two-process test never exited (tests/test_engine.py). The body should drop its
    engine before it ends (:func:`pemma.training.loop.train_task` does). On an exception the locals of the calls that
    failed (the traceback's frames) are cleared and collected before the group is left, without waiting for the
    others (they may be gone: torchrun stops them)."""
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    dist = init_distributed(device)
    try:
        yield device, dist
        if dist.enabled:
            gc.collect()
            barrier(dist)
    except BaseException as exc:
        if dist.enabled:  # the failed calls' locals (a DDP model) go before the group, not with the traceback later
            traceback.clear_frames(exc.__traceback__)
            gc.collect()
        raise
    finally:
        cleanup(dist)


def param_groups(model: nn.Module, lr: float, lr_scales: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the parameters with ``requires_grad``: first those matching no prefix of
    ``lr_scales`` (at ``lr``), then one group per prefix that has parameters (at ``lr * scale``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise PemmaError("nothing to train (no trainable parameter)")
    scales = dict(lr_scales or {})
    groups = [{"params": [p for n, p in named if not any(n.startswith(k) for k in scales)], "lr": lr}]
    for prefix, scale in scales.items():
        params = [p for n, p in named if n.startswith(prefix)]
        if params:
            groups.append({"params": params, "lr": lr * scale})
    return [g for g in groups if g["params"]]


class Engine:
    """Owns the model on its device, its DDP wrapper, AdamW, the cosine schedule, the GradScaler and the step
    counter; saves and restores all of them.

    Args:
        model: the module to train; parameters with ``requires_grad`` are optimised.
        total_steps: length of the cosine schedule (the caller's loop stops there).
        lr, weight_decay: AdamW settings.
        device: where the model runs.
        dist: the process group (:func:`pemma.runtime.init_distributed`); DDP wraps the model
            when it has more than one process and ``ddp`` is True.
        amp: fp16 autocast + GradScaler on CUDA, bf16 autocast on the CPU.
        lr_scales: ``{parameter-name prefix: factor}`` for groups learning at ``lr * factor``.
        clip_norm: clip the gradient norm of the trainable parameters to this value (None: no clipping).
        find_unused_parameters: DDP flag, True when some steps skip part of the model.
        ddp: False keeps the model unwrapped even under torchrun (each process then trains its own copy).
        max_nonfinite_steps: a step whose gradients hold a NaN or an infinity is skipped (weights and optimiser
            state unchanged, the schedule moves on, as CUDA's GradScaler does for fp16 overflows); this many in a
            row raise :class:`PemmaError` (default :data:`MAX_NONFINITE_STEPS`). On CUDA with ``amp`` the
            GradScaler decides instead (it skips overflowing steps and lowers its scale).
    """

    def __init__(self, model: nn.Module, total_steps: int, lr: float, device: torch.device, *,
                 weight_decay: float = 0.0, dist: DistInfo | None = None, amp: bool = False,
                 lr_scales: Mapping[str, float] | None = None, clip_norm: float | None = None,
                 find_unused_parameters: bool = False, ddp: bool = True,
                 max_nonfinite_steps: int = MAX_NONFINITE_STEPS) -> None:
        if total_steps < 1:
            raise PemmaError(f"total_steps must be >= 1, got {total_steps}")
        if max_nonfinite_steps < 1:
            raise PemmaError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.skipped_steps = 0  # steps skipped for non-finite gradients (this process's run, not checkpointed)
        self._nonfinite_in_a_row = 0
        self.dist = dist or DistInfo()
        self.device, self.amp, self.clip_norm, self.total_steps = device, amp, clip_norm, total_steps
        if amp and device.type == "cpu" and not native_bf16_cpu():
            warnings.warn("amp on a CPU without native bf16 (AMX / AVX512-BF16): bf16 autocast is emulated and far "
                          "slower than fp32 here; leave amp off on this machine", stacklevel=2)
        if amp and device.type == "cpu":  # a oneDNN bf16 weight-gradient defect (pemma.training.precision)
            guard_small_convolutions(model)
        self.model = model.to(device)
        self.module: nn.Module = self.model
        if self.dist.enabled and ddp:
            self.module = DistributedDataParallel(self.model,
                                                  device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=find_unused_parameters)
        groups = param_groups(self.model, lr, lr_scales)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # model order (clipping's sum)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
        self.step_count = 0
        self.metrics: MetricsCSV | None = None
        self.events: TensorBoardLog | None = None

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return self.scheduler.get_last_lr()[0]

    def seed(self, seed: int) -> None:
        """Seed torch's generator for a fresh run (each process differently: ``seed + 1000 * rank``)."""
        torch.manual_seed(seed + 1000 * self.dist.rank)

    def step(self, *micro_batches: StepFn) -> float:
        """One optimiser step: zero the gradients, run every closure under autocast and backpropagate its
        objective (divided by their number: gradient accumulation), clip, step the optimiser through the
        GradScaler, step the schedule.

        Returns:
            the reported loss (the objective unless the closure returns ``(objective, reported)``), averaged
            over the micro-batches and, under DDP, over the processes (each its own batch; before, the main
            process logged its own batch's loss alone).
        """
        if not micro_batches:
            raise ValueError("step needs at least one closure")
        self.optimizer.zero_grad(set_to_none=True)
        n, reported = len(micro_batches), 0.0
        for i, compute in enumerate(micro_batches):
            accumulate = i < n - 1 and isinstance(self.module, DistributedDataParallel)
            with self.module.no_sync() if accumulate else contextlib.nullcontext():  # type: ignore[operator]
                with autocast(self.device, self.amp):
                    out = compute(self.module)
                    objective, shown = out if isinstance(out, tuple) else (out, out)
                    if n > 1:
                        objective = objective / n
                self.scaler.scale(objective).backward()
            reported += float(shown.detach())
        loss = reported / n
        if isinstance(self.module, DistributedDataParallel):  # the step's loss, as its gradient: every batch's mean
            loss = mean_over_processes(loss, self.dist, self.device)
        if self.scaler.is_enabled():
            if self.clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
            self.scaler.step(self.optimizer)  # skips the update itself when the scaled gradients overflowed
            self.scaler.update()
        else:  # the norm is the same on every DDP rank (the gradients are all-reduced), and so is the decision
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            if bool(torch.isfinite(norm)):
                self._nonfinite_in_a_row = 0
                if self.clip_norm is not None:  # what clip_grad_norm_ does, with the norm already at hand
                    torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_norm, norm)
                self.optimizer.step()
            else:
                self._skip_nonfinite(loss)
        lr = self.lr
        self.scheduler.step()
        self.step_count += 1
        if self.events is not None:
            self.events.step(self.step_count, loss, lr)
        return loss

    def _skip_nonfinite(self, loss: float) -> None:
        """Leave the weights and the optimiser as they are for this step; stop after too many in a row."""
        grads = [(name, p.grad) for name, p in self.model.named_parameters() if p.grad is not None]
        bad = [name for name, g in grads if not bool(torch.isfinite(g).all())]
        if bad:
            where = f"{len(bad)} tensors: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}"
        else:  # every entry finite, their norm is not: entries beyond ~1e19 square past float32's range
            name, largest = max(((n, float(g.abs().max())) for n, g in grads), key=lambda t: t[1], default=("", 0.0))
            where = f"finite, but the norm overflows: largest |grad| {largest:.3g} in {name}"
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        step = self.step_count + 1
        log.warning(f"step {step}: non-finite gradients (loss {loss:.4g}; {where}); step skipped, weights unchanged")
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            first = step - self._nonfinite_in_a_row + 1
            raise PemmaError(f"training diverged: non-finite gradients on {self._nonfinite_in_a_row} steps in a row "
                             f"(steps {first}-{step}, loss {loss:.4g}); lower the learning rate (--lr)"
                             + (" or train without --amp" if self.amp else ""))

    # ---- checkpoints

    def state_dict(self, **extra: Any) -> dict[str, Any]:
        """Trainable tensors and buffers, optimiser, schedule, scaler, step, torch RNG and ``extra``."""
        clash = sorted(set(extra) & set(ENGINE_KEYS))
        if clash:
            raise ValueError(f"extra checkpoint entries {clash} clash with the engine's own")
        return {"model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step_count, **extra, "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
        """Restore what :meth:`state_dict` saved; return the ``extra`` entries."""
        missing = set(trainable_state(self.model)) - set(state["model"])
        if missing:
            raise PemmaError(f"{source}: checkpoint lacks {len(missing)} trained tensors "
                             f"(e.g. {sorted(missing)[0]}); it belongs to another model")
        try:
            self.model.load_state_dict(state["model"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise PemmaError(f"{source}: checkpoint does not fit this model and settings "
                             f"({str(exc).splitlines()[0][:200]}); resume with the settings it was written with, "
                             f"or start a new run") from None
        self.step_count = int(state["step"])
        torch.set_rng_state(state["rng"])
        return {k: v for k, v in state.items() if k not in ENGINE_KEYS}

    def save(self, run_dir: Path, **extra: Any) -> None:
        """Write ``checkpoint.pt`` atomically (main process only)."""
        if self.dist.is_main:
            save_state(self.state_dict(**extra), run_dir)

    def begin(self, run_dir: Path, resume: bool, seed: int, metric_fields: Sequence[str] = METRIC_FIELDS,
              checkpoint: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Start or continue the run in ``run_dir``: with ``resume`` and a checkpoint there, restore it and
        drop ``metrics.csv`` rows (and TensorBoard events) after its step; else seed (:meth:`seed`) and empty
        ``metrics.csv``. The main process writes TensorBoard event files beside ``metrics.csv`` (the loss and learning
        rate of every step, each :meth:`log_metrics` row) until :meth:`finish`. ``checkpoint``: the content of
        ``run_dir``'s checkpoint when the caller has read it already (restored instead of reading the file again).

        Returns:
            the checkpoint's ``extra`` entries, or None for a fresh start.
        """
        self.metrics = MetricsCSV(Path(run_dir) / "metrics.csv", metric_fields)
        extra = self.resume(run_dir, checkpoint) if resume else None
        if extra is None:
            self.seed(seed)
        if self.dist.is_main:
            self.metrics.truncate(-1 if extra is None else self.step_count)
            self.events = TensorBoardLog(Path(run_dir), purge_step=None if extra is None else self.step_count + 1)
        return extra

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append a row to ``metrics.csv`` (main process only; after :meth:`begin`)."""
        if self.dist.is_main and self.metrics is not None:
            self.metrics.append(row)
        if self.events is not None:
            self.events.metrics(row)

    def finish(self, title: str | None = None) -> Path | None:
        """Close the TensorBoard events and plot ``metrics.csv`` into ``training_curves.png`` beside it (main
        process; after :meth:`begin`).

        Returns:
            the figure written, or None (another process, or nothing logged).
        """
        if self.events is not None:
            self.events.close()
            self.events = None
        if not self.dist.is_main or self.metrics is None:
            return None
        return plot_training_curves(self.metrics.path, self.metrics.path.parent / CURVES_FILE, title)

    def resume(self, run_dir: Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Restore ``run_dir/checkpoint.pt`` if there is one (``checkpoint``: its content, already read); return its
        ``extra`` entries (None: no checkpoint)."""
        path = Path(run_dir) / STATE_FILE
        if checkpoint is None:
            if not path.is_file():
                return None
            checkpoint = load_state(run_dir)
        return self.load_state_dict(checkpoint, str(path))
