"""``pemma demo``: the default phantom + ``pemma reproduce`` with the shipped demo strategy (CPU, tiny preset)."""

from __future__ import annotations

import argparse

from pemma.cli.options import add_amp_choice, add_workers_choice, amp_choice
from pemma.vocab import BACKBONES, PHANTOM_DIFFICULTIES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="default phantom + the demo protocol (pretrain, adapt, PET update, prognosis)",
                       description="Generates the default phantom and runs `pemma reproduce --strategy demo` on it "
                                   "(tiny preset; 8-18 minutes wall on 2-core development machines, "
                                   "README: how long it takes), then prints the report.")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--seed", type=int, action="append",
                   help="split and training seed (default 0); repeat for several seeds and a summary (seeds.md)")
    p.add_argument("--strategy", default="demo", help="strategy file or shipped name (default: demo)")
    p.add_argument("--preset", help="override the strategy's preset (tiny)")
    p.add_argument("--backbone", choices=BACKBONES, help="override the strategy's backbone (unetr)")
    p.add_argument("--exclude-bad-cases", action="store_true",
                   help="leave out the cases that fail the data check (listed in excluded_cases.json) instead of "
                        "stopping before any training")
    p.add_argument("--max-steps", type=int, help="bound the training steps of every phase (quick trials)")
    p.add_argument("--difficulty", choices=PHANTOM_DIFFICULTIES, default="normal",
                   help="phantom difficulty (default normal; hard: see `pemma synth --help`)")
    add_amp_choice(p)
    add_workers_choice(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pemma.api import demo

    report = demo(args.out, seed=args.seed, preset=args.preset, max_steps=args.max_steps, backbone=args.backbone,
                  strategy=args.strategy, exclude_bad_cases=args.exclude_bad_cases, difficulty=args.difficulty,
                  amp=amp_choice(args), workers=args.workers)
    print(report.read_text())
    print(f"report: {report}")
    return 0
