"""Benchmark pemma's training step and sliding-window inference against plain MONAI.

For each preset (``tiny``, ``paper``) x backbone (``unetr``, ``swin_unetr``), in one process:

1. **Training step** (seconds per step, median over ``--repeats`` after one warm-up step each).
   *pemma*: the model from :func:`pemma.training.segmentation.backbone_task` trained by the training engine
   itself (:func:`pemma.training.loop.segmentation_engine` and :meth:`pemma.training.engine.Engine.step` on
   :func:`pemma.training.loop.segmentation_step`: ``zero_grad``, pemma's ``autocast``, ``task.forward``, the
   config's ``DiceCELoss`` (``dice_batch`` / ``dice_background``) on ``logits.float()``, ``GradScaler``
   scale/step/update, AdamW, cosine ``LambdaLR``, ``float(loss)``).
   *plain*: ``monai.networks.nets.UNETR`` / ``SwinUNETR`` constructed directly with the same keyword arguments
   (and the same seed, so the same initial weights), ``DiceCELoss`` with the config's flags, ``torch.optim.AdamW``
   and the same cosine
   schedule, written with torch/MONAI calls only.
   Both train on the same fixed batch: the preset's ``batch_size`` crops, a random image ``(B, 1, *roi)`` and
   random labels in ``{0, 1, 2}``. Since weights, data and optimiser match, the per-step losses of the two
   should agree to rounding; their largest relative difference is reported as a sanity check.
2. **Sliding-window inference** (voxels per second, median): a random volume of ``--volume-scale`` x roi per
   axis (default 1.5). *pemma*: :func:`pemma.inference.sliding.sliding_window_probs`. *plain*:
   ``monai.inferers.sliding_window_inference`` + softmax with the same roi, overlap, ``sw_batch_size``,
   blending mode (gaussian) and devices (windows on ``--device``, stitching on the CPU).
3. **Peak memory** of every measured step / inference call, as the growth above what was resident when
   the call started (weights, optimiser state and the other implementation's model stay resident and are
   not counted; activations, gradients and temporaries are). On CUDA: ``torch.cuda.max_memory_allocated``
   after ``reset_peak_memory_stats``, minus ``memory_allocated`` at the start. On the CPU: ``VmHWM`` from
   ``/proc/self/status`` after resetting it (writing ``5`` to ``/proc/self/clear_refs``, following
   ``gc.collect()`` and glibc ``malloc_trim(0)``), minus ``VmRSS`` at the start. Where the reset does not
   work (checked at start-up) a background thread samples ``VmRSS`` every 2 ms instead, and the output says
   so. The JSON also holds the absolute peaks.

pemma and plain run alternately (warm-up plain then pemma; then ABBA order: plain, pemma, pemma, plain, ...)
so that a noisy machine affects both alike. Ratios are pemma / plain (train time, throughput).

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_backbones.py                       # tiny + paper, both backbones
    .venv/bin/python benchmarks/bench_backbones.py --presets tiny --repeats 5 --json tiny.json
    .venv/bin/python benchmarks/bench_backbones.py --presets paper --repeats 1 --backbones unetr
    .venv/bin/python benchmarks/bench_backbones.py --device cuda --amp

Default repeats: on the CPU 5 for ``tiny`` and 2 for ``paper`` (a paper step takes 10-60 s on 2 cores);
on CUDA 20 and 10. On a CPU shared with other jobs pass ``--threads 1``: with more torch threads than free
cores, OpenMP threads wait on each other and single steps vary 2-10x, which swamps the pemma/plain ratio.
Besides the medians, the best-of (minimum time) ratios are printed under the table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn

from pemma.config import RunConfig, build_config, preset_dict
from pemma.errors import PemmaError
from pemma.inference.sliding import sliding_window_probs
from pemma.models.accounting import count_parameters
from pemma.training.loop import TrainingTask, dice_ce_loss, segmentation_engine, segmentation_step
from pemma.training.segmentation import backbone_task
from pemma.vocab import BACKBONES

MB = 1024.0 * 1024.0
IMPLS = ("plain", "pemma")

# ----------------------------------------------------------------------------------------------------------------
# memory probes


def _proc_status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc) so that RSS at the start is what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_reset_works() -> bool:
    """Whether writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` (checked with a 64 MiB block)."""
    try:
        _proc_status_kb("VmHWM")
    except OSError:
        return False
    block = b"\x01" * (64 * 1024 * 1024)
    high = _proc_status_kb("VmHWM")
    del block
    gc.collect()
    _malloc_trim()
    if not _reset_hwm():
        return False
    return _proc_status_kb("VmHWM") < high - 32 * 1024


@dataclass
class MemSample:
    """Peak memory of one measured call, in MiB."""

    growth_mb: float  # peak minus what was resident at the start
    peak_mb: float  # absolute peak (process RSS on the CPU, allocated tensors on CUDA)


class MemProbe:
    """Peak-memory measurement of a code section (see the module docstring for the method)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated minus memory_allocated at start"
            self.hwm = False
        else:
            self.hwm = hwm_reset_works()
            self.method = ("VmHWM after reset via /proc/self/clear_refs, minus VmRSS at start" if self.hwm else
                           "VmHWM reset NOT supported: VmRSS sampled every 2 ms, max minus VmRSS at start")

    @contextmanager
    def measure(self, out: list[MemSample]) -> Iterator[None]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            out.append(MemSample((peak - start) / MB, peak / MB))
            return
        _malloc_trim()
        if self.hwm:
            _reset_hwm()
            start = _proc_status_kb("VmRSS")
            yield
            peak = _proc_status_kb("VmHWM")
        else:
            start = _proc_status_kb("VmRSS")
            box = {"peak": start, "run": True}

            def sample() -> None:
                while box["run"]:
                    box["peak"] = max(box["peak"], _proc_status_kb("VmRSS"))
                    time.sleep(0.002)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                yield
            finally:
                box["run"] = False
                thread.join()
            peak = max(box["peak"], _proc_status_kb("VmRSS"))
        out.append(MemSample((peak - start) / 1024.0, peak / 1024.0))


# ----------------------------------------------------------------------------------------------------------------
# the two implementations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cosine(total: int) -> Callable[[int], float]:
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


class PemmaTrainer:
    """A task (default: :func:`backbone_task` of ``cfg``) on pemma's training engine, single process: the step of
    ``pemma train`` / ``adapt`` itself, loss flags from ``cfg.train``."""

    def __init__(self, cfg: RunConfig, device: torch.device, total_steps: int,
                 task: TrainingTask | None = None) -> None:
        self.task: TrainingTask = task if task is not None else backbone_task(cfg)
        self.engine = segmentation_engine(self.task, cfg.train, total_steps, device)
        self.model, self.optimizer = self.engine.model, self.engine.optimizer
        self.device, self.amp = device, cfg.train.amp
        self.loss_fn = dice_ce_loss(cfg.train)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        self.model.train()
        return self.engine.step(segmentation_step(self.task, self.loss_fn, image, label, self.engine.step_count))

    def infer(self, volume: torch.Tensor, roi: list[int], sw_batch_size: int, overlap: float) -> torch.Tensor:
        self.model.eval()
        predictor = self.task.predictor(self.model, tuple(self.task.modalities))
        return sliding_window_probs(predictor, volume, roi, sw_batch_size, overlap, device=self.device, amp=self.amp)


class PlainTrainer:
    """The same network built directly with MONAI, trained with a textbook torch loop."""

    def __init__(self, cfg: RunConfig, device: torch.device, total_steps: int) -> None:
        tc, mc = cfg.train, cfg.model
        in_channels = len(cfg.data.modalities)
        torch.manual_seed(tc.seed)  # same seed as backbone_task -> same initial weights
        kwargs = mc.backbone_kwargs
        if mc.backbone == "unetr":
            net: nn.Module = UNETR(in_channels=in_channels, out_channels=mc.out_channels, img_size=mc.roi_size,
                                   **kwargs)
        else:
            net = SwinUNETR(in_channels=in_channels, out_channels=mc.out_channels,
                            use_checkpoint=mc.gradient_checkpointing, **kwargs)
        self.model = net.to(device)
        self.device, self.amp = device, tc.amp
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _cosine(total_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=tc.amp and device.type == "cuda")
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=tc.dice_background,
                                  batch=tc.dice_batch)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.amp):
            loss = self.loss_fn(self.model(image).float(), label)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    @torch.no_grad()
    def infer(self, volume: torch.Tensor, roi: list[int], sw_batch_size: int, overlap: float) -> torch.Tensor:
        self.model.eval()
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.amp):
            logits = sliding_window_inference(volume, roi, sw_batch_size, self.model, overlap=overlap,
                                              mode="gaussian", sw_device=self.device, device=torch.device("cpu"))
        return torch.softmax(logits.float(), dim=1)[0]


# ----------------------------------------------------------------------------------------------------------------
# measurement


@dataclass
class Result:
    """Numbers for one preset x backbone."""

    preset: str
    backbone: str
    params: int
    roi: list[int]
    batch_size: int
    volume: list[int]
    repeats: int
    train_s: dict[str, list[float]] = field(default_factory=dict)
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    train_mem: dict[str, list[MemSample]] = field(default_factory=dict)
    infer_s: dict[str, list[float]] = field(default_factory=dict)
    infer_mem: dict[str, list[MemSample]] = field(default_factory=dict)
    loss_max_rel_diff: float = float("nan")
    probs_max_abs_diff: float = float("nan")

    def median(self, table: dict[str, list[float]], impl: str) -> float:
        return statistics.median(table[impl]) if table.get(impl) else float("nan")

    def train_median(self, impl: str) -> float:
        return self.median(self.train_s, impl)

    def infer_mvox(self, impl: str) -> float:
        return math.prod(self.volume) / self.median(self.infer_s, impl) / 1e6

    @staticmethod
    def peak(samples: list[MemSample], absolute: bool = False) -> float:
        return max((s.peak_mb if absolute else s.growth_mb) for s in samples) if samples else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items()}
        for impl in IMPLS:
            out[f"train_s_median_{impl}"] = self.train_median(impl)
            out[f"infer_mvox_s_{impl}"] = self.infer_mvox(impl)
            out[f"train_peak_growth_mb_{impl}"] = self.peak(self.train_mem[impl])
            out[f"train_peak_abs_mb_{impl}"] = self.peak(self.train_mem[impl], absolute=True)
            out[f"infer_peak_growth_mb_{impl}"] = self.peak(self.infer_mem[impl])
            out[f"infer_peak_abs_mb_{impl}"] = self.peak(self.infer_mem[impl], absolute=True)
            out[f"train_s_min_{impl}"] = min(self.train_s[impl])
            out[f"infer_mvox_s_best_{impl}"] = math.prod(self.volume) / min(self.infer_s[impl]) / 1e6
        out["train_ratio"] = self.train_median("pemma") / self.train_median("plain")
        out["infer_ratio"] = self.infer_mvox("pemma") / self.infer_mvox("plain")
        # best-of ratios: less sensitive to bursts of load from other processes than the medians
        out["train_ratio_min"] = out["train_s_min_pemma"] / out["train_s_min_plain"]
        out["infer_ratio_best"] = out["infer_mvox_s_best_pemma"] / out["infer_mvox_s_best_plain"]
        return out


def _order(rep: int) -> tuple[str, str]:
    """ABBA interleaving: plain first on even repeats, pemma first on odd ones."""
    return IMPLS if rep % 2 == 0 else IMPLS[::-1]


def bench_one(preset: str, backbone: str, repeats: int, device: torch.device, amp: bool, volume_scale: float,
              probe: MemProbe, log: Callable[[str], None]) -> Result:
    cfg = build_config(preset, overrides={"model": {"backbone": backbone},
                                          "train": {"device": str(device), "amp": amp}})
    tc, roi = cfg.train, list(cfg.model.roi_size)
    tag = f"[{preset}/{backbone}]"
    started = time.perf_counter()
    runners = {"plain": PlainTrainer(cfg, device, repeats + 1), "pemma": PemmaTrainer(cfg, device, repeats + 1)}
    params = count_parameters(runners["pemma"].model)[1]
    plain_params = count_parameters(runners["plain"].model)[1]
    if plain_params != params:
        log(f"{tag} WARNING: parameter counts differ (pemma {params:,}, plain {plain_params:,})")
    volume_shape = [int(round(s * volume_scale)) for s in roi]
    res = Result(preset, backbone, params, roi, tc.batch_size, volume_shape, repeats)
    log(f"{tag} roi {roi}, batch {tc.batch_size}, {params / 1e6:.2f} M parameters, "
        f"{cfg.model.backbone_kwargs}; built in {time.perf_counter() - started:.1f} s")

    gen = torch.Generator().manual_seed(1234)
    channels = len(cfg.data.modalities)
    image = torch.rand((tc.batch_size, channels, *roi), generator=gen).to(device)
    label = torch.randint(0, cfg.model.out_channels, (tc.batch_size, 1, *roi), generator=gen).float().to(device)

    # training: warm-up (not timed) then ABBA-interleaved timed steps
    for impl in IMPLS:
        res.train_s[impl], res.train_loss[impl], res.train_mem[impl] = [], [], []
        t0 = time.perf_counter()
        res.train_loss[impl].append(runners[impl].train_step(image, label))
        _sync(device)
        log(f"{tag} train warm-up {impl}: {time.perf_counter() - t0:.3f} s")
    for rep in range(repeats):
        parts = []
        for impl in _order(rep):
            runner = runners[impl]
            runner.zero_grad()  # what the step does first anyway; keeps stale gradients out of the baseline
            with probe.measure(res.train_mem[impl]):
                t0 = time.perf_counter()
                res.train_loss[impl].append(runner.train_step(image, label))
                _sync(device)
                res.train_s[impl].append(time.perf_counter() - t0)
            parts.append(f"{impl} {res.train_s[impl][-1]:.3f} s ({res.train_mem[impl][-1].growth_mb:.0f} MB)")
        log(f"{tag} train {rep + 1}/{repeats}: " + ", ".join(parts))
    res.loss_max_rel_diff = max(abs(a - b) / max(abs(b), 1e-12)
                                for a, b in zip(res.train_loss["pemma"], res.train_loss["plain"], strict=True))
    for runner in runners.values():
        runner.zero_grad()

    # sliding-window inference on one random volume (kept on the CPU, as for a whole case)
    volume = torch.rand((1, channels, *volume_shape), generator=gen)
    probs: dict[str, torch.Tensor] = {}
    for impl in IMPLS:
        res.infer_s[impl], res.infer_mem[impl] = [], []
        t0 = time.perf_counter()
        probs[impl] = runners[impl].infer(volume, roi, tc.sw_batch_size, tc.overlap)
        log(f"{tag} infer warm-up {impl}: {time.perf_counter() - t0:.3f} s")
    res.probs_max_abs_diff = float((probs["pemma"] - probs["plain"]).abs().max())
    del probs
    for rep in range(repeats):
        parts = []
        for impl in _order(rep):
            with probe.measure(res.infer_mem[impl]):
                t0 = time.perf_counter()
                runners[impl].infer(volume, roi, tc.sw_batch_size, tc.overlap)
                res.infer_s[impl].append(time.perf_counter() - t0)
            parts.append(f"{impl} {res.infer_s[impl][-1]:.3f} s ({res.infer_mem[impl][-1].growth_mb:.0f} MB)")
        log(f"{tag} infer {rep + 1}/{repeats} ({'x'.join(map(str, volume_shape))} voxels, "
            f"sw_batch {tc.sw_batch_size}, overlap {tc.overlap}): " + ", ".join(parts))
    log(f"{tag} sanity: loss max rel diff pemma vs plain {res.loss_max_rel_diff:.2e}, "
        f"probs max abs diff {res.probs_max_abs_diff:.2e}; {time.perf_counter() - started:.1f} s in all")

    del runners, image, label, volume
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def markdown_table(results: list[Result], mem_label: str) -> str:
    head = ("| preset | backbone | params | train s/step pemma | plain | ratio | infer Mvox/s pemma | plain | ratio "
            f"| train peak {mem_label} pemma | plain | infer peak {mem_label} pemma | plain |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {r.preset} | {r.backbone} | {r.params / 1e6:.2f} M "
            f"| {s['train_s_median_pemma']:.3f} | {s['train_s_median_plain']:.3f} | {s['train_ratio']:.3f} "
            f"| {s['infer_mvox_s_pemma']:.3f} | {s['infer_mvox_s_plain']:.3f} | {s['infer_ratio']:.3f} "
            f"| {s['train_peak_growth_mb_pemma']:.0f} | {s['train_peak_growth_mb_plain']:.0f} "
            f"| {s['infer_peak_growth_mb_pemma']:.0f} | {s['infer_peak_growth_mb_plain']:.0f} |")
    best = []
    for r in results:
        s = r.summary()
        best.append(f"{r.preset}/{r.backbone}: train {s['train_ratio_min']:.3f} ({s['train_s_min_pemma']:.3f} vs "
                    f"{s['train_s_min_plain']:.3f} s), infer {s['infer_ratio_best']:.3f}")
    lines += ["", "Best-of ratios (min time; less sensitive to load bursts than medians): " + "; ".join(best)]
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"], help="presets to run (default: tiny paper)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES,
                   help="backbones to run (default: both)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per implementation after 1 warm-up (default: CPU tiny 5 / paper 2; "
                        "CUDA 20 / 10)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU), as --amp")
    p.add_argument("--volume-scale", type=float, default=1.5, help="inference volume = scale x roi per axis")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.volume_scale < 1.0:
        p.error("--volume-scale must be >= 1")
    for preset in args.presets:
        try:
            preset_dict(preset)
        except PemmaError as exc:
            p.error(str(exc))
    return args


def default_repeats(preset: str, device: torch.device) -> int:
    cheap = preset == "tiny"
    if device.type == "cuda":
        return 20 if cheap else 10
    return 5 if cheap else 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    probe = MemProbe(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "amp": args.amp, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_at_start": _load(), "memory_method": probe.method}
    log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] + 0.5 > (os.cpu_count() or 1)
    if device.type == "cpu" and busy and torch.get_num_threads() > 1:
        log("note: the CPUs are already busy; with more torch threads than free cores OpenMP threads wait on "
            "each other and timings get very noisy; --threads 1 gives steadier ratios")
    results: list[Result] = []
    started = time.perf_counter()
    for preset in args.presets:
        repeats = args.repeats or default_repeats(preset, device)
        for backbone in args.backbones:
            results.append(bench_one(preset, backbone, repeats, device, args.amp, args.volume_scale, probe, log))
    env["load_at_end"] = _load()
    env["seconds"] = round(time.perf_counter() - started, 1)
    log(f"done in {env['seconds']} s; load average at start {env['load_at_start']}, at end {env['load_at_end']}")

    mem_label = "MB" if probe.hwm or device.type == "cuda" else "MB (RSS growth)"
    print()
    print(f"pemma vs plain MONAI on {env['device']} ({env['threads']} threads, amp {args.amp}); medians; ratios "
          "pemma/plain; peak = growth above resident memory at the start of a call "
          f"({probe.method})")
    print()
    print(markdown_table(results, mem_label))
    if args.json is not None:
        payload = {"environment": env, "results": [r.summary() for r in results]}
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
