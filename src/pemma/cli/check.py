"""``pemma check``: validate a whole dataset before any training (one line per problem, then a summary)."""

from __future__ import annotations

import argparse
import json

from pemma.cli.options import add_field_flag, counted
from pemma.config import DataConfig
from pemma.vocab import REGISTER_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate every case of a dataset before training",
                       description="Reads every case once: files readable, finite, 3-D, invertible geometry; label "
                                   "values {0, 1, 2}; PET covering the CT; label grid overlapping the CT; endpoint "
                                   "and clinical tables. Prints one line per problem and a summary; exit 1 when any "
                                   "case is bad.")
    p.add_argument("data", help="HECKTOR folder, nnU-Net raw folder, datalist JSON or a folder (tree) of DICOM series")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", help="images every case must have, e.g. ct,pet (default: what each case has)")
    p.add_argument("--endpoints", help="endpoint CSV (default: found under DATA)")
    p.add_argument("--clinical", help="clinical CSV (default: found under DATA)")
    p.add_argument("--registration", action="store_true",
                   help="per case and registered modality (PET, MR...; not dose, which is on the CT grid), how well "
                        "it and the CT agree (mutual information, body-mask Dice) on the header geometry, and after "
                        "--register when given")
    p.add_argument("--register", choices=[m for m in REGISTER_MODES if m != "none"],
                   help="register each PET (MR...) to its CT as training with --register would, and report the "
                        "agreement after it too (implies --registration; overrides the mode of --model / --preset / "
                        "--config)")
    p.add_argument("--model", metavar="RUN",
                   help="register with this run's preprocessing (its registration mode and settings, CT window, PET "
                        "range), as predicting with it or adapting from it would; a run trained with --register "
                        "implies --registration")
    p.add_argument("--preset", help="register with this size preset's preprocessing (tiny or paper; default: the "
                                    "default preprocessing); with --model, its registration settings over the run's")
    p.add_argument("--config", help="YAML config whose preprocess section registers (over --preset); with --model, "
                                    "its registration settings over the run's")
    add_field_flag(p, DataConfig, "roi_names")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("convert-dicom", help="write a DICOM tree as a HECKTOR-layout NIfTI dataset",
                       description="One case per patient and study: CT in HU, PET in SUVbw, the label of the case's "
                                   "RTSTRUCT / DICOM-SEG on the CT grid (out/imagesTr/<case>__CT.nii.gz, __PT.nii.gz, "
                                   "out/labelsTr/<case>.nii.gz).")
    p.add_argument("data", help="a folder (tree) of DICOM CT / PET series with RTSTRUCT or SEG files")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--force", action="store_true",
                   help="replace files of --out named like a converted case's (default: an error, nothing written)")
    add_field_flag(p, DataConfig, "roi_names")
    p.set_defaults(func=cmd_convert_dicom)


def cmd_check(args: argparse.Namespace) -> int:
    from pemma.api import check

    report = check(args.data, centres=args.centres, modalities=args.modalities, endpoints=args.endpoints,
                   clinical=args.clinical, progress=not args.json, registration=args.registration,
                   register=args.register, model=args.model, preset=args.preset, config=args.config,
                   roi_names=args.roi_names)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "lines"}, indent=2))
    else:
        print("\n".join(report["lines"]))
    return 1 if report["bad_cases"] else 0


def cmd_convert_dicom(args: argparse.Namespace) -> int:
    from pemma.api import convert_dicom

    written = convert_dicom(args.data, args.out, roi_names=args.roi_names, force=args.force)
    print(f"wrote {counted(len(written), 'case')} to {args.out}")
    return 0
