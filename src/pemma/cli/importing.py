"""``pemma import-model``: a CT base run folder from plain MONAI UNETR / Swin UNETR weights or a MONAI bundle."""

from __future__ import annotations

import argparse
import logging

from pemma.cli.options import add_field_flag
from pemma.config import ModelConfig, PreprocessConfig, TrainConfig
from pemma.vocab import IMPORT_BACKBONES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-model", help="a CT base run from plain MONAI UNETR / Swin UNETR weights",
                       description="Writes the run folder `pemma train` writes (config, weights, model.json) from a "
                                   ".pt/.pth/.safetensors state dict, a checkpoint dict (state_dict/model/net) or a "
                                   "MONAI bundle folder, with a key report (MONAI copy_model_state). Declare the "
                                   "network sizes and the preprocessing the model was trained with in --config. A "
                                   "head with other classes than background/GTVp/GTVn: --label-map selects its "
                                   "classes, otherwise a new head is put in place and trains during adaptation.")
    p.add_argument("weights", help="weights file (.pt, .pth, .safetensors) or MONAI bundle folder")
    p.add_argument("--backbone", choices=IMPORT_BACKBONES, help="network of the weights (a bundle names its own)")
    p.add_argument("--config", help="YAML with pemma's config fields: model sizes, preprocessing (spacing, ct_window, "
                                    "crop_mm) the model was trained with")
    p.add_argument("--preset", default="paper", help="size preset under --config (default: paper, 96^3: MONAI's "
                                                     "default UNETR sizes, Swin UNETR feature size 48 as in the "
                                                     "paper; tiny for tests)")
    p.add_argument("--label-map", help="head classes to keep, e.g. GTVp=3,GTVn=5 (background=0 unless given); "
                                       "default: a 3-class head is kept, another head is replaced by a new one")
    p.add_argument("--min-matched", type=float, default=1.0,
                   help="share of the network's tensors (besides the head) that must load (default 1.0: all)")
    add_field_flag(p, ModelConfig, "roi_size", "--roi")
    add_field_flag(p, PreprocessConfig, "target_spacing", "--spacing")
    add_field_flag(p, TrainConfig, "seed")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--force", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from pemma.api import import_model

    logging.getLogger("pemma.methods.importing").setLevel(logging.INFO)
    run = import_model(args.weights, args.out, backbone=args.backbone, config=args.config, preset=args.preset,
                       label_map=args.label_map, min_matched=args.min_matched, force=args.force, roi=args.roi,
                       spacing=args.spacing, seed=args.seed)
    s = run.summary
    head = {"loaded": "head loaded", "selected": f"head: classes {args.label_map} of {s['source_classes']} selected",
            "new": f"new head in place of the {s['source_classes']}-class head (trains during adaptation)"}[s["head"]]
    print(f"{args.out}: imported {run.config.model.backbone}: {s['matched']} tensors matched, {s['missing']} missing, "
          f"{s['unexpected']} unexpected, {s['shape_mismatch']} shape mismatches; {head}")
    return 0
