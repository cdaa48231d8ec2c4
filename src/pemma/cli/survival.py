"""Prognosis verbs: ``pemma survival train | adapt | evaluate | predict``.

::

    pemma survival train --base runs/ct_unetr --data data/phantom --modalities ct --head mtlr --out runs/surv_ct
    pemma survival adapt --model runs/surv_ct --add-modality pet --method lora --out runs/surv_ctpet
    pemma survival adapt --model runs/surv_ctpet --add-ehr --method lora --out runs/surv_ctpet_ehr
    pemma survival evaluate --model runs/surv_ctpet_ehr --data data/phantom --centres MDA
    pemma survival predict --model runs/surv_ctpet_ehr --data data/phantom --out risk.csv
"""

from __future__ import annotations

import argparse

from pemma.cli.options import add_device_flags, add_training_flags, parse_centres, run_config_from_args
from pemma.errors import PemmaError
from pemma.training.logs import run_logger


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table_flags(p: argparse.ArgumentParser, endpoints: bool = True, clinical: bool = True) -> None:
    if endpoints:
        p.add_argument("--endpoints", help="endpoint CSV (default: hecktor2022_endpoint_training.csv under --data)")
    if clinical:
        p.add_argument("--clinical", help="clinical CSV (default: hecktor2022_clinical_info_*.csv under --data)")


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("survival", help="prognosis (recurrence-free survival): train, adapt, evaluate, predict",
                         description="Recurrence-free survival from a segmentation backbone's pooled encoder "
                                     "features: CT -> +PET -> +EHR, each step training adapters only.")
    verbs = top.add_subparsers(dest="survival_verb", required=True, metavar="ACTION")

    p = verbs.add_parser("train", help="train a survival head on the frozen encoder of a segmentation run")
    p.add_argument("--base", required=True, help="segmentation run folder of `pemma train` (e.g. CT-only)")
    p.add_argument("--data", required=True, help="dataset folder with images and the endpoint CSV")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", default="ct", help="inputs; must be the segmentation run's (default ct)")
    p.add_argument("--head", choices=["mtlr", "cox"], default="mtlr", help="survival head (default mtlr)")
    p.add_argument("--bins", type=int, help="MTLR time bins (default: sqrt of the training relapses)")
    p.add_argument("--l2", type=float, default=0.1, help="L2 penalty on the head's weights (default 0.1)")
    p.add_argument("--out", required=True, help="prognosis run folder")
    _table_flags(p, clinical=False)
    add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("adapt", help="add PET and/or clinical data to a prognosis model with LoRA / DoRA")
    p.add_argument("--model", required=True, help="prognosis run folder to extend (left unchanged)")
    p.add_argument("--data", help="dataset folder (default: the one the model was trained on)")
    p.add_argument("--centres", help="comma-separated centres (default: as the model was trained)")
    p.add_argument("--add-modality", choices=["pet"], help="image modality to add through the PEMMA PET pathway")
    p.add_argument("--add-ehr", action="store_true", help="add the clinical vector (projected, zero-initialised)")
    p.add_argument("--method", choices=["lora", "dora"], help="adapters (default: the model's, else lora)")
    p.add_argument("--rank", type=int, default=4, help="adapter rank for new adapters (default 4)")
    p.add_argument("--alpha", type=float, default=8.0, help="adapter alpha for new adapters (default 8)")
    p.add_argument("--numeric-column", action="append", metavar="NAME",
                   help="numeric clinical column (repeat the flag; default Age, Weight)")
    p.add_argument("--categorical-column", action="append", metavar="NAME",
                   help="categorical clinical column, exact CSV name (repeat; default Gender, Tobacco, Alcohol, "
                        "Performance status, HPV status (0=-, 1=+), Surgery, Chemotherapy)")
    p.add_argument("--l2", type=float, default=0.1,
                   help="L2 penalty on the head's and clinical projection's weights (default 0.1)")
    p.add_argument("--encoder-lr-scale", type=float, default=0.1,
                   help="learning rate of adapters and PET pathway relative to --lr (default 0.1)")
    p.add_argument("--init-adapters", metavar="RUN",
                   help="start the adapters and PET pathway from this PEMMA segmentation run (`pemma adapt` on the "
                        "same base) when adding PET")
    p.add_argument("--freeze-adapters", action="store_true",
                   help="keep existing (or --init-adapters) adapters fixed: train only the head and clinical "
                        "projection, on image features computed once")
    p.add_argument("--base", help="segmentation base run, if it moved since training")
    p.add_argument("--out", required=True, help="new prognosis run folder")
    _table_flags(p)
    add_training_flags(p)
    p.set_defaults(func=cmd_adapt)

    p = verbs.add_parser("evaluate", help="C-index with bootstrap CI and Kaplan-Meier plot of risk groups")
    p.add_argument("--model", required=True, help="prognosis run folder")
    p.add_argument("--data", required=True, help="dataset folder with images and the endpoint CSV")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="all cases of --data (default), or only the model's training / held-out cases")
    p.add_argument("--out", help="report folder (default: <model>/evaluation)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--base", help="segmentation base run, if it moved")
    p.add_argument("--cache-dir", help="persistent preprocessing cache folder")
    _table_flags(p)
    add_device_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("predict", help="HECKTOR Task-2 CSV: PatientID,Prediction (risk, higher = earlier)")
    p.add_argument("--model", required=True, help="prognosis run folder")
    p.add_argument("--data", required=True, help="dataset folder (images [+ clinical CSV])")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--base", help="segmentation base run, if it moved")
    p.add_argument("--cache-dir", help="persistent preprocessing cache folder")
    _table_flags(p, endpoints=False)
    add_device_flags(p)
    p.set_defaults(func=cmd_predict)


def _check_geometry(args: argparse.Namespace, model_cfg, preprocess_cfg, source: str) -> None:
    """--roi / --spacing, if given, must be what the encoder was trained with."""
    if args.roi is not None and [int(v) for v in args.roi] != list(model_cfg.roi_size):
        raise PemmaError(f"{source}: --roi {args.roi} differs from the segmentation run's {model_cfg.roi_size}")
    if args.spacing is not None and [float(v) for v in args.spacing] != list(preprocess_cfg.target_spacing):
        raise PemmaError(f"{source}: --spacing {args.spacing} differs from the segmentation run's "
                         f"{preprocess_cfg.target_spacing}")


def _print_summary(out: str, summary: dict) -> None:
    print(f"{out}: stage {summary['stage']}, {summary['steps']} steps, trainable parameters "
          f"{summary['trainable']:,} of {summary['total']:,}; C-index train {_fmt(summary['train_c_index'])}, "
          f"validation {_fmt(summary['val_c_index'])}")


def cmd_train(args: argparse.Namespace) -> int:
    from pemma.models.loading import load_model
    from pemma.survival.config import survival_settings
    from pemma.survival.training import train_survival

    base = load_model(args.base)
    _check_geometry(args, base.config.model, base.config.preprocess, args.base)
    cfg = run_config_from_args(args)
    settings = survival_settings(head=args.head, bins=args.bins, l2=args.l2)
    summary = train_survival(args.base, cfg, args.out, settings, endpoints=args.endpoints, resume=args.resume)
    _print_summary(args.out, summary)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from pemma.config import RunConfig
    from pemma.survival.clinical import ClinicalConfig
    from pemma.survival.config import survival_settings
    from pemma.survival.runs import read_meta
    from pemma.survival.training import adapt_survival
    from pemma.training.checkpoint import CONFIG_FILE

    settings = survival_settings(add_modality=args.add_modality, add_ehr=args.add_ehr, method=args.method,
                                 rank=args.rank, alpha=args.alpha, encoder_lr_scale=args.encoder_lr_scale, l2=args.l2,
                                 train_adapters=not args.freeze_adapters)
    read_meta(args.model)
    prev_cfg = RunConfig.load(f"{args.model}/{CONFIG_FILE}")
    _check_geometry(args, prev_cfg.model, prev_cfg.preprocess, args.model)
    args.data = args.data or prev_cfg.data.root
    if args.centres is None and prev_cfg.data.centres:
        args.centres = ",".join(prev_cfg.data.centres)
    clinical_config = None
    if args.numeric_column is not None or args.categorical_column is not None:
        try:
            clinical_config = ClinicalConfig(numeric=tuple(args.numeric_column or ()),
                                             categorical=tuple(args.categorical_column or ()))
        except ValueError as exc:
            raise PemmaError(f"invalid clinical columns: {exc}") from None
    cfg = run_config_from_args(args)
    summary = adapt_survival(args.model, cfg, args.out, settings, clinical_config=clinical_config,
                             endpoints=args.endpoints, clinical=args.clinical, base_run=args.base,
                             init_adapters=args.init_adapters, resume=args.resume)
    _print_summary(args.out, summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pemma.survival.evaluate import evaluate_survival

    if args.bootstrap < 1:
        raise PemmaError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    run_logger(None)  # notes (skips, unseen clinical categories) go to stderr
    res = evaluate_survival(args.model, args.data, centres=parse_centres(args.centres) or None, out_dir=args.out,
                            device=args.device or "auto", n_bootstrap=args.bootstrap, seed=args.seed,
                            endpoints=args.endpoints, clinical=args.clinical, base_run=args.base,
                            cache_dir=args.cache_dir, split=args.split)
    p = "n/a" if res["logrank_p"] is None else f"{res['logrank_p']:.3g}"
    print(f"stage {res['stage']} on {', '.join(res['centres'])} ({res['split']} cases): {res['text']}")
    print(f"risk groups split at the training median {res['risk_threshold']:.4g}: {res['high_risk']} high-risk, "
          f"{res['n_cases'] - res['high_risk']} low-risk; log-rank p = {p}")
    print(f"skipped: {res['skipped']}")
    print(f"report: {res['report']}; Kaplan-Meier plot: {res['km_plot']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pemma.survival.evaluate import predict_survival

    run_logger(None)
    res = predict_survival(args.model, args.data, args.out, centres=parse_centres(args.centres) or None,
                           device=args.device or "auto", clinical=args.clinical, base_run=args.base,
                           cache_dir=args.cache_dir)
    print(f"wrote {res['n']} risk scores ({res['stage']} model) to {res['path']}")
    return 0
