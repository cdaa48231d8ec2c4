"""Prognosis verbs: ``pemma survival train | adapt | evaluate | predict | chain``.

::

    pemma survival train --base runs/ct_unetr --data data/phantom --modalities ct --head mtlr --out runs/surv_ct
    pemma survival adapt --model runs/surv_ct --add-modality pet --method lora --out runs/surv_ctpet
    pemma survival adapt --model runs/surv_ctpet --add-ehr --method lora --out runs/surv_ctpet_ehr
    pemma survival evaluate --model runs/surv_ctpet_ehr --data data/phantom --centres MDA
    pemma survival predict --model runs/surv_ctpet_ehr --data data/phantom --out risk.csv
"""

from __future__ import annotations

import argparse

from pemma.cli.options import add_device_flags, add_field_flag, add_training_flags, counted, training_settings
from pemma.config import DataConfig
from pemma.survival.config import SurvivalConfig
from pemma.vocab import SURVIVAL_HEADS, adapter_choices


def _table_flags(p: argparse.ArgumentParser, endpoints: bool = True, clinical: bool = True) -> None:
    if endpoints:
        p.add_argument("--endpoints", help="endpoint CSV (default: hecktor2022_endpoint_training.csv under --data)")
    if clinical:
        p.add_argument("--clinical", help="clinical CSV (default: hecktor2022_clinical_info_*.csv under --data)")


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("survival", help="prognosis (recurrence-free survival): train, adapt, evaluate, predict, "
                                          "chain",
                         description="Recurrence-free survival: train / adapt / evaluate / predict a head on a "
                                     "segmentation backbone's pooled encoder features (CT -> +PET -> +EHR: train "
                                     "fits the head on the frozen CT encoder, adapt adds PET adapters and / or "
                                     "the clinical vector), or chain a ridge Cox model over lesion features of the "
                                     "model's own segmentation.")
    verbs = top.add_subparsers(dest="survival_verb", required=True, metavar="ACTION")

    p = verbs.add_parser("train", help="train a survival head on the frozen encoder of a segmentation run")
    p.add_argument("--base", required=True, help="segmentation run folder of `pemma train` (e.g. CT-only)")
    p.add_argument("--data", required=True, help="dataset folder with images and the endpoint CSV")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", default="ct", help="inputs; must be the segmentation run's (default ct)")
    add_field_flag(p, SurvivalConfig, "head", choices=SURVIVAL_HEADS)
    for name in ("bins", "l2"):
        add_field_flag(p, SurvivalConfig, name)
    p.add_argument("--out", required=True, help="prognosis run folder")
    _table_flags(p, clinical=False)
    add_training_flags(p, amp=False, preset_of="--base")  # the survival stages run in fp32
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("adapt", help="add PET and/or clinical data to a prognosis model with LoRA / DoRA")
    p.add_argument("--model", required=True, help="prognosis run folder to extend (left unchanged)")
    p.add_argument("--data", help="dataset folder (default: the one the model was trained on)")
    p.add_argument("--centres", help="comma-separated centres (default: as the model was trained when --data is "
                                     "not given, else all)")
    add_field_flag(p, SurvivalConfig, "add_modality", choices=["pet"])
    add_field_flag(p, SurvivalConfig, "add_ehr")
    add_field_flag(p, SurvivalConfig, "method", choices=adapter_choices())
    for name in ("rank", "alpha"):
        add_field_flag(p, SurvivalConfig, name)
    p.add_argument("--numeric-column", action="append", metavar="NAME",
                   help="numeric clinical column (repeat the flag; default Age, Weight)")
    p.add_argument("--categorical-column", action="append", metavar="NAME",
                   help="categorical clinical column, exact CSV name (repeat; default Gender, Tobacco, Alcohol, "
                        "Performance status, HPV status (0=-, 1=+), Surgery, Chemotherapy)")
    for name in ("l2", "encoder_lr_scale"):
        add_field_flag(p, SurvivalConfig, name)
    p.add_argument("--init-adapters", metavar="RUN",
                   help="start the adapters and PET pathway from this PEMMA segmentation run (`pemma adapt` on the "
                        "same base) when adding PET")
    p.add_argument("--freeze-adapters", action="store_true",
                   help="keep existing (or --init-adapters) adapters fixed: train only the head and clinical "
                        "projection, on image features computed once")
    p.add_argument("--base", help="segmentation base run, if it moved since training")
    p.add_argument("--out", required=True, help="new prognosis run folder")
    _table_flags(p)
    add_training_flags(p, amp=False, preset_of="--model")  # the survival stages run in fp32
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
    add_field_flag(p, DataConfig, "cache_dir")
    _table_flags(p)
    add_device_flags(p, amp=False)
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("predict", help="HECKTOR Task-2 CSV: PatientID,Prediction (risk, higher = earlier)")
    p.add_argument("--model", required=True, help="prognosis run folder")
    p.add_argument("--data", required=True, help="dataset folder (images [+ clinical CSV])")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--base", help="segmentation base run, if it moved")
    add_field_flag(p, DataConfig, "cache_dir")
    _table_flags(p, endpoints=False)
    add_device_flags(p, amp=False)
    p.set_defaults(func=cmd_predict)

    from pemma.cli.survival_chain import register as register_chain
    register_chain(verbs)


def _print_summary(out: str, summary: dict) -> None:
    from pemma.survival.training import scored_text

    print(f"{out}: stage {summary['stage']}, {counted(summary['steps'], 'step')}, trainable parameters "
          f"{summary['trainable']:,} of {summary['total']:,}; C-index train "
          f"{scored_text(summary['train_c_index'], summary.get('n_train'), summary.get('events_train'))}, "
          f"validation {scored_text(summary['val_c_index'], summary.get('n_val'), summary.get('events_val'))}")


def cmd_train(args: argparse.Namespace) -> int:
    from pemma.api import survival_train

    run = survival_train(args.base, args.data, args.out, centres=args.centres, modalities=args.modalities,
                         head=args.head, bins=args.bins, l2=args.l2, endpoints=args.endpoints,
                         **training_settings(args))
    _print_summary(args.out, run.summary)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from pemma.api import survival_adapt

    run = survival_adapt(args.model, args.out, data=args.data, centres=args.centres, add_modality=args.add_modality,
                         add_ehr=args.add_ehr, method=args.method, rank=args.rank, alpha=args.alpha,
                         numeric_column=args.numeric_column, categorical_column=args.categorical_column, l2=args.l2,
                         encoder_lr_scale=args.encoder_lr_scale, init_adapters=args.init_adapters,
                         freeze_adapters=args.freeze_adapters, base=args.base, endpoints=args.endpoints,
                         clinical=args.clinical, **training_settings(args))
    _print_summary(args.out, run.summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pemma.api import survival_evaluate

    res = survival_evaluate(args.model, args.data, centres=args.centres, split=args.split, out=args.out,
                            bootstrap=args.bootstrap, seed=args.seed, base=args.base, cache_dir=args.cache_dir,
                            endpoints=args.endpoints, clinical=args.clinical, device=args.device)
    p = "n/a" if res["logrank_p"] is None else f"{res['logrank_p']:.3g}"
    print(f"stage {res['stage']} on {', '.join(res['centres'])} ({res['split']} cases): {res['text']}")
    print(f"risk groups split at the training median {res['risk_threshold']:.4g}: {res['high_risk']} high-risk, "
          f"{res['n_cases'] - res['high_risk']} low-risk; log-rank p = {p}")
    print(f"cases: {res['skipped']}")  # "N cases with images and endpoints; skipped ..."
    print(f"report: {res['report']}; Kaplan-Meier plot: {res['km_plot']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pemma.api import survival_predict

    res = survival_predict(args.model, args.data, args.out, centres=args.centres, base=args.base,
                           cache_dir=args.cache_dir, clinical=args.clinical, device=args.device)
    print(f"wrote {res['n']} risk scores ({res['stage']} model) to {res['path']}")
    return 0
