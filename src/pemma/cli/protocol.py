"""``pemma reproduce``: the paper's protocol from a strategy file."""

from __future__ import annotations

import argparse

from pemma.cli.options import add_amp_choice, add_workers_choice, amp_choice
from pemma.vocab import BACKBONES, CT_ROUTES, RECIPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run a strategy (pretrain -> adapt -> updates) for every method",
                       description="Runs every phase of the strategy for PEMMA (LoRA, DoRA), early fusion, late "
                                   "fusion and full fine-tuning, evaluates every centre seen so far with CT, PET "
                                   "and CT+PET after each phase, and writes results.csv/json, report.md and "
                                   "figures. Finished phases are not recomputed.")
    p.add_argument("--strategy", required=True,
                   help="strategy YAML (e.g. strategies/hecktor2022.yaml) or a shipped name: hecktor2022, demo")
    p.add_argument("--data", required=True, help="HECKTOR folder, nnU-Net raw folder or datalist")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--backbone", action="append", choices=BACKBONES,
                   help="override the strategy's backbones (repeatable)")
    p.add_argument("--preset", help="override the strategy's preset")
    p.add_argument("--exclude-bad-cases", action="store_true",
                   help="leave out the cases that fail the data check (listed in excluded_cases.json) instead of "
                        "stopping before any training")
    p.add_argument("--max-steps", type=int, help="bound every phase's training steps (quick trials)")
    p.add_argument("--variant", action="append", help="run only these variants (repeatable)")
    p.add_argument("--method", action="append", help="run only these methods (repeatable): pemma_lora, pemma_dora, "
                                                     "early_fusion, late_fusion, full_finetune")
    p.add_argument("--seed", type=int, help="override the strategy's split seed (also the training seed)")
    p.add_argument("--ct-route", action="append", choices=CT_ROUTES,
                   help="run the PEMMA methods with only these CT routes (repeatable), replacing the strategy's "
                        "routes: exact (CT-only input runs the untouched CT base) or shared (the paper's: through "
                        "the adapted network)")
    p.add_argument("--recipe", action="append", choices=RECIPES,
                   help="run the PEMMA methods with only these recipes (repeatable), replacing the strategy's "
                        "recipes: pemma (pemma's defaults) or authors (the paper's released configuration)")
    add_amp_choice(p)
    add_workers_choice(p)
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from pemma.api import reproduce

    report = reproduce(args.strategy, args.data, args.out, backbone=args.backbone, preset=args.preset,
                       max_steps=args.max_steps, variant=args.variant, method=args.method, seed=args.seed,
                       exclude_bad_cases=args.exclude_bad_cases, ct_route=args.ct_route, recipe=args.recipe,
                       amp=amp_choice(args), workers=args.workers)
    print(report.read_text())
    print(f"report: {report}")
    return 0
