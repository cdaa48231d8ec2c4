"""The levers on PEMMA's training step, each on and off, against early fusion, in one process (issue 13, parts 1-2).

For one preset x backbone (``--backbone``, UNETR by default; Swin UNETR runs early fusion, ``-keep``, the defaults,
``+ckpt-decoder`` and, for DoRA, ``dora-keep-dora``), the same backbone size, roi and batch for every variant,
training steps of:

* ``early_fusion``: the 2-channel UNETR, all parameters trained (``backbone_task``, what ``pemma train`` runs);
* ``early_fusion+fused``: the same with fused attention switched on (to see what the lever is worth there too);
* ``<method>-plain``: the PEMMA model with ``AdapterConfig(fused_attention=False, checkpoint_full_resolution=False)``
  (the einsum attention of MONAI's UNETR, every activation kept: pemma's behaviour before both levers);
* ``<method>-keep``: fused attention, ``checkpoint_full_resolution=False`` (the full-resolution encoders keep their
  activations: the default until 2026-12-04);
* ``<method>``: the PEMMA model with the defaults a user gets (fused attention on, the full-resolution encoders,
  ``encoder1`` and the PET skip block, recomputed in backward: ``AdapterConfig.checkpoint_full_resolution``);
* ``<method>+ckpt``: the defaults plus activation checkpointing of the transformer blocks
  (``PemmaUNETR.gradient_checkpointing``; ``pemma adapt`` turns it on when the base run was trained with
  ``--gradient-checkpointing``).
* ``dora-keep-dora``: the defaults, but the DoRA layers keep their outputs for backward
  (``AdapterConfig(recompute_dora=False)``: the default until 2026-12-05; ``-plain`` and ``-keep`` keep them too).
* ``<method>+ckpt-decoder``: the defaults plus recomputation of the last (full-resolution) decoder, UNETR
  ``decoder2`` / Swin UNETR ``decoder1`` (a benchmark-only wrapper; ``checkpoint_full_resolution`` included it until
  2026-12-04).
* ``--amp``: ``early_fusion+bf16`` and ``<method>+bf16`` (bf16 autocast, the defaults otherwise).
* ``--compile`` / ``--channels-last``: ``+compile`` (``torch.compile`` of the trained module, the compile time
  printed with the warm-up) and ``+cl3d`` (module and batch in ``torch.channels_last_3d``) variants of early fusion
  and of each method, on top of bf16 when ``--amp`` is given.

Every PEMMA variant is called with CT+PET input on each step (as in ``bench_adaptation.py``), on the same random
batch, through pemma's training engine (``PemmaTrainer`` of ``bench_backbones.py``). Variants alternate (rotated,
every other repeat reversed) so that load on a shared machine hits all alike; ratios are against
``early_fusion`` of the same run. Memory: *step peak* (growth during a step, CPU ``VmHWM`` after a reset) and
*footprint* = step peak + the variant's parameters, buffers and AdamW state (see ``bench_adaptation.py``).

``--profile`` adds, for early fusion and the default PEMMA variant (either backbone), a profile of one step: per
top-level module (and the transformer's parts) the forward time (forward hooks) and the bytes autograd saves for
backward inside it (``saved_tensors_hooks``, distinct storages), and the top operators by self CPU time
(``torch.profiler``, forward and backward).

``--routes`` adds the other input sets of modality dropout on both CT routes: ``<method>[pet]`` (exact route, PET
alone), ``<method>@shared`` (shared route, CT+PET), ``<method>@shared[ct]`` and ``<method>@shared[pet]``, and prints
per route the expected step under the default modality dropout (the exact route draws CT+PET 0.75 / PET 0.25:
CT alone runs the frozen base and trains nothing; the shared route CT+PET 0.6 / CT 0.2 / PET 0.2).

It also checks lever (b), "no autograd through what nothing trainable needs": whether the frozen CT patch
embedding's output carries an autograd graph (it should not: its input and weights do not require grad, so
torch records nothing and ``torch.no_grad`` there would change nothing).

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_levers.py --preset tiny --repeats 5 --profile
    .venv/bin/python benchmarks/bench_levers.py --preset paper --repeats 1 --methods lora
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adaptation import interleaved, resident_mb  # noqa: E402
from bench_backbones import MB, MemProbe, MemSample, PemmaTrainer, _load  # noqa: E402

from pemma.adapters.config import AdapterConfig  # noqa: E402
from pemma.config import build_config  # noqa: E402
from pemma.methods.adaptation import select_channels  # noqa: E402
from pemma.methods.pemma import pemma_task  # noqa: E402
from pemma.models.fused_attention import enable_fused_attention  # noqa: E402
from pemma.models.loaded import LoadedModel  # noqa: E402
from pemma.models.registry import build_backbone  # noqa: E402

CTPET = ("ct", "pet")
# ``--routes``: the other input sets of modality dropout (the default variant ``<method>`` is the exact route, CT+PET)
ROUTE_VARIANTS = (("exact", ("pet",)), ("shared", CTPET), ("shared", ("ct",)), ("shared", ("pet",)))


def route_variant(method: str, route: str, modalities: tuple[str, ...]) -> str:
    """Variant name of ``method`` on ``route`` for one input set: ``lora`` (exact, CT+PET), ``lora[pet]``,
    ``lora@shared``, ``lora@shared[ct]``."""
    inputs = "" if modalities == CTPET else f"[{'+'.join(modalities)}]"
    return method + ("" if route == "exact" else f"@{route}") + inputs


def draws(method: str, route: str) -> list[tuple[tuple[str, ...], float]]:
    """The input sets a training step on ``route`` draws and their probabilities (the default modality dropout;
    the exact route never trains a CT-only batch: CT alone runs the frozen base, so its draws are renormalised over
    CT+PET and PET, as ``pemma adapt`` does)."""
    return AdapterConfig(method=method, ct_route=route).modality_choices(trainable_only=route == "exact")


def weights(method: str, route: str) -> str:
    """``ct+pet 0.75, pet 0.25``: :func:`draws` as text."""
    return ", ".join(f"{'+'.join(mods)} {p:.2f}" for mods, p in draws(method, route))


def expected_step(method: str, times: dict[str, list[float]]) -> dict[str, float]:
    """Per route, the mean step time under the default modality dropout: the medians of the route's input-set
    variants weighted by :func:`draws`."""
    out = {}
    for route in ("exact", "shared"):
        names = [(route_variant(method, route, mods), p) for mods, p in draws(method, route)]
        if all(n in times for n, _ in names):
            out[route] = sum(p * statistics.median(times[n]) for n, p in names)
    return out
def build_trainers(preset: str, methods: list[str], repeats: int, log: Callable[[str], None],
                   skip: tuple[str, ...] = (), amp: bool = False, compiled: bool = False,
                   channels_last: bool = False, backbone: str = "unetr", routes: bool = False
                   ) -> tuple[dict[str, PemmaTrainer], torch.Tensor, torch.Tensor]:
    """All variants on the CT base's weights, and one random batch (image, label); ``amp`` adds bf16-autocast
    variants of early fusion and of each method (``+bf16``, the default adapter settings otherwise);
    ``compiled`` / ``channels_last`` add ``+compile`` / ``+cl3d`` variants of those (on top of bf16 with ``amp``).
    A ``+cl3d`` trainer has ``channels_last = True``: :func:`variant_input` gives it its batch in that layout."""
    device = torch.device("cpu")
    if backbone != "unetr":  # fused attention and block checkpointing are UNETR levers
        skip = (*skip, "early_fusion+fused", *(f"{m}{s}" for m in methods for s in ("-plain", "+ckpt")))
    overrides = {"model": {"backbone": backbone}, "train": {"device": "cpu", "amp": False}}
    cfg_ct = build_config(preset, overrides={**overrides, "data": {"modalities": ["ct"]}})
    cfg_ef = build_config(preset, overrides={**overrides, "data": {"modalities": ["ct", "pet"]}})
    torch.manual_seed(cfg_ef.train.seed)
    base_ct = build_backbone(cfg_ct.model, in_channels=1).eval()
    shell = LoadedModel(net=base_ct, config=cfg_ct, meta={"sha256": "benchmark"}, input_sets=[["ct"]])
    steps = repeats + 2
    trainers = {"early_fusion": PemmaTrainer(cfg_ef, device, steps)}
    if "early_fusion+fused" not in skip:
        trainers["early_fusion+fused"] = PemmaTrainer(cfg_ef, device, steps)
        enable_fused_attention(trainers["early_fusion+fused"].model, "vit")
    cfg_bf16 = build_config(preset, overrides={"model": {"backbone": backbone}, "data": {"modalities": ["ct", "pet"]},
                                               "train": {"device": "cpu", "amp": True}})
    if amp:
        trainers["early_fusion+bf16"] = PemmaTrainer(cfg_bf16, device, steps)
    for m in methods:
        variants = ((f"{m}-plain", False, False, False, False), (f"{m}-keep", True, False, False, False),
                    (m, True, False, True, True), (f"{m}+ckpt", True, True, True, True),
                    (f"{m}+ckpt-decoder", True, False, True, True))
        if m == "dora":
            variants += ((f"{m}-keep-dora", True, False, True, False),)
        for name, fused, ckpt, fullres, dora_recomputed in variants:
            if name in skip:
                continue
            adapter = AdapterConfig(method=m, fused_attention=fused, checkpoint_full_resolution=fullres,
                                    recompute_dora=dora_recomputed)
            task = pemma_task(shell, Path("."), adapter, cfg_ct)
            task.model.gradient_checkpointing = ckpt
            if name.endswith("+ckpt-decoder"):
                checkpoint_last_decoder(task.model)
            task = dataclasses.replace(task, forward=lambda module, x, step: module(x, CTPET))
            trainers[name] = PemmaTrainer(cfg_ef, device, steps, task=task)
        if amp:
            task = pemma_task(shell, Path("."), AdapterConfig(method=m), cfg_ct)
            task = dataclasses.replace(task, forward=lambda module, x, step: module(x, CTPET))
            trainers[f"{m}+bf16"] = PemmaTrainer(cfg_bf16, device, steps, task=task)
        if routes:
            for route, mods in ROUTE_VARIANTS:
                name = route_variant(m, route, mods)
                if name in skip:
                    continue
                task = pemma_task(shell, Path("."), AdapterConfig(method=m, ct_route=route), cfg_ct)
                task = dataclasses.replace(task, forward=lambda module, x, step, mods=mods: module(
                    select_channels(x, mods, list(CTPET)), mods))
                trainers[name] = PemmaTrainer(cfg_ef, device, steps, task=task)
    cfg_fast = cfg_bf16 if amp else cfg_ef
    suffix = "+bf16" if amp else ""
    for lever, wanted in (("compile", compiled), ("cl3d", channels_last)):
        if not wanted:
            continue
        added = {f"early_fusion{suffix}+{lever}": PemmaTrainer(cfg_fast, device, steps)}
        for m in methods:
            task = pemma_task(shell, Path("."), AdapterConfig(method=m), cfg_ct)
            task = dataclasses.replace(task, forward=lambda module, x, step: module(x, CTPET))
            added[f"{m}{suffix}+{lever}"] = PemmaTrainer(cfg_fast, device, steps, task=task)
        for trainer in added.values():
            if lever == "compile":  # compiled lazily: the first (warm-up) step pays the compile time
                trainer.engine.module = torch.compile(trainer.engine.module)
            else:
                trainer.engine.module.to(memory_format=torch.channels_last_3d)
                trainer.channels_last = True
        trainers.update(added)
    tc, roi = cfg_ef.train, list(cfg_ef.model.roi_size)
    gen = torch.Generator().manual_seed(1234)
    image = torch.rand((tc.batch_size, 2, *roi), generator=gen)
    label = torch.randint(0, cfg_ef.model.out_channels, (tc.batch_size, 1, *roi), generator=gen).float()
    log(f"[{preset}/{backbone}] roi {roi}, batch {tc.batch_size}, {cfg_ef.model.backbone_kwargs}; "
        f"variants {list(trainers)}")
    return trainers, image, label


class _Recomputed(nn.Module):
    """``module`` whose activations are recomputed in backward (benchmark-only, for ``+ckpt-decoder``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(self.inner, *inputs, use_reentrant=False)
        return self.inner(*inputs)


def checkpoint_last_decoder(model: nn.Module) -> None:
    """Benchmark-only variant ``+ckpt-decoder``: the last decoder (UNETR ``decoder2``, Swin UNETR ``decoder1``)
    recomputes its activations too, as ``checkpoint_full_resolution`` did until 2026-12-04."""
    last = "decoder1" if model.backbone_name == "swin_unetr" else "decoder2"
    setattr(model.net, last, _Recomputed(getattr(model.net, last)))


def variant_input(trainer: PemmaTrainer, image: torch.Tensor) -> torch.Tensor:
    """The batch in the memory layout the variant runs in (``channels_last_3d`` for ``+cl3d``)."""
    if getattr(trainer, "channels_last", False):
        return image.contiguous(memory_format=torch.channels_last_3d)
    return image


# ---------------------------------------------------------------------------------------------------------------
# profile of one step


def transformer_entries(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer's parts as profile entries in both models. PEMMA runs them one by one (not the transformer's
    own ``forward``): UNETR's blocks as one entry ``vit.blocks``; Swin UNETR's patch embedding and each of its four
    stages (``swinViT.layers1`` ... ``layers4``), so that early fusion's and PEMMA's rows compare."""
    if hasattr(net, "vit"):
        return [("vit.blocks", block) for block in net.vit.blocks]
    vit = net.swinViT
    return [("swinViT.patch_embed", vit.patch_embed)] + [
        (f"swinViT.layers{i}", getattr(vit, f"layers{i}")[0]) for i in range(1, 5)]


@contextmanager
def module_profile(model: nn.Module, fwd_s: dict[str, float], saved: dict[str, float]) -> Iterator[None]:
    """Forward seconds and MiB saved for backward per top-level module of ``model`` (the PEMMA model's own new
    parts and its network's children) during the block."""
    net = getattr(model, "net", model)
    tops = [(n, m) for n, m in net.named_children() if n != "base_model"]
    tops += [(n, m) for n, m in model.named_children() if n != "base_model" and m is not net]
    tops += transformer_entries(net)
    stack: list[str] = []
    started: dict[str, float] = {}
    seen: dict[str, set[int]] = defaultdict(set)
    handles = []
    for name, module in tops:
        def pre(_m: nn.Module, _a: object, name: str = name) -> None:
            if name not in stack:
                started[name] = time.perf_counter()
            stack.append(name)

        def post(_m: nn.Module, _a: object, _o: object, name: str = name) -> None:
            stack.pop()
            if name not in stack:  # the outermost call of this entry (EF's vit holds vit.blocks)
                fwd_s[name] = fwd_s.get(name, 0.0) + time.perf_counter() - started[name]
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def pack(t: torch.Tensor) -> torch.Tensor:
        where = stack[-1] if stack else "(outside modules)"
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen[where]:
            seen[where].add(storage.data_ptr())
            saved[where] = saved.get(where, 0.0) + storage.nbytes() / MB
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        for h in handles:
            h.remove()


def profile_step(name: str, trainer: PemmaTrainer, image: torch.Tensor, label: torch.Tensor, top: int
                 ) -> list[str]:
    fwd_s: dict[str, float] = {}
    saved: dict[str, float] = {}
    trainer.zero_grad()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
            module_profile(trainer.model, fwd_s, saved):
        t0 = time.perf_counter()
        trainer.train_step(image, label)
        total = time.perf_counter() - t0
    lines = [f"#### {name}: one step {total:.2f} s (under the profiler), saved for backward "
             f"{sum(saved.values()):.0f} MiB", "", "| module | forward s | saved for backward MiB |", "|---|---|---|"]
    for mod in sorted(set(fwd_s) | set(saved), key=lambda k: -saved.get(k, 0.0)):
        lines.append(f"| {mod} | {fwd_s.get(mod, 0.0):.3f} | {saved.get(mod, 0.0):.0f} |")
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    all_self = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    lines += ["", "| operator (forward + backward) | self CPU s | share |", "|---|---|---|"]
    lines += [f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / all_self:.0%} |"
              for e in ops]
    return lines


def attention_pairs(preset: str, rounds: int) -> str:
    """Lever (a) alone: one frozen MONAI ``SABlock`` of the preset's size, forward + backward (input requires grad,
    as inside PEMMA's ViT) on the CT+PET token count, einsum vs fused, timed in ABBA rounds."""
    from monai.networks.blocks.selfattention import SABlock

    cfg = build_config(preset, overrides={"model": {"backbone": "unetr"}})
    kw, roi = cfg.model.backbone_kwargs, cfg.model.roi_size
    tokens = 2 * math.prod(r // 16 for r in roi)  # CT and PET patch tokens (16^3 patches)
    torch.manual_seed(0)
    plain = SABlock(kw["hidden_size"], kw["num_heads"]).requires_grad_(False)
    fused = SABlock(kw["hidden_size"], kw["num_heads"], use_flash_attention=True).requires_grad_(False)
    fused.load_state_dict(plain.state_dict())
    x = torch.rand(cfg.train.batch_size, tokens, kw["hidden_size"], requires_grad=True)
    with torch.no_grad():
        diff = float((plain(x) - fused(x)).abs().max())
    ratios = []
    for r in range(rounds):
        t = {}
        for name, block in (("p", plain), ("f", fused), ("f2", fused), ("p2", plain)) if r % 2 else \
                (("f", fused), ("p", plain), ("p2", plain), ("f2", fused)):
            t0 = time.perf_counter()
            block(x).sum().backward()
            t[name] = time.perf_counter() - t0
        ratios.append((t["f"] + t["f2"]) / (t["p"] + t["p2"]))
    return (f"{preset}: one SABlock (hidden {kw['hidden_size']}, {kw['num_heads']} heads, {tokens} tokens, batch "
            f"{cfg.train.batch_size}) forward + backward, fused / einsum over {rounds} ABBA rounds: median "
            f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); max abs output diff "
            f"{diff:.1e}")


def frozen_ct_embedding_records_graph(trainer: PemmaTrainer, image: torch.Tensor) -> bool:
    """Lever (b): does the frozen CT patch embedding's output carry autograd history in a training forward?"""
    with torch.enable_grad():
        tokens = trainer.model.net.vit.patch_embedding(image[:, :1])
    return tokens.requires_grad


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--backbone", default="unetr", choices=["unetr", "swin_unetr"],
                   help="default unetr; swin_unetr has no fused-attention / block-checkpointing variants")
    p.add_argument("--methods", nargs="+", default=["lora", "dora"], choices=["lora", "dora"])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant after one warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    p.add_argument("--profile", action="store_true", help="profile one step of early fusion and PEMMA")
    p.add_argument("--profile-only", action="store_true", help="only the profiles (no timed repeats)")
    p.add_argument("--skip", nargs="+", default=[], help="variants left out, e.g. early_fusion+fused lora+ckpt")
    p.add_argument("--attention-rounds", type=int, default=4, help="ABBA rounds of the attention block alone")
    p.add_argument("--attention-only", action="store_true", help="only the attention block (lever a alone)")
    p.add_argument("--amp", action="store_true", help="add bf16-autocast variants (early_fusion+bf16, <method>+bf16)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (+compile)")
    p.add_argument("--channels-last", action="store_true", help="add channels_last_3d variants (+cl3d)")
    p.add_argument("--routes", action="store_true",
                   help="add the other input sets of modality dropout on both CT routes (<method>[pet], "
                        "<method>@shared, <method>@shared[ct], <method>@shared[pet]) and print the expected step")
    p.add_argument("--top", type=int, default=8, help="operators listed in a profile")
    args = p.parse_args(argv)
    if args.backbone != "unetr" and args.attention_only:
        p.error("--attention-only is UNETR-only")
    if args.backbone != "unetr":
        args.attention_rounds = 0
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    log(f"torch {torch.__version__}, {args.threads} thread(s), load {_load()}")
    if args.attention_rounds:
        log(attention_pairs(args.preset, args.attention_rounds))
        if args.attention_only:
            return 0
    trainers, image, label = build_trainers(args.preset, args.methods, args.repeats, log, tuple(args.skip), args.amp,
                                           args.compile, args.channels_last, args.backbone, args.routes)
    if args.profile_only:
        for name in ("early_fusion", args.methods[0]):
            trainers[name].train_step(image, label)  # warm-up (AdamW state)
            print("\n".join(["", *profile_step(name, trainers[name], image, label, args.top)]))
        return 0
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    mem: dict[str, list[MemSample]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    probe = MemProbe(torch.device("cpu"))
    for name in names:  # warm-up: creates the AdamW state
        t0 = time.perf_counter()
        losses[name].append(trainers[name].train_step(variant_input(trainers[name], image), label))
        log(f"warm-up {name}: {time.perf_counter() - t0:.2f} s")
    for rep in range(args.repeats):
        for name in interleaved(names, rep):
            trainers[name].zero_grad()
            with probe.measure(mem[name]):
                t0 = time.perf_counter()
                losses[name].append(trainers[name].train_step(variant_input(trainers[name], image), label))
                times[name].append(time.perf_counter() - t0)
        log(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    resident = {}
    for name, trainer in trainers.items():
        trainer.zero_grad()
        r = resident_mb(trainer.model, trainer.optimizer)
        resident[name] = r["model_mb"] + r["optimizer_mb"]

    ef_t, ef_best = statistics.median(times["early_fusion"]), min(times["early_fusion"])
    ef_foot = max(s.growth_mb for s in mem["early_fusion"]) + resident["early_fusion"]
    print()
    print(f"{args.preset} / {args.backbone}, {args.repeats} repeat(s), 1 warm-up, {args.threads} thread(s), "
          f"load at end {_load()}; memory: {probe.method}")
    print()
    print("| variant | s/step median | / EF (median, best) | step peak MiB | footprint MiB | footprint / EF |")
    print("|---|---|---|---|---|---|")
    for name in names:
        med, best = statistics.median(times[name]), min(times[name])
        peak = max(s.growth_mb for s in mem[name])
        foot = peak + resident[name]
        print(f"| {name} | {med:.2f} | {med / ef_t:.2f}, {best / ef_best:.2f} | {peak:.0f} | {foot:.0f} | "
              f"{foot / ef_foot:.2f} |")
    print()
    for m in args.methods:
        for route, t in expected_step(m, times).items():
            print(f"{m}, {route} CT route: expected step under modality dropout {t:.2f} s = {t / ef_t:.2f}x EF "
                  f"({weights(m, route)})")
    for m in args.methods:
        if f"{m}-plain" not in trainers or m not in trainers:
            continue

        def rel(a: list[float], b: list[float]) -> float:
            return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))
        plain = losses[f"{m}-plain"]
        print(f"{m}: loss vs {m}-plain, largest relative difference over the steps: fused "
              f"{rel(losses[m], plain):.1e}, fused+ckpt {rel(losses.get(f'{m}+ckpt', plain), plain):.1e}, "
              f"fused+keep {rel(losses.get(f'{m}-keep', plain), plain):.1e}, "
              f"fused+ckpt-decoder {rel(losses.get(f'{m}+ckpt-decoder', plain), plain):.1e}")
        print(f"{m}: frozen CT patch embedding records an autograd graph in training: "
              f"{frozen_ct_embedding_records_graph(trainers[m], image)}")
    if args.profile:
        for name in ("early_fusion", args.methods[0]):
            print()
            print("\n".join(profile_step(name, trainers[name], image, label, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
