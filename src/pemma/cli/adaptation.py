"""Adaptation verbs: ``adapt`` (CT -> CT+PET with LoRA / DoRA), ``update``, ``params``, ``export``."""

from __future__ import annotations

import argparse
import json

from pemma.adapters.config import PET_ALONE_SKIPS, AdapterConfig
from pemma.cli.options import add_field_flag, add_training_flags, counted, training_settings
from pemma.vocab import BACKBONES, CT_ROUTES, EXPORT_FORMATS, RECIPES, VALIDATION_INPUTS, method_choices


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="add PET to a CT-only run with a PET pathway and LoRA / DoRA adapters",
                       description="PEMMA (arXiv 2504.13645): train adapters, the PET embedding and skip block on "
                                   "CT+PET cases with modality dropout; the CT base run is never modified.")
    p.add_argument("--base", required=True, help="CT-only run folder of `pemma train`")
    p.add_argument("--data", required=True, help="dataset folder, datalist or DICOM tree")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--add-modality", default="pet",
                   help="modality to add (default pet); with the PEMMA methods, early fusion and full fine-tuning "
                        "also mr, dose or a modality declared in the --config's preprocess.modality_specs; with "
                        "--base an adapted (PEMMA) run, it is stacked on that run (e.g. MR on a CT+PET run)")
    p.add_argument("--method", default="lora", choices=method_choices(), metavar="METHOD",
                   help="pemma_lora (alias lora, the default) | pemma_dora (dora): PEMMA; baselines: early_fusion "
                        "(2 channels from the CT model, all trained), full_finetune (full: PEMMA pathway, all "
                        "parameters trained), late_fusion (a PET model, logits weighted with the CT model's)")
    g = p.add_argument_group(
        "adapters (PEMMA; full_finetune builds the same pathway)",
        "A flag not given takes the --recipe's value; the default recipe, pemma: --rank 4 --alpha 8 "
        "--adapter-dropout 0 --modality-dropout 0.6 0.2 0.2 --ct-route exact --validation-inputs full "
        "(UNETR: --pet-alone-skip added); authors: README and pemma/recipes/authors.yaml. "
        "--checkpoint-full-resolution and --recompute-dora are on unless turned off.")
    for name in ("rank", "alpha", "target_modules", "train_parts"):
        add_field_flag(g, AdapterConfig, name)
    add_field_flag(g, AdapterConfig, "dropout", "--adapter-dropout")
    add_field_flag(g, AdapterConfig, "modality_dropout", metavar=("CTPET", "CT", "PET"))
    add_field_flag(g, AdapterConfig, "ct_route", choices=CT_ROUTES)
    add_field_flag(g, AdapterConfig, "recipe", choices=RECIPES)
    add_field_flag(g, AdapterConfig, "validation_inputs", choices=VALIDATION_INPUTS)
    add_field_flag(g, AdapterConfig, "pet_alone_skip", choices=PET_ALONE_SKIPS)
    add_field_flag(g, AdapterConfig, "checkpoint_full_resolution", action=argparse.BooleanOptionalAction)
    add_field_flag(g, AdapterConfig, "recompute_dora", action=argparse.BooleanOptionalAction)
    p.add_argument("--out", required=True, help="run folder of the adapted model")
    add_training_flags(p, preset_of="--base")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("update", help="continue training an adapted model on new centres with one modality",
                       description="Continual update without replay: PEMMA trains its adapters (exact CT route: a "
                                   "CT-only update gets an adapter of its own; shared route: every update trains the "
                                   "same adapter); the CT base is never modified.")
    p.add_argument("--model", required=True, help="run folder to update (adapt, baselines or earlier update)")
    p.add_argument("--data", required=True, help="dataset folder, datalist or DICOM tree")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--modalities", required=True, help="ct, pet or ct,pet: what the new centre provides")
    p.add_argument("--out", required=True, help="run folder of the updated model")
    p.add_argument("--base", help="CT base run of the model, if it moved since adaptation")
    p.add_argument("--ct-route", choices=CT_ROUTES,
                   help="the CT route the model was adapted with, checked (an update keeps the run's route; on "
                        "'shared' a CT-only update trains the same adapter). Default: the run's")
    p.add_argument("--recipe", choices=RECIPES,
                   help="the recipe the model was adapted with, checked (an update keeps it). Default: the run's")
    add_training_flags(p, preset_of="--model")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("params", help="trainable / total parameters, and %% of early fusion (two ways)",
                       description="Parameters of a run, or of a configuration without a run (--backbone, --preset, "
                                   "--recipe): trainable / total and the share of early fusion, against early fusion "
                                   "of the same size and as the PEMMA authors counted (sizes stated).")
    p.add_argument("model", nargs="?", help="run folder (or give --backbone)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--base", help="CT base run of an adapted model, if it moved since adaptation")
    p.add_argument("--backbone", choices=BACKBONES, help="without a run: the backbone to count")
    p.add_argument("--preset", default="tiny", help="without a run: size preset, tiny or paper (default: tiny)")
    p.add_argument("--recipe", choices=RECIPES,
                   help="without a run: pemma (default) or authors (the paper's configuration)")
    p.add_argument("--method", default="lora", help="without a run: lora (default) or dora")
    p.add_argument("--ct-route", choices=CT_ROUTES, help="without a run: exact or shared (default: the recipe's)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("export", help="write a deployable model (TorchScript, ONNX or MONAI bundle)",
                       description="Any run (CT base, adapted, baseline) for one input set, adapters merged, checked "
                                   "against pemma's logits, with its preprocessing written beside it (JSON). Spatial "
                                   "axes are fixed at the run's ROI (use a sliding window of that size).")
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="torchscript | onnx | bundle (a folder); default: from "
                                                            "the suffix of --out (.pt/.ts, .onnx, none)")
    p.add_argument("--modalities", help="input set, e.g. ct,pet (default: what the run was trained on)")
    p.add_argument("--merge", action="store_true", help="merge adapters into the weights (always done; accepted "
                                                        "for older scripts)")
    p.add_argument("--out", required=True, help="output file (.pt TorchScript, .onnx) or bundle folder")
    p.add_argument("--base", help="CT base run of the adapted model, if it moved since adaptation")
    p.set_defaults(func=cmd_export)


def cmd_adapt(args: argparse.Namespace) -> int:
    from pemma.api import adapt
    from pemma.training.loop import best_dsc_text

    adapter = {"rank": args.rank, "alpha": args.alpha, "adapter_dropout": args.adapter_dropout,
               "target_modules": args.target_modules, "train_parts": args.train_parts,
               "modality_dropout": args.modality_dropout, "ct_route": args.ct_route, "recipe": args.recipe,
               "validation_inputs": args.validation_inputs, "pet_alone_skip": args.pet_alone_skip,
               "checkpoint_full_resolution": args.checkpoint_full_resolution,
               "recompute_dora": args.recompute_dora}
    run = adapt(args.base, args.data, args.out, centres=args.centres, add_modality=args.add_modality,
                method=args.method, **{k: v for k, v in adapter.items() if v is not None}, **training_settings(args))
    summary = run.summary
    extra = f", CT logit weight {summary['weight']}" if "weight" in summary else ""
    inputs = summary.get("validated") or "+".join(m.upper() for m in run.meta.get("modalities")
                                                    or ["ct", args.add_modality])
    print(f"{args.out}: {counted(summary['steps'], 'step')}, best validation mean DSCagg ({inputs}) "
          f"{best_dsc_text(summary['best_dsc'])}{extra}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from pemma.api import update
    from pemma.training.loop import best_dsc_text

    run = update(args.model, args.data, args.modalities, args.out, centres=args.centres, base=args.base,
                 ct_route=args.ct_route, recipe=args.recipe, **training_settings(args))
    inputs = run.summary.get("validated") or args.modalities
    print(f"{args.out}: {counted(run.summary['steps'], 'step')}, best validation mean DSCagg ({inputs}) "
          f"{best_dsc_text(run.summary['best_dsc'])}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from pemma.api import params

    summary = params(args.model, base=args.base, backbone=args.backbone, preset=args.preset, recipe=args.recipe,
                     method=args.method, ct_route=args.ct_route)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        if isinstance(value, bool) or isinstance(value, dict):
            value = json.dumps(value) if isinstance(value, dict) else value
        elif isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, float):
            value = f"{value:.3f}%" if key.endswith("percent") or key.startswith("percent") else f"{value:g}"
        print(f"{key:>24}: {value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pemma.api import export

    info = export(args.model, args.out, format=args.format, modalities=args.modalities, base=args.base)
    what = "merged - unmerged" if info["merged"] else "exported - pemma"
    print(f"wrote {args.out} ({info['format']}): {'merged ' if info['merged'] else ''}{info['backbone']} for "
          f"{'+'.join(info['modalities'])} input, max |{what}| = {info['max_abs_diff']:.2e} on a test input "
          f"({info['bytes'] / 1e6:.1f} MB); preprocessing in {info['preprocessing']}")
    return 0
