"""Segmentation verbs: ``synth``, ``train``, ``predict``, ``evaluate`` (each parses, calls :mod:`pemma.api`, prints)."""

from __future__ import annotations

import argparse

from pemma.cli.options import (
    add_field_flag,
    add_training_flags,
    add_window_flags,
    counted,
    training_settings,
    window_settings,
)
from pemma.config import DataConfig, ModelConfig
from pemma.vocab import BACKBONES, PHANTOM_DIFFICULTIES, PRED_NUMBERINGS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a HECKTOR-2022-layout PET/CT phantom dataset",
                       description="Deterministic synthetic PET/CT head-and-neck dataset in the HECKTOR 2022 "
                                   "layout (imagesTr, labelsTr, clinical and endpoint CSVs).")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases-per-centre", type=int, default=None, help="cases per centre (default 12)")
    p.add_argument("--centres", help="comma-separated centres (default: the 7 HECKTOR training centres)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("I", "J", "K"), help="CT voxels")
    p.add_argument("--ct-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="CT spacing mm")
    p.add_argument("--oblique-degrees", type=float, default=None, help="rotate the image direction")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--difficulty", choices=PHANTOM_DIFFICULTIES, default=None,
                   help="normal (default) or hard: GTVp 0-25 HU over soft tissue, unlabelled PET hot spots and "
                        "reactive nodes, brown fat / muscle / stronger gland uptake; same labels and grids")
    p.add_argument("--modalities", default=None,
                   help="images to write: ct,pet (default), plus mr (an MR-like T2 channel ID__MR.nii.gz on its own "
                        "grid: soft-tissue contrast, visible tumour, smooth bias field) and / or dose (a planned RT "
                        "dose in Gy on the CT grid, ID__RTDOSE.nii.gz: about 70 Gy around the tumours, 54 Gy "
                        "elective region)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a segmentation backbone (CT-only, or CT+PET early fusion)",
                       description="Train MONAI UNETR / Swin UNETR on the given centres and modalities.")
    p.add_argument("--data", required=True, help="HECKTOR folder, nnU-Net raw folder, datalist JSON or DICOM tree "
                   "(CT / PET series, labels from RTSTRUCT or DICOM-SEG)")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", default="ct", help="ct, pet or ct,pet (early fusion), or with another modality "
                   "(mr, dose, or one declared in the config's preprocess.modality_specs), e.g. ct,mr; default ct")
    add_field_flag(p, ModelConfig, "backbone", choices=BACKBONES)
    p.add_argument("--out", required=True, help="run folder")
    add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="label NIfTI per case in the original CT geometry")
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--input", required=True, help=(
        "a dataset folder (HECKTOR or nnU-Net raw), an nnU-Net -i folder of <case>_0000 / _0001 files (imagesTs), "
        "a datalist JSON, a single image file, a folder of CT files of any names (.nii.gz, .mha, .nrrd), or a "
        "folder (tree) of DICOM CT / PET series"))
    p.add_argument("--out", required=True, help="output folder for <case>.nii.gz")
    p.add_argument("--rtstruct", action="store_true",
                   help="DICOM input: also write <case>_RTSTRUCT.dcm referencing the CT series (ROIs GTVp, GTVn)")
    p.add_argument("--modalities", help="input set (default: what the model was trained with)")
    p.add_argument("--centres", help="only these centres")
    p.add_argument("--base", help="CT base run of an adapted model, if it moved since adaptation")
    p.add_argument("--reference", default="ct", choices=["ct", "pet"], help=(
        "grid of PET-only predictions: ct (default; the case's CT grid when it has a CT, as HECKTOR scores; a run "
        "trained with --register maps them there through the case's registration) or pet"))
    add_window_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="HECKTOR DSCagg, per-case Dice and HD95 on labelled cases")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="run folder whose predictions are scored")
    source.add_argument("--pred", help="a folder of label maps <case_id>.nii.gz on the CT grid (no model is run)")
    p.add_argument("--data", required=True, help="dataset folder, datalist or DICOM tree (the labels)")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", help="input set (default: what the model was trained with)")
    p.add_argument("--split", default="all", choices=["all", "unseen", "val", "train"],
                   help="with --model: which cases (default all, with a warning when training cases are scored)")
    p.add_argument("--out", help="report folder (default: <model>/evaluation or <pred>/evaluation)")
    p.add_argument("--save-predictions", action="store_true", help="also write the label maps")
    p.add_argument("--base", help="CT base run of an adapted model, if it moved since adaptation")
    p.add_argument("--pred-labels", choices=PRED_NUMBERINGS,
                   help="with --pred on an nnU-Net dataset whose dataset.json numbers the labels otherwise than "
                        "pemma (GTVp 1, GTVn 2; required there): dataset (nnU-Net's predictions use its numbering) "
                        "or pemma (pemma predict's)")
    add_field_flag(p, DataConfig, "roi_names")
    add_window_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    from pemma.api import synth

    ids = synth(args.out, cases_per_centre=args.cases_per_centre, centres=args.centres, shape=args.shape,
                ct_spacing=args.ct_spacing, oblique_degrees=args.oblique_degrees, seed=args.seed,
                difficulty=args.difficulty, modalities=args.modalities)
    kind = f" ({args.difficulty} phantom)" if args.difficulty else ""
    print(f"wrote {counted(len(ids), 'case')} to {args.out}{kind}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pemma.api import train
    from pemma.training.loop import best_dsc_text

    run = train(args.data, args.out, centres=args.centres, modalities=args.modalities, backbone=args.backbone,
                **training_settings(args))
    print(f"{args.out}: {counted(run.summary['steps'], 'step')}, best validation mean DSCagg "
          f"{best_dsc_text(run.summary['best_dsc'])}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pemma.api import predict

    written = predict(args.model, args.input, args.out, modalities=args.modalities, centres=args.centres,
                      base=args.base, rtstruct=args.rtstruct, reference=args.reference, **window_settings(args))
    print(f"wrote {counted(len(written), 'label map')} to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pemma.api import evaluate
    from pemma.evaluation.evaluate import format_summary

    result = evaluate(args.model, args.data, pred=args.pred, centres=args.centres, modalities=args.modalities,
                      split=args.split, out=args.out, save_predictions=args.save_predictions, base=args.base,
                      roi_names=args.roi_names, pred_labels=args.pred_labels, **window_settings(args))
    print(format_summary(result))
    print(f"report: {result['report']['json']} and {result['report']['csv']}")
    return 0
