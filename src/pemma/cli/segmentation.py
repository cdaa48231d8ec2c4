"""Segmentation verbs: ``synth``, ``train``, ``predict``, ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pemma.cli.options import add_training_flags, add_window_flags, parse_centres, run_config_from_args
from pemma.errors import PemmaError
from pemma.vocab import BACKBONES, parse_modalities


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
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a segmentation backbone (CT-only, or CT+PET early fusion)",
                       description="Train MONAI UNETR / Swin UNETR on the given centres and modalities.")
    p.add_argument("--data", required=True, help="HECKTOR folder, nnU-Net raw folder or datalist JSON")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", default="ct", help="ct, pet or ct,pet (early fusion); default ct")
    p.add_argument("--backbone", choices=BACKBONES, default=None, help="default unetr")
    p.add_argument("--out", required=True, help="run folder")
    add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="label NIfTI per case in the original CT geometry")
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--input", required=True, help="CT file, folder of images, dataset folder or datalist")
    p.add_argument("--out", required=True, help="output folder for <case>.nii.gz")
    p.add_argument("--modalities", help="input set (default: what the model was trained with)")
    p.add_argument("--centres", help="only these centres")
    p.add_argument("--base", help="CT base run of an adapted model, if it moved since adaptation")
    add_window_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="HECKTOR DSCagg, per-case Dice and HD95 on labelled cases")
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--data", required=True, help="dataset folder or datalist")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", help="input set (default: what the model was trained with)")
    p.add_argument("--out", help="report folder (default: <model>/evaluation)")
    p.add_argument("--save-predictions", action="store_true", help="also write the label maps")
    p.add_argument("--base", help="CT base run of an adapted model, if it moved since adaptation")
    add_window_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    from pemma.data.phantom import PhantomConfig, synthesize_phantom

    kwargs = {"cases_per_centre": args.cases_per_centre, "ct_shape": args.shape, "ct_spacing": args.ct_spacing,
              "oblique_degrees": args.oblique_degrees, "seed": args.seed,
              "centres": tuple(parse_centres(args.centres)) or None}
    try:
        config = PhantomConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in kwargs.items() if v is not None})
    except ValueError as exc:
        raise PemmaError(f"invalid phantom settings: {exc}") from None
    ids = synthesize_phantom(args.out, config)
    print(f"wrote {len(ids)} cases to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pemma.training.segmentation import train

    cfg = run_config_from_args(args)
    summary = train(cfg, args.out, resume=args.resume)
    print(f"{args.out}: {summary['steps']} steps, best validation mean DSCagg {summary['best_dsc']:.4f}")
    return 0


def _window(args: argparse.Namespace):
    from pemma.inference.predict import WindowSettings

    return WindowSettings(roi_size=args.roi, overlap=args.overlap, sw_batch_size=args.sw_batch_size, amp=args.amp)


def _model_and_inputs(args: argparse.Namespace, source: str):
    from pemma.methods.loading import load_model
    from pemma.runtime import resolve_device

    device = resolve_device(args.device or "auto")
    model = load_model(args.model, device, base_run=args.base)
    modalities = parse_modalities(args.modalities) if args.modalities else model.input_sets[0]
    model.check_inputs(modalities, source)
    return model, modalities, device


def cmd_predict(args: argparse.Namespace) -> int:
    from pemma.data.layout import discover_cases, select_cases
    from pemma.inference.predict import predict_cases

    model, modalities, device = _model_and_inputs(args, str(args.input))
    cases = select_cases(discover_cases(args.input), centres=parse_centres(args.centres), modalities=modalities,
                         source=str(args.input))
    written = predict_cases(model, cases, modalities, args.out, device, _window(args))
    print(f"wrote {len(written)} label maps to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pemma.data.layout import discover_cases, select_cases
    from pemma.evaluation.evaluate import evaluate_model, format_summary, write_report

    model, modalities, device = _model_and_inputs(args, str(args.data))
    cases = select_cases(discover_cases(args.data), centres=parse_centres(args.centres), modalities=modalities,
                         require_label=True, source=str(args.data))
    out = Path(args.out or Path(args.model) / "evaluation")
    result = evaluate_model(model, cases, modalities, device, _window(args),
                            predictions_dir=out / f"predictions_{'+'.join(modalities)}" if args.save_predictions
                            else None)
    result["centres"] = sorted({c.centre for c in cases})
    json_path, csv_path = write_report(result, out)
    print(format_summary(result))
    print(f"report: {json_path} and {csv_path}")
    return 0
