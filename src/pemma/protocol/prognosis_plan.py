"""The prognosis experiment of a strategy, planned: which segmentation runs start its +PET stages, its folder, and
the arguments of each backbone's lesion-feature chains and neural stages (:mod:`pemma.protocol.runner` runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pemma.protocol.chains import ProtocolData, run_dir
from pemma.protocol.routes import method_folder, pairs
from pemma.protocol.strategy import PlannedPhase, Strategy


def prognosis_pair(strategy: Strategy, method: str) -> tuple[tuple[str, str], bool]:
    """The (route, recipe) of ``method``'s segmentation run whose adapters start +PET: the first the strategy runs
    that has the prognosis section's ``segmentation_route`` / ``segmentation_recipe`` (None: any), and whether one
    was found (False: the method's first pair, the asked one not being run)."""
    spec, run = strategy.prognosis, pairs(strategy, method)
    assert spec is not None
    for route, recipe in run:
        if spec.segmentation_route in (None, route) and spec.segmentation_recipe in (None, recipe):
            return (route, recipe), True
    return run[0], False


def first_variant(strategy: Strategy) -> tuple[list[PlannedPhase], PlannedPhase | None]:
    """The first variant's planned phases and its ``adapt`` phase (None without one)."""
    plan = [p for p in strategy.plan() if p.variant == strategy.variant_names[0]]
    return plan, next((p for p in plan if p.phase.operation == "adapt"), None)


def prognosis_jobs(strategy: Strategy, data: ProtocolData, out: Path,
                   amp: bool = False) -> list[tuple[dict[str, Any], dict[str, Any], tuple[Path, ...]]]:
    """Per backbone: the arguments of its lesion-feature chains (:func:`~pemma.protocol.prognosis.run_lesion_chains`)
    and of its neural stages (:func:`~pemma.protocol.prognosis.run_prognosis`), and the runs both read (the CT base
    and the segmentation runs whose adapters start +PET); none without a ``prognosis`` section."""
    if strategy.prognosis is None:
        return []
    centres = strategy.prognosis_centres
    plan, adapt = first_variant(strategy)
    val, test = data.part(centres, "val"), data.part(centres, "test")
    jobs = []
    for backbone in strategy.backbones:
        seg = {}
        if adapt is not None and strategy.prognosis.adapters_from_segmentation:
            seg = {m: run_dir(out, backbone, method_folder(f"pemma_{m}", *prognosis_pair(strategy, f"pemma_{m}")[0]),
                              adapt, adapt.run_key)
                   for m in strategy.prognosis.methods
                   if f"pemma_{m}" in strategy.methods}
        base = run_dir(out, backbone, "", plan[0], plan[0].run_key)
        shared = {"data_root": data.root, "base_run": base,
                  "out": out / "runs" / backbone / prognosis_folder(strategy), "backbone": backbone,
                  "seed": strategy.split.seed, "centres": centres,
                  "train_ids": [c.case_id for c in data.part(centres, "train")],
                  "held_out_ids": [c.case_id for c in val + test], "segmentation_adapters": seg}
        lesion = {**shared, "methods": strategy.prognosis.methods, "amp": amp}
        neural = {**shared, "spec": strategy.prognosis, "preset": strategy.preset, "max_steps": strategy.max_steps,
                  "val_ids": [c.case_id for c in val]}
        jobs.append((lesion, neural, (base, *seg.values())))
    return jobs


def prognosis_folder(strategy: Strategy) -> str:
    """The prognosis experiment's folder name: its settings' digest, with the segmentation runs whose adapters start
    +PET when they are not the methods' default (exact, pemma) runs, so that a run narrowed to other routes or
    recipes (``--ct-route`` / ``--recipe``: another starting run) does not reuse stages started from another run."""
    spec = strategy.prognosis
    assert spec is not None
    started = {}
    if spec.adapters_from_segmentation:
        for m in spec.methods:
            if f"pemma_{m}" in strategy.methods:
                folder = method_folder(f"pemma_{m}", *prognosis_pair(strategy, f"pemma_{m}")[0])
                if folder != method_folder(f"pemma_{m}", "", ""):
                    started[m] = folder
    return f"prognosis_{spec.digest(started)}"


def prognosis_source(strategy: Strategy, method: str) -> str:
    """Which segmentation run starts ``method``'s +PET stage, for the log: its folder name, and when the asked
    (route, recipe) is not run here, that it fell back."""
    assert strategy.prognosis is not None
    pair, found = prognosis_pair(strategy, f"pemma_{method}")
    text = method_folder(f"pemma_{method}", *pair)
    if not found:
        spec = strategy.prognosis
        asked = ", ".join(f"{k} {v}" for k, v in (("route", spec.segmentation_route),
                                                 ("recipe", spec.segmentation_recipe)) if v is not None)
        text += f" (the prognosis asks for {asked}, which this run does not train)"
    return text
