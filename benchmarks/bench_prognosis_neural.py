"""Benchmark the neural prognosis stages CT -> CT+PET -> CT+PET+EHR (pooled encoder features, a Cox or MTLR head)
on a dataset with enough cases, over several split seeds.

For each seed (it sets the training / held-out split and the inner CV folds of the penalty), runs
:func:`pemma.survival_train` on a CT segmentation run's frozen encoder, :func:`pemma.survival_adapt` adding PET
(adapters and PET pathway from a PEMMA segmentation run, frozen: ``--freeze-adapters``, as the demo does) and then
EHR, and scores every stage on the held-out cases (:func:`pemma.survival_evaluate`, ``split="val"``). Prints one
line per stage (held-out C-index with its bootstrap CI, training C-index, the chosen penalty and its inner-CV
C-index) and the paper's two relative C-index gains with their paired bootstrap CI over the held-out cases
(:func:`pemma.protocol.claims.cindex.cindex_gain`): "holds" only when the CI's lower end is above 0.

This is the neural counterpart of ``bench_prognosis.py`` (the lesion-feature chain); the demo's 35 held-out cases
cannot show either gain (see the README's prognosis section).

Usage::

    python benchmarks/bench_prognosis_neural.py --data /tmp/bench_prog_model/phantom \\
        --seg-ct demo/seed_0/runs/unetr/shared/00_pretrain_ct_* \\
        --seg-ctpet demo/seed_0/runs/unetr/pemma_lora/01_adapt_mda_ct-pet_* --work /tmp/bench_neural
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

import pemma
from pemma.protocol.claims.cindex import cindex_gain

PAPER = {"ct+pet": 0.10, "ct+pet+ehr": 0.23}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    work = Path(args.work) / f"seed_{seed}"
    train = {"seed": seed} if args.epochs is None else {"seed": seed, "epochs": args.epochs}
    common = {"preset": "tiny", "overrides": {"data": {"val_fraction": args.val_fraction}, "train": train},
              "l2": args.l2}
    centres = args.centres.split(",") if args.centres else None
    runs = {"ct": work / "ct", "ct+pet": work / "ct+pet", "ct+pet+ehr": work / "ct+pet+ehr"}
    if not (runs["ct"] / "survival.json").is_file():
        pemma.survival_train(args.seg_ct, args.data, runs["ct"], centres=centres, head=args.head, **common)
    if not (runs["ct+pet"] / "survival.json").is_file():
        pemma.survival_adapt(runs["ct"], runs["ct+pet"], data=args.data, add_modality="pet", method=args.method,
                             init_adapters=args.seg_ctpet, freeze_adapters=True, **common)
    if not (runs["ct+pet+ehr"] / "survival.json").is_file():
        pemma.survival_adapt(runs["ct+pet"], runs["ct+pet+ehr"], data=args.data, add_ehr=True,
                             freeze_adapters=True, **common)
    stages, risks = [], {}
    for stage, run in runs.items():
        result = pemma.survival_evaluate(run, args.data, centres=centres, split="val", out=work / f"eval_{stage}",
                                         seed=seed, device=args.device)
        meta = json.loads((run / "survival.json").read_text())
        cv = {r["l2"]: r["c_index"] for r in meta.get("l2_cv", [])}
        risks[stage] = {c["PatientID"]: (c["risk"], c["RFS"], c["Relapse"]) for c in result["cases"]}
        stages.append({"stage": stage, "c_index": result["c_index"], "ci": [result["ci_low"], result["ci_high"]],
                       "n_cases": result["n_cases"], "events": result["events"], "train_c_index": meta["train_c_index"],
                       "l2": meta["l2"], "cv_c_index": cv.get(meta["l2"])})
    cases = sorted(risks["ct"])
    time = np.array([risks["ct"][c][1] for c in cases])
    event = np.array([risks["ct"][c][2] for c in cases])
    claims = []
    for stage in ("ct+pet", "ct+pet+ehr"):
        diff = cindex_gain(time, event, [risks["ct"][c][0] for c in cases], [risks[stage][c][0] for c in cases],
                           seed=seed)
        low, high = diff.low, diff.high
        claims.append({"stage": stage, "relative_gain": diff.estimate, "ci95": [low, high], "n_cases": len(cases),
                       "holds": True if low > 0 else (False if high < 0 else None), "paper": PAPER[stage]})
    return {"seed": seed, "stages": stages, "claims": claims}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder (images, endpoint and clinical CSVs)")
    p.add_argument("--seg-ct", required=True, help="CT segmentation run (`pemma train`)")
    p.add_argument("--seg-ctpet", required=True, help="PEMMA segmentation run on it (`pemma adapt`): adapters and PET")
    p.add_argument("--method", default="lora", help="the PEMMA run's adapter method")
    p.add_argument("--work", default="/tmp/bench_prognosis_neural", help="working folder")
    p.add_argument("--centres", default=None, help="comma-separated centres (default: all)")
    p.add_argument("--head", default="cox", choices=["cox", "mtlr"])
    p.add_argument("--l2", type=float, default=None, help="fixed penalty (default: chosen by inner CV per stage)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of stages that take optimiser steps (default: the preset's; the demo uses 10)")
    p.add_argument("--val-fraction", type=float, default=0.4, help="held-out share per centre")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated split seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    summary = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = run_seed(args, seed)
        summary.append(result)
        for s in result["stages"]:
            cv = "n/a" if s["cv_c_index"] is None else f"{s['cv_c_index']:.3f}"
            print(f"seed {seed} {s['stage']:<11} C {s['c_index']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] "
                  f"n={s['n_cases']} ({s['events']} relapses); train C {s['train_c_index']:.3f}; l2 {s['l2']:g} "
                  f"(inner-CV C {cv})", flush=True)
        for c in result["claims"]:
            verdict = {True: "holds", False: "does not hold", None: "not shown"}[c["holds"]]
            print(f"seed {seed} gain CT -> {c['stage']}: {100 * c['relative_gain']:+.1f} % "
                  f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] n={c['n_cases']}: {verdict} "
                  f"(paper +{100 * c['paper']:.0f} %)", flush=True)
    (Path(args.work) / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
