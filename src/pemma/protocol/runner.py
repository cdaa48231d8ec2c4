"""``pemma reproduce``: every phase of a strategy for every method, evaluation of every centre seen so far
with CT, PET and CT+PET inputs after each phase, then results, report and figures.

Runs live in ``OUT/runs/<backbone>/<method or "shared">/<run key>`` (PEMMA methods with a route / recipe other
than ``exact`` / ``pemma``: ``<method>_<route>_<recipe>``, see :mod:`pemma.protocol.routes`); a phase whose
``phase.json`` exists is finished and not recomputed (an interrupted run resumes from its checkpoint), and
evaluations are cached in ``evaluation.json`` beside it. Each run folder records the machine that trained it
(``machine.json``, :mod:`pemma.protocol.provenance`); the report names runs reused from another machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pemma.data.check import preflight
from pemma.data.layout import discover_cases
from pemma.errors import PemmaError
from pemma.inference.predict import WindowSettings
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import write_text_atomic
from pemma.protocol import chains
from pemma.protocol.chains import ProtocolData, run_dir
from pemma.protocol.claims.cindex import prognosis_findings  # the lesion chain's cindex_gain_* claims
from pemma.protocol.prognosis_plan import first_variant, prognosis_folder, prognosis_jobs, prognosis_source
from pemma.protocol.provenance import other_machines_note, record_machine
from pemma.protocol.results import markdown_report, write_case_results, write_results
from pemma.protocol.reuse import (
    TRAINING_FILE,
    check_earlier_constructions,
    check_same_split,
    check_same_training,
    training_settings,
)
from pemma.protocol.routes import adapt_kwargs, method_folder, pairs
from pemma.protocol.split import split_case_ids
from pemma.protocol.strategy import PlannedPhase, Strategy, StrategyError
from pemma.protocol.strategy_file import load_strategy
from pemma.run_guards import run_folder_lock
from pemma.runtime import machine_line, resolve_amp, side_by_side
from pemma.vocab import EVAL_INPUT_SETS, METHODS, canonical_method, method_choices


def _percent(value: float | str | None) -> float | None:
    """A percentage of ``pemma params`` (a number; ``"7.912%"`` in the caches of earlier versions)."""
    return None if value is None or value == "" else float(str(value).rstrip("%"))


def _rows(cache: dict[str, Any], backbone: str, method: str, planned: PlannedPhase,
          pair: tuple[str, str] = ("", ""),
          input_sets: tuple[tuple[str, ...], ...] = EVAL_INPUT_SETS) -> list[dict[str, Any]]:
    params = cache.get("params", {})
    percent = params.get("percent_of_early_fusion")
    rows = []
    for centre in planned.eval_centres:
        for modalities in input_sets:
            scores = cache.get(f"{centre}|{'+'.join(modalities)}")
            if scores is None:
                continue
            cases = cache.get(f"{centre}|{'+'.join(modalities)}|cases") or []
            rows.append({"backbone": backbone, "method": method, "route": pair[0], "recipe": pair[1],
                         "variant": planned.variant,
                         "phase": planned.phase.name, "phase_index": planned.index, "eval_centre": centre,
                         "inputs": "+".join(modalities), "DSCagg_GTVp": scores["GTVp"],
                         "DSCagg_GTVn": scores["GTVn"], "DSCagg_mean": scores["mean"],
                         "HD95_GTVp": _nanmean(c.get("hd95_GTVp") for c in cases),
                         "HD95_GTVn": _nanmean(c.get("hd95_GTVn") for c in cases), "n_cases": len(cases),
                         "HD95_n_GTVp": _defined(c.get("hd95_GTVp") for c in cases),
                         "HD95_n_GTVn": _defined(c.get("hd95_GTVn") for c in cases),
                         "trainable_params": params.get("trainable"),
                         "percent_of_early_fusion": _percent(percent)})
    return rows


def _case_rows(cache: dict[str, Any], backbone: str, method: str, planned: PlannedPhase,
               pair: tuple[str, str] = ("", ""),
               input_sets: tuple[tuple[str, ...], ...] = EVAL_INPUT_SETS) -> list[dict[str, Any]]:
    """Per-case results of one evaluated phase (the rows of ``results_cases.csv``)."""
    out = []
    for centre in planned.eval_centres:
        for modalities in input_sets:
            for case in cache.get(f"{centre}|{'+'.join(modalities)}|cases") or []:
                out.append({"backbone": backbone, "method": method, "route": pair[0], "recipe": pair[1],
                            "variant": planned.variant,
                            "phase": planned.phase.name, "phase_index": planned.index, "eval_centre": centre,
                            "inputs": "+".join(modalities), **case})
    return out


def _nanmean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(numbers) / len(numbers) if numbers else None


def _defined(values: Iterable[Any]) -> int:
    """Cases whose HD95 is defined (the mean's n: a missed lesion has none, so it is left out of the mean)."""
    return sum(v is not None and not math.isnan(float(v)) for v in values)


def reproduce(strategy_path: str | Path, data_root: str | Path, out_dir: str | Path, *,
              backbones: list[str] | None = None, preset: str | None = None, max_steps: int | None = None,
              variants: list[str] | None = None, methods: list[str] | None = None, seed: int | None = None,
              exclude_bad_cases: bool = False, progress: bool = True, ct_routes: list[str] | None = None,
              recipes: list[str] | None = None, amp: bool | str | None = None,
              workers: int | str | None = None) -> Path:
    """Run a strategy on a dataset; returns the path of the Markdown report.

    ``ct_routes`` / ``recipes`` replace the strategy's ``routes`` / ``recipes`` (the PEMMA methods run once per pair);
    ``amp`` its ``amp`` (``True``, ``False`` or ``"auto"``: :func:`~pemma.runtime.resolve_amp`, once for the run:
    every segmentation training and prediction of the run uses it; the neural prognosis stages run in fp32).

    Every case the strategy will read is checked before anything trains (:func:`~pemma.data.check.check_cases`):
    a bad case stops the run at once, or, with ``exclude_bad_cases``, is left out before the split (listed in
    ``excluded_cases.json``).

    Example:
        >>> reproduce("strategies/hecktor2022.yaml", "data/phantom", "results/", max_steps=20)
    """
    started = time.time()
    out = Path(out_dir)
    with run_folder_lock(out):  # one command at a time writes an --out (its runs, caches and reports)
        all_cases = discover_cases(data_root)
        # the strategy's modalities (read once with every labelled centre) decide which cases count
        labelled = {case.centre for case in all_cases if case.label is not None}
        needed = set(load_strategy(strategy_path, dataset_centres=labelled).modalities)
        by_centre: dict[str, list[str]] = {}
        for case in all_cases:
            if case.label is not None and needed <= set(case.images):
                by_centre.setdefault(case.centre, []).append(case.case_id)
        strategy = load_strategy(strategy_path, dataset_centres=by_centre).with_overrides(
            backbones=backbones, preset=preset, max_steps=max_steps, variants=variants, seed=seed, routes=ct_routes,
            recipes=recipes, amp=amp, workers=workers)
        if methods:
            unknown = sorted(m for m in methods if m not in method_choices())
            if unknown:
                raise PemmaError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
            strategy = dataclasses.replace(strategy, methods=tuple(dict.fromkeys(canonical_method(m) for m in methods)))
        for method in strategy.methods:  # a route or recipe this build cannot apply stops here, before any training
            for pair in pairs(strategy, method):
                for backbone in strategy.backbones:
                    adapt_kwargs(method, *pair, backbone, strategy.source)
        used = sorted({c for p in strategy.plan() for c in p.phase.centres} | set(strategy.prognosis_centres))
        def split_of(ids_by_centre: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
            try:
                return split_case_ids({c: ids_by_centre[c] for c in used}, strategy.split)
            except StrategyError as exc:
                raise StrategyError(f"{strategy.source}: {exc}") from None

        split_of(by_centre)  # split fractions that leave a centre no training case fail before the data check
        cases_by_id = {c.case_id: c for c in all_cases}
        good, checked = preflight([cases_by_id[i] for c in used for i in by_centre[c]], list(strategy.modalities),
                                  exclude_bad_cases, source=str(data_root))
        if not checked.ok:
            kept = {c.case_id for c in good}
            by_centre = {c: [i for i in ids if i in kept] for c, ids in by_centre.items()}
        split = split_of(by_centre)
        check_same_split(out, split)
        training = training_settings(strategy, [cases_by_id[i] for c in used for i in by_centre[c]])
        check_same_training(out, training)
        # only the runs this strategy would reuse
        check_earlier_constructions(out, strategy.backbones, full_finetune="full_finetune" in strategy.methods,
                                    authors=any(recipe == "authors" for _, recipe in strategy.pairs))
        if not checked.ok:
            write_text_atomic(out / "excluded_cases.json", json.dumps(checked.to_dict(), indent=2))
        data = ProtocolData(str(Path(data_root).resolve()), {c.case_id: c for c in all_cases}, split)
        write_text_atomic(out / "split.json", json.dumps(split, indent=2))
        write_text_atomic(out / "strategy.json", json.dumps(strategy.to_dict(), indent=2))
        write_text_atomic(out / TRAINING_FILE, json.dumps(training, indent=2))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        mixed, precision = resolve_amp(strategy.amp, device)
        # the CPU kind changes the numbers of the same seed (README: findings over seeds), so the run says where it ran
        machine = record_machine(out, device)  # as each run folder records its own

        jobs = [(b, m, pair, p) for b in strategy.backbones for m in strategy.methods for pair in pairs(strategy, m)
                for p in strategy.plan()]
        rows: list[dict[str, Any]] = []
        case_rows: list[dict[str, Any]] = []
        inputs_cache: dict[tuple, Any] = {}  # preprocessed test inputs, shared by every model evaluated
        # every prediction made, so none is made twice (evaluation, overlays, lesions), in the run's precision
        predictions = PredictionCache(window=WindowSettings(amp=mixed))
        count, how = chains.resolve_workers(strategy.workers, device, len(chains.chains_of(jobs)))
        print(f"reproduce: {precision}; {how}", flush=True)
        pending = [c for c in chains.chains_of(jobs) if not all(_finished(out, job) for job in c)] if count > 1 else []
        if pending:  # the CT bases here (trained and evaluated), then the method chains side by side in workers
            for job in jobs:
                if job[3].phase.operation == "pretrain":
                    chains.run_phase(strategy, data, out, job, device, mixed, inputs_cache, predictions, progress)
            # the prognosis experiment joins them once the runs it reads are trained
            chains.run_chains(strategy, data, out, pending, count, device, mixed, progress,
                              tasks=_prognosis_tasks(strategy, data, out, mixed))
        bar = tqdm(jobs, desc="reproduce", unit="phase", disable=not progress, dynamic_ncols=True)
        for job in bar:
            backbone, method, pair, planned = job
            bar.set_postfix_str(f"{backbone} {method_folder(method, *pair)} {planned.variant} {planned.phase.name}")
            cache = chains.run_phase(strategy, data, out, job, device, mixed, inputs_cache, predictions, progress)
            sets = strategy.eval_input_sets
            rows += _rows(cache, backbone, method, planned, pair, sets)
            case_rows += _case_rows(cache, backbone, method, planned, pair, sets)
        bar.close()
        write_results(rows, out)
        write_case_results(case_rows, out)
        prognosis = _prognosis(strategy, data, out, predictions, count)
        figures = _overlays(strategy, data, out, device, inputs_cache, predictions)
        return _report(strategy, rows, out, time.time() - started, figures, prognosis, case_rows, precision,
                       machine_line(machine))


def _finished(out: Path, job: chains.Job) -> bool:
    """Whether a job's run is trained and evaluated (what a chain worker leaves)."""
    run = chains.job_run(out, job)
    return (run / "phase.json").is_file() and (run / "evaluation.json").is_file()


def _first_folder(strategy: Strategy, method: str) -> str:
    """The run folder of ``method``'s first (route, recipe): what the overlays read."""
    return method_folder(method, *pairs(strategy, method)[0])


def _prognosis_tasks(strategy: Strategy, data: ProtocolData, out: Path, amp: bool) -> list[chains.Task]:
    """The prognosis experiment as worker tasks beside the method chains (each backbone's neural stages and its
    lesion-feature chains, each once the runs it reads are trained); :func:`_prognosis` then reads their results."""
    from pemma.protocol.prognosis import run_lesion_chains, run_prognosis

    tasks = []
    for lesion, neural, needs in prognosis_jobs(strategy, data, out, amp):
        tasks.append(chains.Task(f"{neural['backbone']} prognosis: lesion-feature chains", run_lesion_chains, lesion,
                                 needs))
        tasks.append(chains.Task(f"{neural['backbone']} prognosis: neural stages", run_prognosis,
                                 {**neural, "lesion": False}, needs))
    return tasks


def _prognosis(strategy: Strategy, data: ProtocolData, out: Path,
               predictions: PredictionCache | None = None, workers: int = 1) -> list[dict[str, Any]]:
    """The strategy's prognosis experiment for every backbone (none without a ``prognosis`` section): trained and
    evaluated here unless the chains' workers did it (:func:`_prognosis_tasks`); the lesion chain's segmentations
    come from ``predictions`` where evaluation made them. With ``workers`` > 1 lesion-feature chains not yet run go
    to a worker process while this one trains the neural stages (both cache their results on disk)."""
    from pemma.protocol.prognosis import lesion_chains_finished, run_lesion_chains, run_prognosis, write_prognosis

    jobs = prognosis_jobs(strategy, data, out, predictions.window.amp if predictions is not None else False)
    for _, neural, _ in jobs:
        seg = neural["segmentation_adapters"]
        start = {m: f"the adapters of {prognosis_source(strategy, m)}" if m in seg else "new adapters"
                 for m in strategy.prognosis.methods}
        print(f"prognosis ({neural['backbone']}): CT -> CT+PET -> CT+PET+EHR on {', '.join(neural['centres'])}; "
              "+PET starts from " + ", ".join(f"{m}: {how}" for m, how in start.items()), flush=True)
    rows: list[dict[str, Any]] = []
    pending = [lesion for lesion, _, _ in jobs if not lesion_chains_finished(lesion["out"], lesion["methods"],
                                                                            lesion["segmentation_adapters"])]
    if workers > 1 and pending:  # the lesion chains (chain.json) beside the neural stages, then read back below
        with side_by_side(run_lesion_chains, pending):
            for _, neural, _ in jobs:
                run_prognosis(**neural, predictions=predictions, lesion=False)
    for _, neural, _ in jobs:
        rows += run_prognosis(**neural, predictions=predictions)
    if jobs:
        write_prognosis(rows, out)
    return rows


def _with_risks(strategy: Strategy, out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prognosis rows with their held-out cases' risks (``cases``) where the stage's evaluation report has them
    (``<stage>/evaluation/survival_<stage>.json``), for the C-index claims' paired bootstrap; the lesion chain's
    rows as they are (their claims read ``chain.json``)."""
    from pemma.protocol.prognosis import is_lesion

    if strategy.prognosis is None:
        return rows
    out_rows = []
    for row in rows:
        if is_lesion(row["method"]):
            out_rows.append(row)
            continue
        folder = "ct" if row["stage"] == "ct" else f"{row['method']}_{row['stage']}"
        report = (out / "runs" / row["backbone"] / prognosis_folder(strategy) / folder / "evaluation"
                  / f"survival_{row['stage']}.json")
        if "cases" not in row and report.is_file():
            row = {**row, "cases": json.loads(report.read_text()).get("cases")}
        out_rows.append(row)
    return out_rows


def _overlays(strategy: Strategy, data: ProtocolData, out: Path, device: torch.device,
              inputs_cache: dict[tuple, Any], predictions: PredictionCache | None = None) -> dict[str, str]:
    """Overlay PNGs for the first backbone and variant: CT+PET predictions after the adapt phase, and CT-input
    predictions after the last phase (forgetting) on the pretraining centres (the evaluation's predictions from
    ``predictions``: the test cases shown were all evaluated)."""
    from pemma.protocol.overlays import overlay_figure

    backbone, variant = strategy.backbones[0], strategy.variant_names[0]
    plan, adapt = first_variant(strategy)
    pretrain = plan[0]
    base = run_dir(out, backbone, "", pretrain, pretrain.run_key)
    figures: dict[str, str] = {}
    if adapt is None or adapt.phase.modalities != ("ct", "pet"):  # the overlays show CT and PET images
        return figures
    last = plan[-1]
    views = [(adapt, ["ct", "pet"], adapt.eval_centres, "overlays_adapt.png",
              f"after {adapt.phase.name}, CT+PET input (test cases of {', '.join(adapt.eval_centres)})")]
    if last.index > adapt.index:
        views.append((last, ["ct"], pretrain.phase.centres, f"overlays_{variant}_last.png",
                      f"after {last.phase.name} ({variant}), CT input on the pretraining centres (forgetting)"))
    for planned, mods, centres, name, caption in views:
        runs: dict[str, tuple[Path, list[str]]] = {"CT model (CT)": (base, ["ct"])}
        runs.update({f"{m} ({'+'.join(mods).upper()})": (run_dir(out, backbone, _first_folder(strategy, m), planned,
                                                                   planned.run_key), mods)
                     for m in strategy.methods})
        overlay_figure(data.part(tuple(centres), "test"), runs, out / name, device, title=caption,
                       inputs_cache=inputs_cache, predictions=predictions)
        figures[f"Overlays {caption}"] = name
    return figures


def _report(strategy: Strategy, rows: list[dict[str, Any]], out: Path, seconds: float,
            overlays: dict[str, str] | None = None, prognosis: list[dict[str, Any]] | None = None,
            case_rows: list[dict[str, Any]] | None = None, precision: str = "", machine: str = "") -> Path:
    from pemma.protocol.figures import plot_dsc_across_phases
    from pemma.protocol.findings import collect_findings, findings_markdown
    from pemma.protocol.prognosis import prognosis_markdown

    figures = {}
    pretrain_centres = list(strategy.phases[0].centres)
    for variant in strategy.variant_names:
        name = f"dsc_{variant}.png"
        plot_dsc_across_phases(rows, out / name, variant=variant, centres=pretrain_centres,
                               title=f"DSCagg on the pretraining centres ({variant})")
        figures[f"DSCagg mean on {', '.join(pretrain_centres)} across phases ({variant})"] = name
    figures.update(overlays or {})
    claims = collect_findings(rows, strategy, case_rows, _with_risks(strategy, out, prognosis or []))
    claims.update(prognosis_findings(out, strategy.split.seed, f"runs/*/{prognosis_folder(strategy)}")
                  if strategy.prognosis else {})
    write_text_atomic(out / "findings.json", json.dumps(claims, indent=2, default=float))
    findings = ["## Findings", "",
                "The paper's claims checked on this run (definitions: `pemma.protocol.claims`), each beside the "
                "paper's statement; a verdict needs the 95% paired-bootstrap CI over the test cases (n) to exclude "
                "the opposite.", ""]
    for label, found in claims.items():
        findings += [f"**{label}**", "", *findings_markdown(found), ""]
    if prognosis:
        findings += prognosis_markdown(prognosis)
    notes = [(f"Strategy `{strategy.name}` ({strategy.source}), preset `{strategy.preset}`, max steps "
             f"{strategy.max_steps}, split seed {strategy.split.seed}; test cases per centre held out "
             f"(`split.json`). Wall time {seconds / 60:.1f} min." + (f" Precision: {precision}." if precision else "")
             + (f" Machine: {machine} (`machine.json`; each run's folder has its own). " if machine else "")
             + (other_machines_note(out, machine) if machine else "")).rstrip()]
    text = markdown_report(rows, title=f"PEMMA protocol: {strategy.name}", figures=figures,
                           learnt_at=strategy.centre_learnt_at(strategy.variant_names[0]), notes=notes,
                           extra_sections=findings)
    report = out / "report.md"
    write_text_atomic(report, text)
    return report
