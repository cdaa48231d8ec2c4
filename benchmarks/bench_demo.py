"""Where the wall time of ``pemma demo`` goes: ``reproduce`` with the demo strategy, every stage timed.

Wraps (in this process only) the protocol's stages with timers: segmentation training per phase and method,
evaluation (per run), every ``predict_case`` call by caller (evaluation, overlays, lesion chain), the prognosis
stages (neural and lesion chain), the overlays, figures and findings (bootstrap), and prints a table of seconds
and shares. Training is cut by ``--max-steps`` (default 2 steps per phase) so that everything else runs at its
full size; the full demo's training time is then estimated from the measured seconds per step times the steps
the strategy's epochs give (printed separately, so the estimate is visible as one).

Run the same command on two checkouts (or ``git stash``) back to back to compare: the shares, and the ratio of
the totals, are what can be compared on a shared machine, not absolute seconds.

Example:
    PYTHONPATH=src .venv/bin/python benchmarks/bench_demo.py --out /tmp/demo_prof --max-steps 2
    PYTHONPATH=src .venv/bin/python benchmarks/bench_demo.py --out /tmp/demo_small --small
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMES: dict[str, float] = collections.defaultdict(float)
CPU: dict[str, float] = collections.defaultdict(float)  # process CPU seconds: steadier than wall on a shared machine
CALLS: dict[str, int] = collections.defaultdict(int)


def timed(owner: Any, name: str, label: str | Callable[..., str]) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``TIMES[label]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = label(*args, **kwargs) if callable(label) else label
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[key] += time.perf_counter() - start
            CPU[key] += time.process_time() - cpu
            CALLS[key] += 1

    setattr(owner, name, wrapper)


def _caller_of_predict() -> str:
    for frame in inspect.stack()[2:8]:
        module = frame.frame.f_globals.get("__name__", "")
        if module.startswith("pemma.") and "predict" not in module:
            return module.rsplit(".", 1)[-1]
    return "?"


def install() -> None:
    """Timers on the stages (each patched where it is looked up)."""
    import pemma.evaluation.evaluate as evaluate
    import pemma.protocol.chains as chains
    import pemma.protocol.overlays as overlays
    import pemma.protocol.prognosis as prognosis
    import pemma.protocol.runner as runner
    import pemma.survival.lesion as lesion
    from pemma.protocol import figures

    def phase_label(strategy: Any, data: Any, backbone: str, method: str, planned: Any, *a: Any, **k: Any) -> str:
        return f"train {planned.phase.name} {method}{'_' + k.get('route', '') if k.get('route') else ''}"

    timed(chains, "train_phase", phase_label)
    timed(chains, "evaluate_run", lambda run, *a, **k: f"evaluate {run.parent.name}/{run.name}")
    timed(runner, "preflight", "data check")
    timed(runner, "_prognosis", "prognosis (all)")
    timed(runner, "_overlays", "overlays")
    timed(runner, "_report", "report (dsc figure, findings + bootstrap)")
    timed(runner, "write_results", "results csv")
    timed(prognosis, "run_lesion_chains", "prognosis: lesion chains")
    timed(figures, "plot_overlays", "overlays: drawing")
    timed(overlays, "plot_overlays", "overlays: drawing")
    timed(overlays, "load_model", "overlays: load models")
    import pemma.survival.evaluate as sev
    import pemma.survival.training as st
    timed(st, "train_survival", "prognosis: neural CT stage train")
    timed(st, "adapt_survival", "prognosis: neural +PET/+EHR train")
    timed(sev, "evaluate_survival", "prognosis: neural evaluate")
    import pemma.protocol.claims.cindex as cindex
    timed(cindex, "prognosis_findings", "findings: lesion cindex claims")
    import pemma.protocol.findings as findings
    timed(findings, "collect_findings", "findings: collect (bootstrap)")

    modules = [evaluate, overlays, lesion]
    try:  # the prediction cache of reproduce, where this checkout has one
        import pemma.inference.prediction_cache as cache
        modules.append(cache)
    except ImportError:
        pass
    for module in modules:
        if hasattr(module, "predict_case"):  # every network prediction, by the protocol module that asked
            timed(module, "predict_case", lambda *a, **k: f"predict_case <- {_caller_of_predict()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (removed first unless --keep)")
    parser.add_argument("--max-steps", type=int, default=2, help="training steps per phase (default 2)")
    parser.add_argument("--small", action="store_true", help="a small phantom (3 centres x 4 cases)")
    parser.add_argument("--keep", action="store_true", help="keep --out (reuse finished phases)")
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument("--strategy", default="demo")
    parser.add_argument("--workers", default="1",
                        help="the strategy's workers (default 1: the stages of worker processes are not timed here)")
    args = parser.parse_args(argv)
    from pemma.data.phantom import PhantomConfig
    from pemma.protocol.demo import run_demo

    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    phantom = PhantomConfig(cases_per_centre=4, ct_shape=(48, 48, 40)) if args.small else PhantomConfig()
    if not (out / "phantom").exists():
        start = time.perf_counter()
        from pemma.data.phantom import synthesize_phantom
        synthesize_phantom(out / "phantom", phantom)
        TIMES["phantom"] = time.perf_counter() - start
    install()
    start, cpu = time.perf_counter(), time.process_time()
    workers = args.workers if args.workers == "auto" else int(args.workers)
    run_demo(out, seeds=[0], max_steps=args.max_steps, phantom=phantom, progress=False, strategy=args.strategy,
             workers=workers)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\nreproduce wall {total:.1f} s, CPU {total_cpu:.1f} s (max_steps {args.max_steps}); phantom "
          f"{TIMES.get('phantom', 0):.1f} s")
    print(f"{'stage':<58} {'calls':>5} {'wall s':>8} {'CPU s':>8} {'CPU share':>9}")
    for key, seconds in sorted(TIMES.items(), key=lambda kv: -CPU.get(kv[0], 0)):
        print(f"{key:<58} {CALLS.get(key, 0):>5} {seconds:>8.1f} {CPU.get(key, 0):>8.1f} "
              f"{CPU.get(key, 0) / total_cpu:>9.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"total": total, "total_cpu": total_cpu, "times": TIMES, "cpu": CPU,
                                               "calls": CALLS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
