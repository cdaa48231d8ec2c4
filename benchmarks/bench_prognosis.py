"""Benchmark the lesion-feature prognosis chain CT -> CT+PET -> CT+PET+EHR on a phantom, over several seeds.

For each seed (it sets the held-out split, the inner CV folds and the bootstrap), runs
:func:`pemma.survival.chain_run.survival_chain` and the paper's two C-index claims
(:func:`pemma.protocol.claims.cindex.chain_claims`), and prints one line per seed and stage (held-out C-index
with its bootstrap CI, the inner-CV C-index, the chosen penalty, the overfitting flag) and per claim (relative
gain with its paired-bootstrap CI and the verdict). Lesion features are measured once per segmentation and reused
across seeds (they do not depend on the split).

Usage::

    python benchmarks/bench_prognosis.py --work /tmp/bench_prog                     # phantom, reference labels
    python benchmarks/bench_prognosis.py --data DATA --seg-ct runs/ct_unetr --seg-ctpet runs/pemma_lora

``--seg-ct labels`` (the default) uses the reference labels as segmentation: the chain's upper bound.
``--oracle`` (synthesised phantom only) also scores the phantom's own hazard on the same held-out cases: its
image terms without and with SUVmax (:func:`pemma.data.phantom_survival.lesion_hazard_terms`, from each case's
true lesion summary, re-synthesised), so the chain's C-index and gain can be read against what the data allow.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from pemma.data.phantom import PhantomConfig, synthesize_case, synthesize_phantom
from pemma.data.phantom_survival import lesion_hazard_terms
from pemma.protocol.claims.cindex import chain_claims, cindex_gain
from pemma.survival.chain import ChainConfig
from pemma.survival.chain_run import LABELS, survival_chain
from pemma.survival.lesion import label_segmenter, model_segmenter
from pemma.survival.metrics import concordance_index


def _cached(segment, store: dict):
    """A segmenter that segments each case once (the seeds reuse the masks)."""
    def segment_once(case):
        if case.case_id not in store:
            store[case.case_id] = segment(case)
        return store[case.case_id]
    return segment_once


def oracle_risks(case_ids: list[str], config: PhantomConfig, cache: Path) -> dict[str, dict[str, float]]:
    """The phantom hazard's image terms per case: ``ct`` (tumour volume, two or more nodes) and ``ct+pet`` (plus
    SUVmax), from each case's true lesion summary (cases re-synthesised once, then read from ``cache``)."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    for case_id in case_ids:
        if case_id not in known:
            centre, index = case_id.rsplit("-", 1)
            terms = lesion_hazard_terms(synthesize_case(centre, int(index), config).lesions)
            ct = terms["volume"] + terms["nodes"]
            known[case_id] = {"ct": ct, "ct+pet": ct + terms["suvmax"]}
    cache.write_text(json.dumps(known))
    return known


def _oracle_lines(result: dict, oracle: dict[str, dict[str, float]], seed: int) -> list[str]:
    """The oracle's held-out C-index per image stage and its relative PET gain, on the chain's held-out cases."""
    t, e = np.asarray(result["test_time"], float), np.asarray(result["test_event"], float)
    ct, pet = (np.array([oracle[c][k] for c in result["test_cases"]]) for k in ("ct", "ct+pet"))
    gain = cindex_gain(t, e, ct, pet, seed=seed)
    return [f"seed {seed} oracle      held-out C ct {concordance_index(t, e, ct):.3f}, ct+pet "
            f"{concordance_index(t, e, pet):.3f}: relative gain {100 * gain.estimate:+.1f}% [95% CI "
            f"{100 * gain.low:+.1f}, {100 * gain.high:+.1f}; n={gain.n_cases}]"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench_prognosis", help="working folder (phantom, chain outputs)")
    p.add_argument("--data", help="dataset folder (default: synthesise a phantom under --work)")
    p.add_argument("--cases-per-centre", type=int, default=50, help="phantom cases per centre")
    p.add_argument("--centres", default="CHUM,MDA,HGJ,CHUP", help="comma-separated centres")
    p.add_argument("--phantom-seed", type=int, default=0,
                   help="seed of the synthesised phantom (another than the demo's 0 when --seg-* runs were trained "
                        "on the demo's phantom: its cases 0-11 of each centre are the demo's own)")
    p.add_argument("--ct-shape", type=int, nargs=3, default=(64, 64, 48),
                   help="CT voxels of the synthesised phantom (the demo's is 80 80 56)")
    p.add_argument("--seg-ct", default=LABELS, help="CT segmentation run, or 'labels'")
    p.add_argument("--seg-ctpet", default=None, help="CT+PET segmentation run (default: --seg-ct)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--oracle", action="store_true",
                   help="also score the phantom's true hazard terms on the held-out cases (synthesised phantom only)")
    args = p.parse_args()
    if args.oracle and args.data:
        p.error("--oracle needs the phantom this benchmark synthesises (no --data)")
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    centres = args.centres.split(",")
    data = Path(args.data) if args.data else work / "phantom"
    phantom = PhantomConfig(cases_per_centre=args.cases_per_centre, centres=tuple(centres),
                            ct_shape=tuple(args.ct_shape), seed=args.phantom_seed)
    if not args.data and not (data / "hecktor2022_endpoint_training.csv").is_file():
        synthesize_phantom(data, phantom, progress=True)

    def segmenter(spec: str | None, modalities: list[str]):
        if spec is None:
            return None
        return _cached(label_segmenter if spec == LABELS else model_segmenter(spec, modalities, args.device), {})

    seg_ct = segmenter(args.seg_ct, ["ct"])
    seg_ctpet = segmenter(args.seg_ctpet, ["ct", "pet"])
    summary = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = survival_chain(data, work / f"chain_seed{seed}", seg_ct, seg_ctpet, centres=centres,
                                cfg=ChainConfig(seed=seed), device=args.device)
        claims = chain_claims(result, seed=seed)
        for s in result["stages"]:
            low, high = s["test_ci"]
            print(f"seed {seed} {s['stage']:<11} held-out C {s['test_c_index']:.3f} [{low:.3f}, {high:.3f}] "
                  f"({s['n_test']} cases, {s['events_test']} relapses); inner-CV C {s['cv_c_index']:.3f}, "
                  f"train C {s['train_c_index']:.3f}, l2 {s['l2']:g}, {s['n_features']} features"
                  f"{', OVERFITTING' if s['overfitting'] else ''}")
        for c in claims:
            print(f"seed {seed} {c['id']}: holds={c['holds']}: {c['detail']}")
        if args.oracle:
            oracle = oracle_risks(result["train_cases"] + result["test_cases"], phantom, work / "oracle.json")
            print("\n".join(_oracle_lines(result, oracle, seed)))
        summary.append({"seed": seed, "stages": [{k: s[k] for k in ("stage", "test_c_index", "test_ci",
                                                                      "cv_c_index", "train_c_index", "l2",
                                                                      "overfitting")} for s in result["stages"]],
                        "claims": [{k: c.get(k) for k in ("id", "holds", "values", "ci")} for c in claims]})
    (work / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
