"""Argument groups shared by the CLI verbs (every training verb takes the same training flags)."""

from __future__ import annotations

import argparse
from typing import Any

from pemma.config import RunConfig, build_config


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--preset", default="tiny", help="size preset: tiny (CPU, tests) or paper (default: tiny)")
    g.add_argument("--config", help="YAML with data/preprocess/model/train sections (overrides the preset)")
    g.add_argument("--seed", type=int, help="seed of weights, split and crops (default 0)")
    g.add_argument("--epochs", type=int, help="passes over the training cases")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (quick trials, tests)")
    g.add_argument("--batch-size", type=int, help="crops per step per process")
    g.add_argument("--lr", type=float, help="AdamW learning rate")
    g.add_argument("--val-every", type=int, help="validate every N epochs")
    g.add_argument("--checkpoint-every", type=int, help="resumable checkpoint every N steps")
    g.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="crop / window size in voxels")
    g.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="target spacing in mm")
    g.add_argument("--val-fraction", type=float, help="validation share per centre (default 0.2)")
    g.add_argument("--cache-dir", help="persistent preprocessing cache folder (default: in memory)")
    g.add_argument("--num-workers", type=int, help="DataLoader workers")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_device_flags(parser)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (GPU memory)")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--amp", action="store_true", help="mixed precision")


def add_window_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sliding window")
    g.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="window size (default: trained roi)")
    g.add_argument("--overlap", type=float, help="window overlap (default: as trained)")
    g.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    add_device_flags(g)


def run_config_from_args(args: argparse.Namespace, **extra: dict[str, Any]) -> RunConfig:
    """Preset < --config < flags."""
    overrides: dict[str, dict[str, Any]] = {
        "data": {"root": getattr(args, "data", None), "centres": _csv(getattr(args, "centres", None)),
                 "modalities": getattr(args, "modalities", None), "val_fraction": args.val_fraction,
                 "cache_dir": args.cache_dir, "num_workers": args.num_workers},
        "preprocess": {"target_spacing": args.spacing},
        "model": {"backbone": getattr(args, "backbone", None), "roi_size": args.roi,
                  "gradient_checkpointing": args.gradient_checkpointing or None},
        "train": {"seed": args.seed, "epochs": args.epochs, "max_steps": args.max_steps,
                  "batch_size": args.batch_size, "lr": args.lr, "val_every": args.val_every,
                  "checkpoint_every": args.checkpoint_every, "device": args.device, "amp": args.amp or None},
    }
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    return build_config(args.preset, args.config, overrides)


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def parse_centres(value: str | None) -> list[str]:
    return _csv(value) or []
