"""Benchmark PEMMA adaptation against early-fusion full training, and the inference cost of the adapters.

For each preset x backbone, in one process, on the same backbone size, roi and batch:

1. **Training step** (seconds per step after one warm-up step per variant; peak memory).

   * ``early_fusion``: the 2-channel MONAI backbone with every parameter trained
     (:func:`pemma.training.segmentation.backbone_task` with ``modalities [ct, pet]``), as ``pemma train``
     does it.
   * ``lora`` / ``dora``: the PEMMA model that ``pemma adapt`` trains (:func:`pemma.methods.pemma.
     pemma_task` on a CT base built with :func:`pemma.models.registry.build_backbone`), default
     :class:`~pemma.adapters.config.AdapterConfig` apart from ``method``, called with **CT+PET** input on
     every step. (``pemma adapt`` draws the input set per step by modality dropout: CT+PET 75 %, PET-only
     25 %; PET-only steps are cheaper for UNETR, so the average adaptation step is somewhat cheaper than the
     CT+PET step measured here.)

   All variants train with pemma's training engine itself (the helper ``PemmaTrainer`` of
   ``bench_backbones.py``: :meth:`pemma.training.engine.Engine.step`): ``zero_grad``, autocast, forward, the
   config's ``DiceCELoss`` on ``logits.float()``, GradScaler, ``AdamW`` over the parameters with
   ``requires_grad`` only, cosine schedule. They train on the same random batch ``(batch_size, 2, *roi)``
   with labels in ``{0, 1, 2}``.

   Memory, two numbers per variant:

   * *step peak*: the growth of memory during a step above what was resident when it started (activations,
     gradients, optimiser temporaries), measured as in ``bench_backbones.py`` (CPU: ``VmHWM`` after a
     reset through ``/proc/self/clear_refs``, minus ``VmRSS`` at the start; CUDA: ``max_memory_allocated``
     minus ``memory_allocated``). Several models share the process, so absolute RSS says nothing per model.
   * *footprint*: step peak + the variant's own resident tensors (its parameters and buffers, including
     the frozen base copy of a PEMMA model, + the AdamW state). This is what one training process for that
     variant needs for tensors, i.e. what a GPU reports as peak allocated memory; the target "adaptation
     peak <= 0.6 x early-fusion peak" is judged on it (the step-peak ratio is printed too).

2. **Inference** (no_grad, eval mode, autocast as ``--amp``), ``--inference`` picks one or both of
   *forward* (the default): one forward pass on a batch of ``sw_batch_size`` roi-sized crops (timed over as
   many calls as make a sample last ~``--min-sample-s``, the same count for every variant), and *sliding*:
   :func:`pemma.inference.sliding.sliding_window_probs` over a random volume of ``--volume-scale`` x roi per
   axis (8 windows at 1.5 x roi, so ~4 forward passes plus stitching per variant and repeat; the stitching
   is the same for all variants and dilutes the ratios). Variants:

   * ``base_ct``: the CT base model, a plain MONAI network with 1 input channel, on CT;
   * ``early_fusion``: the 2-channel MONAI network trained above, on CT+PET (a plain network of the same size
     that takes both modalities: the non-PEMMA reference for a CT+PET model);
   * ``<method>_ct``: the adapted model (after the timed training steps, so adapters are non-zero) on CT only
     (this runs the base network with every adapter bypassed);
   * ``<method>_ctpet``: the adapted model on CT+PET, unmerged (peft LoRA/DoRA layers active);
   * ``<method>_merged``: :func:`pemma.adapters.merging.merge_adapters` of that model on CT+PET.

   *Definition of "the same architecture without adapters".* A merged PEMMA model *is* the PEMMA
   architecture with plain ``nn.Linear`` layers where the adapters were (``merge_and_unload`` folds B·A into
   the weights and removes the peft layers): there is no separate adapter-free network with the PET pathway
   to compare against; building one would give the merged model again. So the merged model is reported
   against (a) the unmerged adapted model on the same CT+PET input (``merged / unmerged``: what merging
   saves, should be <= 1), (b) the CT base (``merged / base_ct``: the price of the PET pathway itself, e.g.
   UNETR's doubled token sequence and the PET skip block; not an adapter overhead) and (c) early fusion
   (``merged / early_fusion``: a plain CT+PET network of the same size). The adapter-overhead target
   "within 2 % of the same architecture without adapters" applies to the CT-only path, which runs the very
   same network as the CT base: ``<method>_ct / base_ct`` (target <= 1.02).

   *Paired ratios* (forward only; ``--pair-rounds``): for the target pairs ``<first method>_ct / base_ct`` and
   ``<method>_merged / <method>_ctpet`` the two run back to back as A B B A, one time ratio per round, and
   the median and range of the round ratios are reported; a control pair, the base against an identical
   deep copy of itself (``base_ct_twin / base_ct``), shows the noise floor. On a shared CPU whose load
   changes within seconds these are steadier than ratios of per-variant medians taken minutes apart.

   *Bookkeeping bound*: the CT-only path runs the same modules as the base plus an input check and the
   toggling of peft's ``_disable_adapters`` flag on every adapter layer (``adapters_disabled``). That extra
   work is timed on its own (200 calls) and reported as ``ct path bookkeeping s/call`` and as the bound
   ``1 + bookkeeping / base forward time`` on ``<method>_ct / base_ct``, which load noise cannot blur.

Sanity checks printed and stored: the CT-only output of the adapted model vs the base (max abs diff; must be
0: CT alone runs the untouched base) and the merged vs the unmerged CT+PET output (float rounding only).

Variants run interleaved (each repeat rotates the order and every other repeat reverses it), so that load on
a shared machine hits all alike. Medians and best-of (minimum time) ratios are both printed; on a shared CPU
the best-of ratios are the steadier ones.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_adaptation.py --presets tiny                          # ~6-8 min
    .venv/bin/python benchmarks/bench_adaptation.py --presets paper --repeats 1             # UNETR, ~10 min
    .venv/bin/python benchmarks/bench_adaptation.py --presets paper --backbones swin_unetr --repeats 1  # ~30 min
    .venv/bin/python benchmarks/bench_adaptation.py --device cuda --amp --json gpu.json

Defaults: ``--threads 1`` (the CPU of the development machine is shared; more threads than free cores make
timings swing 2-10x); backbones: both for ``tiny``, ``unetr`` for ``paper`` (a paper Swin UNETR training step
takes ~90 s on one CPU core, so with three training variants, warm-ups and inference, paper Swin needs
roughly half an hour at ``--repeats 1``; ask for it with ``--backbones``); repeats: CPU tiny 5 / paper 2,
CUDA 20 / 10; paired rounds: as many as repeats, none for paper on the CPU. Times are for one core of a
2-core machine shared with other jobs (load 4-6), where single timings vary by +-30 %.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbones import MB, MemProbe, MemSample, PemmaTrainer, _load, _sync  # noqa: E402

from pemma.adapters.config import AdapterConfig  # noqa: E402
from pemma.adapters.merging import merge_adapters  # noqa: E402
from pemma.adapters.state import adapters_disabled  # noqa: E402
from pemma.config import build_config, preset_dict  # noqa: E402
from pemma.errors import PemmaError  # noqa: E402
from pemma.inference.sliding import autocast, sliding_window_probs  # noqa: E402
from pemma.methods.pemma import pemma_task  # noqa: E402
from pemma.models.accounting import count_parameters  # noqa: E402
from pemma.models.loaded import LoadedModel  # noqa: E402
from pemma.models.registry import build_backbone  # noqa: E402
from pemma.vocab import BACKBONES  # noqa: E402

METHODS = ("lora", "dora")
CTPET = ("ct", "pet")
DEFAULT_BACKBONES = {"tiny": list(BACKBONES), "paper": ["unetr"]}

def _tensor_mb(tensors: Sequence[torch.Tensor]) -> float:
    """Memory of distinct storages among ``tensors``, in MiB."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / MB


def resident_mb(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What stays allocated between steps: the model's parameters and buffers, and the optimiser state."""
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"model_mb": _tensor_mb([*model.parameters(), *model.buffers()]), "optimizer_mb": _tensor_mb(state)}


# ----------------------------------------------------------------------------------------------------------------
# results


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _min(xs: list[float]) -> float:
    return min(xs) if xs else float("nan")


def _peak(samples: list[MemSample]) -> float:
    return max(s.growth_mb for s in samples) if samples else float("nan")


@dataclass
class Result:
    """Numbers for one preset x backbone."""

    preset: str
    backbone: str
    roi: list[int]
    batch_size: int
    sw_batch_size: int
    volume: list[int]
    repeats: int
    methods: list[str]
    params: dict[str, dict[str, int]] = field(default_factory=dict)
    resident: dict[str, dict[str, float]] = field(default_factory=dict)
    train_s: dict[str, list[float]] = field(default_factory=dict)
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    train_mem: dict[str, list[MemSample]] = field(default_factory=dict)
    forward_calls: dict[str, int] = field(default_factory=dict)
    forward_s: dict[str, list[float]] = field(default_factory=dict)  # seconds per call
    forward_mem: dict[str, list[MemSample]] = field(default_factory=dict)
    paired: dict[str, list[float]] = field(default_factory=dict)  # "num / den" -> per-round time ratios
    sliding_s: dict[str, list[float]] = field(default_factory=dict)
    sliding_mem: dict[str, list[MemSample]] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    seconds: float = float("nan")

    def footprint(self, variant: str) -> float:
        r = self.resident[variant]
        return r["model_mb"] + r["optimizer_mb"] + _peak(self.train_mem[variant])

    def ratios(self) -> dict[str, dict[str, float]]:
        """``{name: {"median": x, "best": y}}`` of the targets and comparisons (see the module docstring)."""
        out: dict[str, dict[str, float]] = {}

        def timed(name: str, table: dict[str, list[float]], num: str, den: str) -> None:
            if table.get(num) and table.get(den):
                out[name] = {"median": _median(table[num]) / _median(table[den]),
                             "best": _min(table[num]) / _min(table[den])}

        bookkeeping = self.checks.get("ct path bookkeeping s/call")
        if bookkeeping is not None and self.forward_s.get("base_ct"):
            out["bound ct / base_ct from bookkeeping"] = {
                "median": 1 + bookkeeping / _median(self.forward_s["base_ct"]),
                "best": 1 + bookkeeping / _min(self.forward_s["base_ct"])}
        for name, values in self.paired.items():
            if not values:
                continue
            out[f"paired forward {name}"] = {"median": _median(values), "min": _min(values), "max": max(values)}
        for m in self.methods:
            timed(f"train {m} / early_fusion", self.train_s, m, "early_fusion")
            if self.train_mem.get(m):
                out[f"step peak {m} / early_fusion"] = {
                    "peak": _peak(self.train_mem[m]) / _peak(self.train_mem["early_fusion"])}
                out[f"footprint {m} / early_fusion"] = {"peak": self.footprint(m) / self.footprint("early_fusion")}
            for kind, table in (("forward", self.forward_s), ("sliding", self.sliding_s)):
                timed(f"{kind} {m}_ct / base_ct", table, f"{m}_ct", "base_ct")
                timed(f"{kind} {m}_merged / {m}_ctpet", table, f"{m}_merged", f"{m}_ctpet")
                timed(f"{kind} {m}_merged / base_ct", table, f"{m}_merged", "base_ct")
                timed(f"{kind} {m}_merged / early_fusion", table, f"{m}_merged", "early_fusion")
                timed(f"{kind} {m}_ctpet / early_fusion", table, f"{m}_ctpet", "early_fusion")
        return out

    def summary(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["train_s_median"] = {k: _median(v) for k, v in self.train_s.items()}
        out["train_s_min"] = {k: _min(v) for k, v in self.train_s.items()}
        out["train_step_peak_mb"] = {k: _peak(v) for k, v in self.train_mem.items()}
        out["train_footprint_mb"] = {k: self.footprint(k) for k in self.train_mem}
        for kind in ("forward", "sliding"):
            table, mem = getattr(self, f"{kind}_s"), getattr(self, f"{kind}_mem")
            out[f"{kind}_s_median"] = {k: _median(v) for k, v in table.items()}
            out[f"{kind}_s_min"] = {k: _min(v) for k, v in table.items()}
            out[f"{kind}_peak_mb"] = {k: _peak(v) for k, v in mem.items()}
        out["ratios"] = self.ratios()
        return out


# ----------------------------------------------------------------------------------------------------------------
# measurement


def interleaved(names: Sequence[str], rep: int) -> list[str]:
    """Repeat ``rep``'s order: the list rotated by ``rep``, reversed on odd repeats."""
    k = rep % len(names)
    order = list(names[k:]) + list(names[:k])
    return order[::-1] if rep % 2 else order


def bench_one(preset: str, backbone: str, methods: Sequence[str], repeats: int, pair_rounds: int,
              device: torch.device, amp: bool, inference: Sequence[str], volume_scale: float, min_sample_s: float,
              probe: MemProbe, log: Callable[[str], None]) -> Result:
    overrides = {"model": {"backbone": backbone}, "train": {"device": str(device), "amp": amp}}
    cfg_ct = build_config(preset, overrides={**overrides, "data": {"modalities": ["ct"]}})
    cfg_ef = build_config(preset, overrides={**overrides, "data": {"modalities": ["ct", "pet"]}})
    tc, roi = cfg_ef.train, list(cfg_ef.model.roi_size)
    tag = f"[{preset}/{backbone}]"
    started = time.perf_counter()
    volume_shape = [int(round(s * volume_scale)) for s in roi]
    res = Result(preset, backbone, roi, tc.batch_size, tc.sw_batch_size, volume_shape, repeats, list(methods))

    # models: the CT base, early fusion, one PEMMA model per method (all on the CT base's weights)
    torch.manual_seed(tc.seed)
    base_ct = build_backbone(cfg_ct.model, in_channels=1).to(device).eval()
    shell = LoadedModel(net=base_ct, config=cfg_ct, meta={"sha256": "benchmark"}, input_sets=[["ct"]])
    trainers: dict[str, PemmaTrainer] = {"early_fusion": PemmaTrainer(cfg_ef, device, repeats + 1)}
    for m in methods:
        task = pemma_task(shell, Path("."), AdapterConfig(method=m), cfg_ct)
        trainers[m] = PemmaTrainer(cfg_ef, device, repeats + 1, task=task)
    res.params["base_ct"] = dict(zip(("trainable", "total"), count_parameters(base_ct), strict=True))
    for name, trainer in trainers.items():
        res.params[name] = dict(zip(("trainable", "total"), count_parameters(trainer.model), strict=True))
    log(f"{tag} roi {roi}, batch {tc.batch_size}, sw_batch {tc.sw_batch_size}, {cfg_ef.model.backbone_kwargs}; "
        "trainable / total parameters: " + ", ".join(f"{k} {v['trainable'] / 1e6:.3f} M / {v['total'] / 1e6:.3f} M"
                                                     for k, v in res.params.items() if k != "base_ct")
        + f"; built in {time.perf_counter() - started:.1f} s")

    gen = torch.Generator().manual_seed(1234)
    image = torch.rand((tc.batch_size, 2, *roi), generator=gen).to(device)
    label = torch.randint(0, cfg_ef.model.out_channels, (tc.batch_size, 1, *roi), generator=gen).float().to(device)
    for m in methods:
        # the adaptation task's forward would draw the input set per step; here always CT+PET (see docstring)
        trainers[m].task = dataclasses.replace(trainers[m].task,
                                               forward=lambda module, x, step: module(x, CTPET))

    # ---- training: warm-up (creates the AdamW state), then interleaved timed steps
    names = list(trainers)
    for name in names:
        res.train_s[name], res.train_loss[name], res.train_mem[name] = [], [], []
        t0 = time.perf_counter()
        res.train_loss[name].append(trainers[name].train_step(image, label))
        _sync(device)
        log(f"{tag} train warm-up {name}: {time.perf_counter() - t0:.3f} s")
    for rep in range(repeats):
        parts = []
        for name in interleaved(names, rep):
            trainers[name].zero_grad()
            with probe.measure(res.train_mem[name]):
                t0 = time.perf_counter()
                res.train_loss[name].append(trainers[name].train_step(image, label))
                _sync(device)
                res.train_s[name].append(time.perf_counter() - t0)
            parts.append(f"{name} {res.train_s[name][-1]:.3f} s ({res.train_mem[name][-1].growth_mb:.0f} MB)")
        log(f"{tag} train {rep + 1}/{repeats}: " + ", ".join(parts))
    for name, trainer in trainers.items():
        trainer.zero_grad()
        res.resident[name] = resident_mb(trainer.model, trainer.optimizer)
        trainer.model.eval()
    log(f"{tag} resident tensors (model + AdamW state): " + ", ".join(
        f"{k} {v['model_mb']:.0f} + {v['optimizer_mb']:.0f} MB" for k, v in res.resident.items()))

    # ---- inference variants
    nets: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {  # name -> (window fn, CT+PET input?)
        "base_ct": (base_ct, False), "early_fusion": (trainers["early_fusion"].model, True)}
    merged_models = {}
    for m in methods:
        model = trainers[m].model
        merged_models[m] = merge_adapters(model).to(device).eval()
        nets[f"{m}_ct"] = ((lambda mod: lambda x: mod(x, ("ct",)))(model), False)
        nets[f"{m}_ctpet"] = ((lambda mod: lambda x: mod(x, CTPET))(model), True)
        nets[f"{m}_merged"] = ((lambda mod: lambda x: mod(x, CTPET))(merged_models[m]), True)
    trainers_models = {m: trainers[m].model for m in methods}
    trainers.clear()  # frees gradients and optimiser state; the models live on in ``nets``
    gc.collect()
    inames = list(nets)

    x_fwd = torch.rand((tc.sw_batch_size, 2, *roi), generator=gen).to(device)
    outs, first_s = {}, {}  # the checks' forward pass doubles as every variant's inference warm-up
    with torch.no_grad(), autocast(device, amp):
        for n, (fn, ctpet) in nets.items():
            t0 = time.perf_counter()
            outs[n] = fn(x_fwd if ctpet else x_fwd[:, :1]).float()
            _sync(device)
            first_s[n] = time.perf_counter() - t0
    for m in methods:
        res.checks[f"{m}_ct vs base_ct max abs diff"] = float((outs[f"{m}_ct"] - outs["base_ct"]).abs().max())
        res.checks[f"{m}_merged vs {m}_ctpet max abs diff"] = float(
            (outs[f"{m}_merged"] - outs[f"{m}_ctpet"]).abs().max())
        res.checks[f"{m}_ctpet vs base_ct max abs diff (adapters trained)"] = float(
            (outs[f"{m}_ctpet"] - outs["base_ct"]).abs().max())
    del outs
    # what the CT-only path adds to the base's forward: toggling peft's flags on every adapter layer
    # (pemma.adapters.state.adapters_disabled) and the input check; timed alone, free of the forward's noise
    model = trainers_models[methods[0]]
    t0 = time.perf_counter()
    for _ in range(200):
        model.split_modalities(x_fwd[:, :1], ("ct",))
        with adapters_disabled(model.base_model):
            pass
    res.checks["ct path bookkeeping s/call"] = (time.perf_counter() - t0) / 200
    log(f"{tag} checks: " + ", ".join(f"{k} {v:.2e}" for k, v in res.checks.items()))

    if "forward" in inference:
        def fwd(name: str, calls: int) -> None:
            fn, ctpet = nets[name]
            x = x_fwd if ctpet else x_fwd[:, :1]
            with torch.no_grad(), autocast(device, amp):
                for _ in range(calls):
                    fn(x)
            _sync(device)

        for name in inames:
            once = first_s[name]
            if once < min_sample_s:  # cheap: time a second call, the first may include one-off allocations
                t0 = time.perf_counter()
                fwd(name, 1)
                once = time.perf_counter() - t0
            res.forward_calls[name] = max(1, min(50, math.ceil(min_sample_s / max(once, 1e-6))))
            res.forward_s[name], res.forward_mem[name] = [], []
            log(f"{tag} forward warm-up {name}: {first_s[name]:.3f} s, then {once:.3f} s; "
                f"{res.forward_calls[name]} call(s) per sample")
        calls = max(res.forward_calls.values())  # the same number of calls for every variant
        res.forward_calls = {n: calls for n in inames}
        for rep in range(repeats):
            parts = []
            for name in interleaved(inames, rep):
                with probe.measure(res.forward_mem[name]):
                    t0 = time.perf_counter()
                    fwd(name, calls)
                    res.forward_s[name].append((time.perf_counter() - t0) / calls)
                parts.append(f"{name} {res.forward_s[name][-1] * 1e3:.1f} ms")
            log(f"{tag} forward {rep + 1}/{repeats} (batch {tc.sw_batch_size}, {calls} call(s)): " + ", ".join(parts))

        # paired rounds for the target ratios: A B B A back to back, one ratio per round (load changes slowly
        # compared with a round, so each ratio sees about the same load on both sides)
        # control: the base against an identical copy of itself shows the noise floor of a paired ratio
        pairs = [("base_ct_twin", "base_ct"), (f"{methods[0]}_ct", "base_ct")]
        pairs += [(f"{m}_merged", f"{m}_ctpet") for m in methods]
        if not pair_rounds:
            pairs = []
        else:
            nets["base_ct_twin"] = (copy.deepcopy(base_ct), False)
            fwd("base_ct_twin", 1)
        for num, den in pairs:
            ratios = res.paired.setdefault(f"{num} / {den}", [])
            for _ in range(pair_rounds):
                spent = {num: 0.0, den: 0.0}
                for name in (num, den, den, num):
                    t0 = time.perf_counter()
                    fwd(name, calls)
                    spent[name] += time.perf_counter() - t0
                ratios.append(spent[num] / spent[den])
            log(f"{tag} paired forward {num} / {den}: {pair_rounds} rounds (ABBA, {calls} call(s) each), "
                f"median {_median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")

    if "sliding" in inference:
        volume = torch.rand((1, 2, *volume_shape), generator=gen)

        def sliding(name: str) -> None:
            fn, ctpet = nets[name]
            sliding_window_probs(fn, volume if ctpet else volume[:, :1], roi, tc.sw_batch_size, tc.overlap,
                                 device=device, amp=amp)

        for name in inames:
            res.sliding_s[name], res.sliding_mem[name] = [], []
            t0 = time.perf_counter()
            sliding(name)
            log(f"{tag} sliding warm-up {name}: {time.perf_counter() - t0:.3f} s")
        for rep in range(repeats):
            parts = []
            for name in interleaved(inames, rep):
                with probe.measure(res.sliding_mem[name]):
                    t0 = time.perf_counter()
                    sliding(name)
                    res.sliding_s[name].append(time.perf_counter() - t0)
                parts.append(f"{name} {res.sliding_s[name][-1]:.3f} s")
            log(f"{tag} sliding {rep + 1}/{repeats} ({'x'.join(map(str, volume_shape))} voxels, overlap "
                f"{tc.overlap}): " + ", ".join(parts))

    res.seconds = time.perf_counter() - started
    log(f"{tag} done in {res.seconds:.1f} s")
    nets.clear()
    merged_models.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------------------------------------------
# report

def _target(name: str) -> str:
    if name.startswith("train "):
        return "<= 0.7 (paper preset)"
    if name.startswith("footprint "):
        return "<= 0.6"
    if name.endswith("_ct / base_ct") or name.endswith("ct / base_ct from bookkeeping"):
        return "<= 1.02"
    if "_merged / " in name and name.split(" / ")[1].endswith("_ctpet"):
        return "<= 1 (merging saves)"
    return ""


def markdown(results: list[Result]) -> str:
    lines = ["### Training step (CT+PET batch; s/step median (best); step peak = growth during a step; footprint = "
             "step peak + own parameters/buffers + AdamW state)", "",
             "| preset | backbone | variant | trainable params | s/step | step peak MB | footprint MB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for name in r.train_s:
            p = r.params[name]
            lines.append(f"| {r.preset} | {r.backbone} | {name} | {p['trainable'] / 1e6:.3f} M of "
                         f"{p['total'] / 1e6:.3f} M | {_median(r.train_s[name]):.3f} ({_min(r.train_s[name]):.3f}) "
                         f"| {_peak(r.train_mem[name]):.0f} | {r.footprint(name):.0f} |")
    lines += ["", "### Inference (no_grad): forward = one batch of sw_batch_size crops, ms/call; sliding = "
              "sliding_window_probs over volume-scale x roi, s; median (best)", "",
              "| preset | backbone | variant | input | forward ms | forward peak MB | sliding s | sliding peak MB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name in (r.forward_s or r.sliding_s):
            ctpet = name != "base_ct" and not name.endswith("_ct")
            f = (f"{_median(r.forward_s[name]) * 1e3:.1f} ({_min(r.forward_s[name]) * 1e3:.1f}) | "
                 f"{_peak(r.forward_mem[name]):.0f}") if r.forward_s else "- | -"
            s = (f"{_median(r.sliding_s[name]):.3f} ({_min(r.sliding_s[name]):.3f}) | "
                 f"{_peak(r.sliding_mem[name]):.0f}") if r.sliding_s else "- | -"
            lines.append(f"| {r.preset} | {r.backbone} | {name} | {'CT+PET' if ctpet else 'CT'} | {f} | {s} |")
    lines += ["", "### Ratios (median / best-of; memory: peak; paired = median of ABBA-round ratios)", "",
              "| preset | backbone | ratio | median | best-of (paired: range) | target |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, v in r.ratios().items():
            if "peak" in v:
                lines.append(f"| {r.preset} | {r.backbone} | {name} | {v['peak']:.3f} | | {_target(name)} |")
            elif "min" in v:
                lines.append(f"| {r.preset} | {r.backbone} | {name} | {v['median']:.3f} | {v['min']:.3f}-"
                             f"{v['max']:.3f} | {_target(name)} |")
            else:
                lines.append(f"| {r.preset} | {r.backbone} | {name} | {v['median']:.3f} | {v['best']:.3f} "
                             f"| {_target(name)} |")
    checks = "; ".join(f"{r.preset}/{r.backbone}: " + ", ".join(f"{k} {v:.1e}" for k, v in r.checks.items())
                       for r in results)
    lines += ["", "Checks: " + checks]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"], help="presets to run (default: tiny paper)")
    p.add_argument("--backbones", nargs="+", default=None, choices=BACKBONES,
                   help="backbones to run (default: both for tiny, unetr for paper; a paper swin_unetr training "
                        "step takes ~90 s on one CPU core)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="adapter methods (default: lora dora)")
    p.add_argument("--inference", nargs="*", default=["forward"], choices=["forward", "sliding"],
                   help="inference measurements: forward and/or sliding (default: forward; sliding costs ~4x "
                        "forward per variant at 1.5x roi; no value: training only)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per variant after 1 warm-up (default: CPU tiny 5 / paper 2; CUDA 20 / 10)")
    p.add_argument("--pair-rounds", type=int, default=None,
                   help="ABBA rounds of the paired forward ratios (CT-only / base, merged / unmerged, control); "
                        "default: repeats, but 0 for paper on the CPU; 0: none")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--volume-scale", type=float, default=1.5, help="sliding-window volume = scale x roi per axis")
    p.add_argument("--min-sample-s", type=float, default=0.5,
                   help="a forward sample repeats the call until it lasts about this long (max 50 calls)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.pair_rounds is not None and args.pair_rounds < 0:
        p.error("--pair-rounds must be >= 0")
    if args.volume_scale < 1.0:
        p.error("--volume-scale must be >= 1")
    for preset in args.presets:
        try:
            preset_dict(preset)
        except PemmaError as exc:
            p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    probe = MemProbe(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "amp": args.amp, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_at_start": _load(), "memory_method": probe.method, "argv": sys.argv[1:]}
    log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    results: list[Result] = []
    started = time.perf_counter()
    for preset in args.presets:
        cheap = preset == "tiny"
        repeats = args.repeats or ((20 if cheap else 10) if device.type == "cuda" else (5 if cheap else 2))
        for backbone in args.backbones or DEFAULT_BACKBONES.get(preset, list(BACKBONES)):
            if args.pair_rounds is not None:
                pair_rounds = args.pair_rounds
            else:  # a paper forward takes ~15 s on one CPU core: no pairs there unless asked for
                pair_rounds = repeats if cheap or device.type == "cuda" else 0
            results.append(bench_one(preset, backbone, args.methods, repeats, pair_rounds, device, args.amp,
                                     args.inference, args.volume_scale, args.min_sample_s, probe, log))
    env["load_at_end"] = _load()
    env["seconds"] = round(time.perf_counter() - started, 1)
    log(f"done in {env['seconds']} s; load average at start {env['load_at_start']}, at end {env['load_at_end']}")
    print()
    print(f"PEMMA adaptation vs early fusion on {env['device']} ({env['threads']} thread(s), amp {args.amp}); "
          f"memory: {probe.method}")
    print()
    print(markdown(results))
    if args.json is not None:
        payload = {"environment": env, "results": [r.summary() for r in results]}
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
