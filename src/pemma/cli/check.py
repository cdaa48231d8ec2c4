"""``pemma check``: validate a whole dataset before any training (one line per problem, then a summary)."""

from __future__ import annotations

import argparse
import json

from pemma.vocab import REGISTER_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate every case of a dataset before training",
                       description="Reads every case once: files readable, finite, 3-D, invertible geometry; label "
                                   "values {0, 1, 2}; PET covering the CT; label grid overlapping the CT; endpoint "
                                   "and clinical tables. Prints one line per problem and a summary; exit 1 when any "
                                   "case is bad.")
    p.add_argument("data", help="HECKTOR folder, nnU-Net raw folder or datalist JSON")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", help="images every case must have, e.g. ct,pet (default: what each case has)")
    p.add_argument("--endpoints", help="endpoint CSV (default: found under DATA)")
    p.add_argument("--clinical", help="clinical CSV (default: found under DATA)")
    p.add_argument("--registration", action="store_true",
                   help="per CT+PET case, how well PET and CT agree (mutual information, body-mask Dice) on the header "
                        "geometry, and after --register when given")
    p.add_argument("--register", choices=[m for m in REGISTER_MODES if m != "none"],
                   help="register each PET to its CT as training with --register would, and report the agreement "
                        "after it too (implies --registration; overrides the mode of --model / --preset / --config)")
    p.add_argument("--model", metavar="RUN",
                   help="register with this run's preprocessing (its registration mode and settings, CT window, PET "
                        "range), as predicting with it or adapting from it would; a run trained with --register "
                        "implies --registration")
    p.add_argument("--preset", help="register with this size preset's preprocessing (tiny or paper; default: the "
                                    "default preprocessing); with --model, its registration settings over the run's")
    p.add_argument("--config", help="YAML config whose preprocess section registers (over --preset); with --model, "
                                    "its registration settings over the run's")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from pemma.api import check

    report = check(args.data, centres=args.centres, modalities=args.modalities, endpoints=args.endpoints,
                   clinical=args.clinical, progress=not args.json, registration=args.registration,
                   register=args.register, model=args.model, preset=args.preset, config=args.config)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "lines"}, indent=2))
    else:
        print("\n".join(report["lines"]))
    return 1 if report["bad_cases"] else 0
