"""``pemma demo``: the default phantom and ``pemma reproduce`` with the shipped ``demo`` strategy on the CPU.

The demo strategy (``src/pemma/strategies/demo.yaml``) is the hecktor2022 protocol cut to at most about 15 minutes on
2 CPU cores (8-18 min on the machines that timed it, whose speed varied by up to 2x; README) with the tiny preset: CT
pretraining on CHUM/CHUP/CHUS/CHUV, CT+PET adaptation on MDA (PEMMA LoRA and DoRA, early fusion, full
fine-tuning), a PET-only update on HGJ, and the prognosis chain CT -> CT+PET -> CT+PET+EHR. Each seed is a full
run in ``OUT/seed_<n>`` (the phantom is shared); with several seeds ``OUT/seeds.md`` summarises the findings over them.

Example:
    >>> report = run_demo("demo", seeds=[0, 1, 2])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pemma.data.phantom import PhantomConfig, read_phantom_config, synthesize_phantom
from pemma.errors import PemmaError
from pemma.io_utils import write_text_atomic
from pemma.protocol.findings import summarise_seeds
from pemma.protocol.provenance import seed_machines
from pemma.protocol.runner import reproduce
from pemma.vocab import ENDPOINT_FILE

DEMO_STRATEGY = "demo"


def run_demo(out_dir: str | Path = "demo", seeds: Sequence[int] = (0,), preset: str | None = None,
             max_steps: int | None = None, backbone: str | None = None, strategy: str | Path = DEMO_STRATEGY,
             phantom: PhantomConfig | None = None, exclude_bad_cases: bool = False, progress: bool = True,
             amp: bool | str | None = None, workers: int | str | None = None) -> Path:
    """Generate the default phantom (once) and reproduce ``strategy`` on it for every seed.

    Args:
        out_dir: output folder: ``phantom/`` and one results folder ``seed_<n>/`` per seed (finished phases
            of an earlier call are reused, so adding seeds later only runs the new ones).
        seeds: split and training seeds; more than one adds ``seeds.md``. Default (0,).
        preset, max_steps, backbone: overrides of the strategy's values (None keeps them).
        strategy: a strategy file or shipped name. Default "demo".
        phantom: the phantom to generate. Default :class:`PhantomConfig` () (the default phantom). An existing
            ``OUT/phantom`` of another difficulty is refused (one line), not silently reused.
        exclude_bad_cases: leave out cases that fail the data check instead of stopping. Default False.
        progress: show progress bars. Default True.
        amp: replaces the strategy's ``amp`` (``True``, ``False``, ``"auto"``); None keeps it.
        workers: replaces the strategy's ``workers`` (an integer or ``"auto"``); None keeps it.

    Returns:
        The report: ``seed_<n>/report.md`` for one seed, ``seeds.md`` for several.
    """
    out = Path(out_dir)
    data = out / "phantom"
    wanted = phantom or PhantomConfig()
    if not (data / ENDPOINT_FILE).is_file():
        synthesize_phantom(data, wanted)
    else:
        found = read_phantom_config(data)
        have = found.difficulty if found else "normal"
        if have != wanted.difficulty:
            raise PemmaError(f"{data}: holds a {have} phantom, not the {wanted.difficulty} one asked for; use another "
                             f"--out")
    reports = {}
    for seed in seeds:
        results = out / f"seed_{seed}"
        reports[seed] = reproduce(strategy, data, results, backbones=[backbone] if backbone else None, preset=preset,
                                  max_steps=max_steps, seed=seed, exclude_bad_cases=exclude_bad_cases,
                                  progress=progress, amp=amp, workers=workers)
    if len(seeds) == 1:
        return reports[seeds[0]]
    return write_seed_summary({s: r.parent for s, r in reports.items()}, out / "seeds.md")


def write_seed_summary(results: dict[int, Path], path: Path) -> Path:
    """``seeds.md``: per claim how many seeds hold it and the mean [min, max] of its numbers; per prognosis
    stage the C-index mean [min, max]; the machine(s) that trained each seed's runs (:func:`seed_machines`)."""
    per_seed = {}
    for seed, folder in results.items():
        found = json.loads((folder / "findings.json").read_text())
        per_seed[str(seed)] = [c for claims in found.values() for c in claims]
    lines = [f"# Findings over seeds {', '.join(map(str, results))}", "",
             "A seed counts as holding only when its 95% bootstrap CI shows the claim; *not shown* means the CI "
             "included both sides.", "",
             "| Claim | Seeds where it holds | Refuted | Not shown | Numbers: mean [min, max] |",
             "|---|---|---|---|---|"]
    for row in summarise_seeds(per_seed):
        numbers = "; ".join(f"{k} {m:.3f} [{lo:.3f}, {hi:.3f}]" for k, (m, lo, hi) in row["values"].items())
        lines.append(f"| {row['claim']} | {row['held']} | {row['refuted']} | {row['not_shown']} | {numbers} |")
    prognosis: dict[tuple[str, str], list[float]] = {}
    for folder in results.values():
        file = folder / "prognosis.json"
        for r in json.loads(file.read_text()) if file.is_file() else []:
            prognosis.setdefault((r["method"], r["stage"]), []).append(r["c_index"])
    if prognosis:
        lines += ["", "| Prognosis method | Stage | C-index mean [min, max] |", "|---|---|---|"]
        for (m, s), values in prognosis.items():
            v = [c for c in values if c is not None]  # None: undefined on a seed (no relapse held out)
            numbers = f"{sum(v) / len(v):.3f} [{min(v):.3f}, {max(v):.3f}]" if v else "–"
            lines.append(f"| {m} | {s} | {numbers}" + (f" (defined on {len(v)}/{len(values)} seeds)"
                                                       if len(v) < len(values) else "") + " |")
    machines: dict[str, list[str]] = {}  # runs reused from an earlier call may come from another machine
    for seed, folder in results.items():
        machines.setdefault(seed_machines(folder), []).append(str(seed))
    lines += ["", "Machines (another CPU kind gives the same seed other numbers): "
              + "; ".join(f"seed {', '.join(seeds)}: {line}" for line, seeds in machines.items())]
    lines += ["", "Per-seed reports: " + ", ".join(f"[{s}]({f.name}/report.md)" for s, f in results.items())]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
