"""How much the demo's single learning rate decides the comparison with the full-network baselines.

``pemma demo`` trains every method of a phase at one learning rate: the preset's (tiny: 2e-3, the
rate the CT model was pretrained at). Early fusion and full fine-tuning update every pretrained weight at that rate,
PEMMA its new adapters and pathway and the copies of the base parts its recipe trains. This script re-runs the
first adaptation phase of a finished demo seed
(same CT base, split, epochs, seed and precision) for each method at the preset's rate times each ``--factors``
value, evaluates every run on the test cases of the centres seen so far (CT+PET input, as ``reproduce`` does) and
prints, per method and rate, the pooled DSCagg (mean, GTVp, GTVn) and two paired-bootstrap differences over the same
cases: against the same method at the preset's rate (the baseline of this run: factor 1, read from the seed's own
run folder when it is there) and against PEMMA LoRA at the preset's rate (the ``matches_early_fusion`` comparison).

Example (after ``pemma demo --out demo --seed 4``; ~1 min per run and method on one thread)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_baseline_lr.py --seed-dir demo/seed_4 \
        --work /tmp/baseline_lr --factors 1 0.3 0.1 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemma.config import build_config
from pemma.data.layout import discover_cases
from pemma.methods import adapt
from pemma.protocol.bootstrap import dscagg_mean, paired_bootstrap
from pemma.protocol.chains import ProtocolData, evaluate_run
from pemma.protocol.routes import adapt_kwargs, method_folder
from pemma.runtime import resolve_amp

INPUTS = ("ct", "pet")


def _setting(seed_dir: Path) -> dict[str, Any]:
    """The strategy of a finished seed: preset, seed, precision, the first adapt phase and the centres seen."""
    strategy = json.loads((seed_dir / "strategy.json").read_text())
    phases = strategy["phases"]
    index = next(i for i, p in enumerate(phases) if p["operation"] == "adapt")
    seen = list(dict.fromkeys(c for p in phases[: index + 1] for c in p["centres"]))
    return {"preset": strategy["preset"], "seed": strategy["split"]["seed"], "amp": strategy.get("amp", "auto"),
            "phase": phases[index], "index": index, "centres": seen, "backbone": strategy["backbones"][0]}


def _existing_run(seed_dir: Path, method: str, setting: dict[str, Any]) -> Path | None:
    """The seed's own run of ``method`` in the adapt phase (the default route and recipe), if it finished."""
    folder = seed_dir / "runs" / setting["backbone"] / method_folder(method, "", "")
    found = sorted(folder.glob(f"{setting['index']:02d}_{setting['phase']['name']}_*"))
    return found[0] if found and (found[0] / "phase.json").is_file() else None


def _train(seed_dir: Path, method: str, lr: float, out: Path) -> Path:
    """One adaptation run at ``lr`` (one torch thread), evaluated; returns its folder."""
    torch.set_num_threads(1)
    setting = _setting(seed_dir)
    root = str(seed_dir.parent / "phantom")
    data = ProtocolData(root, {c.case_id: c for c in discover_cases(root)},
                        json.loads((seed_dir / "split.json").read_text()))
    backbone = setting["backbone"]
    base = next((seed_dir / "runs" / backbone / "shared").glob("00_*"))
    phase = setting["phase"]
    amp, _ = resolve_amp(setting["amp"], torch.device("cpu"))
    cfg = build_config(setting["preset"], overrides={
        "data": {"root": root, "centres": phase["centres"], "modalities": phase["modalities"]},
        "model": {"backbone": backbone},
        "train": {"seed": setting["seed"], "epochs": phase.get("epochs"), "amp": amp, "lr": lr}})
    if not (out / "model.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        split = (data.part(tuple(phase["centres"]), "train"), data.part(tuple(phase["centres"]), "val"))
        added = next(m for m in phase["modalities"] if m != "ct")
        adapt(base, cfg, out, method=method, progress=False, split=split, added_modality=added,
              **adapt_kwargs(method, "", "", backbone, "bench_baseline_lr"))
    evaluate_run(out, data, tuple(setting["centres"]), torch.device("cpu"), {}, input_sets=(INPUTS,))
    return out


def _counts(run: Path, centres: list[str]) -> np.ndarray:
    """``(n_cases, n_classes, 3)`` counts of a run's CT+PET evaluation over ``centres``, in a fixed case order."""
    evaluation = json.loads((run / "evaluation.json").read_text())
    rows = [row for c in centres for row in sorted(evaluation[f"{c}|{'+'.join(INPUTS)}|cases"],
                                                    key=lambda r: r["case_id"])]
    return np.asarray([row["counts"] for row in rows], dtype=np.float64)


def _per_class(counts: np.ndarray) -> list[float]:
    """Pooled DSCagg of each class (``dscagg_mean`` of that class alone)."""
    return [float(dscagg_mean(counts[:, [k]])) for k in range(counts.shape[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-dir", type=Path, required=True, help="a finished `pemma demo` seed folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for the extra runs")
    parser.add_argument("--methods", nargs="+", default=["early_fusion", "full_finetune", "pemma_lora"])
    parser.add_argument("--factors", nargs="+", type=float, default=[1.0, 0.3, 0.1],
                        help="learning rates as factors of the preset's (1 = the demo's own run)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    setting = _setting(args.seed_dir)
    base_lr = float(build_config(setting["preset"]).train.lr)
    runs: dict[tuple[str, float], Path] = {}
    todo = []
    for method in args.methods:
        for factor in sorted(set(args.factors) | {1.0}, reverse=True):
            own = _existing_run(args.seed_dir, method, setting) if factor == 1.0 else None
            if own is not None:
                runs[(method, factor)] = own
            else:
                todo.append((method, factor, args.work / f"{method}_lr{base_lr * factor:.0e}"))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {(m, f): pool.submit(_train, args.seed_dir, m, base_lr * f, out) for m, f, out in todo}
        runs.update({key: future.result() for key, future in futures.items()})
    if ("pemma_lora", 1.0) not in runs:
        runs[("pemma_lora", 1.0)] = _train(args.seed_dir, "pemma_lora", base_lr, args.work / "pemma_lora_base")
    counts = {key: _counts(run, setting["centres"]) for key, run in runs.items()}
    reference = counts[("pemma_lora", 1.0)]
    print(f"{args.seed_dir}: {setting['backbone']}, phase {setting['phase']['name']}, preset {setting['preset']} "
          f"(lr {base_lr:g}), "
          f"{reference.shape[0]} test cases of {', '.join(setting['centres'])}, CT+PET input")
    print("| method | lr | DSCagg mean | GTVp | GTVn | − same method at the preset's lr [95 % CI] | − PEMMA LoRA at "
          "the preset's lr [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for (method, factor), value in sorted(counts.items(), key=lambda kv: (args.methods.index(kv[0][0])
                                                                          if kv[0][0] in args.methods else 99,
                                                                          -kv[0][1])):
        own = paired_bootstrap(value, counts[(method, 1.0)], seed=setting["seed"])
        lora = paired_bootstrap(value, reference, seed=setting["seed"])
        gtvp, gtvn = _per_class(value)
        row = {"method": method, "lr": base_lr * factor, "dscagg_mean": float(dscagg_mean(value)), "GTVp": gtvp,
               "GTVn": gtvn, "vs_own_default": own.to_dict(), "vs_pemma_lora": lora.to_dict()}
        table.append(row)
        print(f"| {method} | {base_lr * factor:.1e} | {row['dscagg_mean']:.3f} | {gtvp:.3f} | {gtvn:.3f} | "
              f"{own.estimate:+.3f} [{own.low:+.3f}, {own.high:+.3f}] | "
              f"{lora.estimate:+.3f} [{lora.low:+.3f}, {lora.high:+.3f}] |")
    if args.json:
        args.json.write_text(json.dumps({"seed_dir": str(args.seed_dir), "rows": table}, indent=2))


if __name__ == "__main__":
    main()
