"""``pemma demo``: the embedded default run on CPU."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="phantom + CT-only vs CT+PET training + evaluation (tiny preset, CPU)")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--preset", default="tiny", help="size preset (default: tiny)")
    p.add_argument("--backbone", choices=["unetr", "swin_unetr"], default="unetr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="bound the training steps of each run")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pemma.demo import run_demo

    run_demo(args.out, preset=args.preset, seed=args.seed, max_steps=args.max_steps, backbone=args.backbone)
    return 0
