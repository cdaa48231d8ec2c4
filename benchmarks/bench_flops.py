"""Floating-point work of one training step, PEMMA against early fusion, counted rather than timed (issue 13).

Timings on a shared 2-core CPU scatter by ±30 % and differ from machine to machine; the number of multiply-adds a
step performs does not. This script counts them with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions,
matmuls, fused attention; forward and backward counted separately, per top-level module) for one training step of

* ``early_fusion``: the 2-channel backbone, every parameter trained;
* ``<recipe>/<method>``: a PEMMA model built the way ``pemma adapt`` builds it (recipe ``pemma`` or ``authors``),
  on CT+PET input, its frozen parts computing input gradients only;
  with the defaults (``checkpoint_full_resolution`` on: the recomputed forward of the full-resolution encoders shows
  up in the backward count);
* ``<recipe>/<method>-keep``: the same with ``checkpoint_full_resolution=False`` (every activation kept).

Networks are counted on PyTorch's ``meta`` device (no memory, no arithmetic: the paper preset in seconds; Swin UNETR,
which MONAI builds with real tensors, is moved there before the step). On a compute-bound device the ratio of
counted work bounds the step-time ratio: a PEMMA step takes at least ``flops(PEMMA) / flops(EF)`` of early fusion's
time unless its kernels run at a higher throughput than early fusion's (measured on the CPU: they run lower,
``bench_levers.py``).

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_flops.py --preset paper --backbones unetr swin_unetr
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from pemma.adapters.recipes import recipe_config  # noqa: E402
from pemma.config import build_config  # noqa: E402
from pemma.models.budget import build_for_count  # noqa: E402
from pemma.models.registry import backbone_nets, constructor_kwargs  # noqa: E402

CTPET = ("ct", "pet")
GIGA = 1e9


def _group(name: str) -> str | None:
    """The top-level part a ``FlopCounterMode`` module path belongs to, or None for a path that double-counts
    (a parent whose children are counted, or a child of a counted part). Wrappers are stripped: the MONAI network's
    own parts (``vit``'s blocks / ``swinViT``'s layers one level down) and PEMMA's added modules."""
    parts = name.split(".")
    if parts[0] == "Global" or len(parts) < 2:
        return None
    rest = parts[3:] if parts[1:3] == ["base_model", "model"] else parts[1:]
    if rest and rest[0] in ("vit", "swinViT"):  # one level down; a ModuleList's items (blocks.3) as one part
        counted = len(rest) == 2 or (len(rest) == 3 and rest[2].isdigit())
        return ".".join(rest[:2]) if counted else None
    return rest[0] if len(rest) == 1 else None


def _top_level(flops_by_module: dict[str, dict]) -> dict[str, int]:
    """Forward FLOPs per top-level part of the counted network."""
    out: dict[str, int] = defaultdict(int)
    for name, ops in flops_by_module.items():
        group = _group(name)
        if group is not None:
            out[group] += sum(ops.values())
    return dict(out)


def count_step(model: nn.Module, call: Callable[[nn.Module, torch.Tensor], torch.Tensor], batch: torch.Tensor
               ) -> dict[str, object]:
    """FLOPs of ``call(model, batch)`` (forward) and of the backward of its mean (a stand-in for the loss: the loss
    itself is a few FLOPs per voxel), total and per top-level module."""
    fwd_mode = FlopCounterMode(display=False)
    with fwd_mode:
        out = call(model, batch)
        loss = out.float().mean()
    bwd_mode = FlopCounterMode(display=False)
    with bwd_mode:
        loss.backward()
    return {"forward": fwd_mode.get_total_flops(), "backward": bwd_mode.get_total_flops(),
            "forward_by_module": _top_level(fwd_mode.get_flop_counts())}


def build_variants(backbone: str, preset: str, recipes: list[str], methods: list[str], keep: bool
                   ) -> dict[str, tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]]:
    """The early-fusion network and the PEMMA variants (lazily built: a Swin paper model is 250 MB)."""
    model_cfg = dataclasses.replace(build_config(preset).model, backbone=backbone)
    kwargs = constructor_kwargs(model_cfg, 1)
    net_cls = backbone_nets()[backbone]

    def early_fusion() -> nn.Module:
        try:
            with torch.device("meta"):
                return net_cls(**{**kwargs, "in_channels": 2})
        except (RuntimeError, NotImplementedError):
            return net_cls(**{**kwargs, "in_channels": 2})

    variants: dict[str, tuple[Callable[[], nn.Module], Callable]] = {
        "early_fusion": (early_fusion, lambda m, x: m(x))}
    for recipe in recipes:
        for method in methods:
            settings = [("", True)] + ([("-keep", False)] if keep else [])
            for suffix, ckpt in settings:
                cfg = recipe_config(recipe, backbone, method, overrides={"checkpoint_full_resolution": ckpt})
                variants[f"{recipe}/{method}{suffix}"] = (
                    lambda cfg=cfg: build_for_count(backbone, kwargs, cfg),
                    lambda m, x: m(x, CTPET))
    return variants, model_cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", help="size preset (default paper)")
    p.add_argument("--backbones", nargs="+", default=["unetr"], choices=["unetr", "swin_unetr"])
    p.add_argument("--recipes", nargs="+", default=["pemma", "authors"], choices=["pemma", "authors"])
    p.add_argument("--methods", nargs="+", default=["lora", "dora"], choices=["lora", "dora"])
    p.add_argument("--no-keep", action="store_true", help="skip the -keep variants (no checkpointing)")
    p.add_argument("--modules", action="store_true", help="print the per-module table of each variant")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for backbone in args.backbones:
        variants, model_cfg = build_variants(backbone, args.preset, args.recipes, args.methods, not args.no_keep)
        batch_size = build_config(args.preset).train.batch_size
        roi = list(model_cfg.roi_size)
        print(f"\n[{args.preset}/{backbone}] roi {roi}, batch {batch_size}, {constructor_kwargs(model_cfg, 1)}")
        print("| variant | forward GFLOP | backward GFLOP | step GFLOP | step / EF | trained params |")
        print("|---|---|---|---|---|---|")
        ef_total = None
        tables = {}
        for name, (build, call) in variants.items():
            t0 = time.perf_counter()
            model = build().train().to("meta")  # Swin UNETR is built with real tensors: counted on meta all the same
            batch = torch.zeros((batch_size, 2, *roi), device="meta")
            counted = count_step(model, call, batch)
            total = counted["forward"] + counted["backward"]
            ef_total = total if ef_total is None else ef_total
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"| {name} | {counted['forward'] / GIGA:,.0f} | {counted['backward'] / GIGA:,.0f} | "
                  f"{total / GIGA:,.0f} | {total / ef_total:.2f} | {trained / 1e6:.2f} M |"
                  f"  <!-- {time.perf_counter() - t0:.0f} s -->")
            tables[name] = counted
            del model
        if args.modules:
            names = list(tables)
            mods = sorted({m for counted in tables.values() for m in counted["forward_by_module"]})
            print("\nforward GFLOP per top-level part (the backward is counted whole: torch's module tracker "
                  "misplaces recomputed and wrapped modules)")
            print("| part | " + " | ".join(names) + " |")
            print("|---" * (len(names) + 1) + "|")
            for mod in mods:
                cells = [f"{tables[n]['forward_by_module'].get(mod, 0) / GIGA:,.1f}" for n in names]
                print(f"| {mod} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
