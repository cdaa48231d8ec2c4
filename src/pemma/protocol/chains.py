"""The runs of ``pemma reproduce``: train one phase, evaluate one run, and the chains of phases of the methods
side by side in worker processes.

A *chain* is every phase one method (with one CT route and recipe) trains on one backbone after the shared CT
pretraining: ``adapt`` then its ``update`` phases, each continuing the one before. Chains share nothing but the
pretrained base, which they only read, so once it is trained they can run at the same time. ``workers`` > 1 runs
them in that many spawned processes (phase by phase: each phase is a job once the one before it is finished), each
with ``threads // workers`` torch threads; every run is trained and evaluated exactly as in one process (the same
seeds, the same run folders, ``phase.json`` / ``evaluation.json``; the same numbers at the same thread count), and
:func:`pemma.protocol.runner.reproduce` then finds them finished and builds the results from them. Work that only
reads finished runs (the prognosis experiment: :class:`Task`) joins the same processes as soon as its runs exist.

Why: on a small CPU a tiny network's training step does not use two cores well (data loading, the loss and the
optimiser run on one), while two one-thread processes run side by side at nearly full speed each (README: the demo's
wall time with and without). The setting (``workers``, strategy key, ``--workers``) is ``1`` by default and ``auto``
in the demo: :func:`resolve_workers`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pemma.config import build_config
from pemma.data.layout import CaseRecord
from pemma.errors import PemmaError
from pemma.evaluation.evaluate import evaluate_model
from pemma.inference.predict import WindowSettings
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import write_text_atomic
from pemma.methods import adapt, load_model, parameter_summary, update
from pemma.protocol.provenance import record_machine
from pemma.protocol.routes import adapt_kwargs, method_folder, update_kwargs
from pemma.protocol.strategy import PlannedPhase, Strategy
from pemma.runtime import call_with_threads, valid_workers
from pemma.training.segmentation import train
from pemma.vocab import EVAL_INPUT_SETS

#: a job of ``reproduce``: (backbone, method, (route, recipe), planned phase)
Job = tuple[str, str, tuple[str, str], PlannedPhase]


@dataclasses.dataclass
class ProtocolData:
    """The dataset's cases and the strategy's train / val / test split of them."""

    root: str
    cases: dict[str, CaseRecord]
    split: dict[str, dict[str, list[str]]]

    def part(self, centres: tuple[str, ...], which: str) -> list[CaseRecord]:
        return [self.cases[i] for c in centres for i in self.split[c][which]]


def run_dir(out: Path, backbone: str, method: str, planned: PlannedPhase | None, key: str | None) -> Path:
    """``OUT/runs/<backbone>/<method folder, or "shared" for the pretraining>/<run key>``."""
    shared = planned is not None and planned.phase.operation == "pretrain"
    return out / "runs" / backbone / ("shared" if shared else method) / str(key)


def parent_dir(strategy: Strategy, out: Path, backbone: str, folder: str, planned: PlannedPhase) -> Path | None:
    """The run ``planned`` continues (None for the pretraining)."""
    parent = next((p for p in strategy.plan() if p.run_key == planned.parent_key), None)
    return run_dir(out, backbone, folder, parent, planned.parent_key) if parent else None


def train_phase(strategy: Strategy, data: ProtocolData, backbone: str, method: str, planned: PlannedPhase,
                run: Path, parent: Path | None, progress: bool, route: str = "", recipe: str = "",
                amp: bool = False) -> None:
    """Train one phase into ``run`` (resuming from its checkpoint), then mark it finished (``phase.json``)."""
    phase = planned.phase
    cfg = build_config(strategy.preset, overrides={
        "data": {"root": data.root, "centres": list(phase.centres), "modalities": list(phase.modalities)},
        "model": {"backbone": backbone}, "train": {"max_steps": strategy.max_steps, "seed": strategy.split.seed,
                                                   "epochs": phase.epochs, "amp": amp}})
    split = (data.part(phase.centres, "train"), data.part(phase.centres, "val"))
    resume = (run / "checkpoint.pt").is_file()
    if phase.operation == "pretrain":
        train(cfg, run, resume=resume, progress=progress, split=split)
    elif phase.operation == "adapt":  # the phase's one new modality (a second adapt stacks it: methods.stacking)
        seen = {m for p in strategy.variant_phases(planned.variant)[: planned.index] for m in p.modalities}
        added = next(m for m in phase.modalities if m not in seen)
        adapt(parent, cfg, run, method=method, resume=resume, progress=progress, split=split, added_modality=added,
              **adapt_kwargs(method, route, recipe, backbone, strategy.source))
    else:
        update(parent, cfg, list(phase.modalities), run, resume=resume, progress=progress, split=split,
               **update_kwargs(update, method, route, recipe))
    pair = {"route": route, "recipe": recipe} if route or recipe else {}
    write_text_atomic(run / "phase.json", json.dumps({"phase": phase.name, "method": method, **pair,
                                                      "parent": str(parent) if parent else None}, indent=2))


def evaluate_run(run: Path, data: ProtocolData, centres: tuple[str, ...], device: torch.device,
                 inputs_cache: dict[tuple, Any], input_sets: tuple[tuple[str, ...], ...] = EVAL_INPUT_SETS,
                 predictions: PredictionCache | None = None) -> dict[str, Any]:
    """``{"centre|inputs": DSCagg dict}`` for every centre and accepted input set of ``input_sets`` (the strategy's;
    cached in the run); the predictions go into ``predictions`` (reused by later runs served by the same network,
    the overlays and the lesion chain)."""
    cache_path = run / "evaluation.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    # an evaluation cached before per-case results were kept ("|cases") is redone
    missing = [(c, m) for c in centres for m in input_sets
               if f"{c}|{'+'.join(m)}" not in cache
               or (cache[f"{c}|{'+'.join(m)}"] is not None and f"{c}|{'+'.join(m)}|cases" not in cache)]
    if missing:
        model = load_model(run, device)
        if "params" not in cache:
            cache["params"] = parameter_summary(run)
        for centre, modalities in missing:
            key = f"{centre}|{'+'.join(modalities)}"
            if list(modalities) not in model.input_sets:
                cache[key] = None
                continue
            result = evaluate_model(model, data.part((centre,), "test"), modalities, device, progress=False,
                                    inputs_cache=inputs_cache, predictions=predictions)
            cache[key] = result["DSCagg"]
            cache[f"{key}|cases"] = [{**row, "counts": result["counts"][row["case_id"]]} for row in result["cases"]]
        write_text_atomic(cache_path, json.dumps(cache, indent=2, default=float))
    return cache


def resolve_workers(setting: int | str, device: torch.device, chains: int) -> tuple[int, str]:
    """How many worker processes run the chains, and why (for the log).

    ``auto``: one on CUDA (the processes would share one device), else two where the process may use two or more
    cores (never more than there are chains); an integer is taken as it is (at most the number of chains).

    Example:
        >>> resolve_workers("auto", torch.device("cpu"), chains=5)  # on a 2-core machine
        (2, '2 worker processes x 1 torch thread: the method chains side by side (cpu, 2 cores)')
    """
    if not valid_workers(setting):
        raise PemmaError(f"workers must be an integer >= 1 or auto, got {setting!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if setting == "auto":
        setting = 1 if device.type == "cuda" or cores < 2 else 2
    workers = max(1, min(int(setting), chains))
    if workers == 1:
        return 1, "1 process: the method chains one after another"
    threads = max(1, torch.get_num_threads() // workers)
    return workers, (f"{workers} worker processes x {threads} torch thread{'s' * (threads > 1)}: the method chains "
                     f"side by side ({device.type}, {cores} cores)")


def job_run(out: Path, job: Job) -> Path:
    """The run folder of a job."""
    backbone, method, pair, planned = job
    return run_dir(out, backbone, method_folder(method, *pair), planned, planned.run_key)


def run_phase(strategy: Strategy, data: ProtocolData, out: Path, job: Job, device: torch.device, amp: bool,
              inputs_cache: dict[tuple, Any], predictions: PredictionCache, progress: bool = True) -> dict[str, Any]:
    """Train one job's phase (unless finished) and evaluate it (unless cached); returns its evaluation."""
    backbone, method, pair, planned = job
    run = job_run(out, job)
    if not (run / "phase.json").is_file():
        record_machine(run, device)  # the run may be reused by a later call on another machine: provenance
        parent = parent_dir(strategy, out, backbone, method_folder(method, *pair), planned)
        train_phase(strategy, data, backbone, method, planned, run, parent, progress=progress, route=pair[0],
                    recipe=pair[1], amp=amp)
    return evaluate_run(run, data, planned.eval_centres, device, inputs_cache, strategy.eval_input_sets, predictions)


#: a worker process's preprocessed test inputs and predictions, kept across the jobs it runs (per amp setting)
_WORKER_CACHES: dict[bool, tuple[dict[tuple, Any], PredictionCache]] = {}


def _run_job(strategy: Strategy, data: ProtocolData, out: Path, job: Job, device: str, amp: bool,
             threads: int) -> str:
    """One worker's job: :func:`run_phase` with this process's caches and ``threads`` torch threads."""
    torch.set_num_threads(threads)
    inputs_cache, predictions = _WORKER_CACHES.setdefault(amp, ({}, PredictionCache(window=WindowSettings(amp=amp))))
    run_phase(strategy, data, out, job, torch.device(device), amp, inputs_cache, predictions, progress=False)
    return f"{job[0]} {method_folder(job[1], *job[2])} {job[3].phase.name}"


def chains_of(jobs: list[Job]) -> list[list[Job]]:
    """The jobs after the pretraining, grouped per (backbone, method, route, recipe) in their order."""
    chains: dict[tuple[str, str, tuple[str, str]], list[Job]] = {}
    for job in jobs:
        if job[3].phase.operation != "pretrain":
            chains.setdefault(job[:3], []).append(job)
    return list(chains.values())


@dataclasses.dataclass(frozen=True)
class Task:
    """Work beside the method chains that only reads finished runs (the prognosis experiment of a backbone): it runs
    in the worker pool as soon as every run of ``needs`` is trained (``phase.json``) and leaves its results on disk.

    Attributes:
        label: names the task in the log.
        function: a module-level function (it is pickled into the worker), called as ``function(**kwargs)``.
        kwargs: its arguments.
        needs: run folders that must be finished first.
    """

    label: str
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    needs: tuple[Path, ...] = ()

    def ready(self) -> bool:
        return all((run / "phase.json").is_file() for run in self.needs)


def run_chains(strategy: Strategy, data: ProtocolData, out: Path, chains: list[list[Job]], workers: int,
               device: torch.device, amp: bool, progress: bool = True, tasks: Sequence[Task] = ()) -> list[Task]:
    """Train and evaluate ``chains`` in ``workers`` spawned processes (the pretrained bases must exist), and run
    ``tasks`` in the same processes once the runs they need are finished.

    Each phase is one job, ready when the phase before it in its chain is finished; a task is ready when its runs
    are. Whenever a process is free it takes the ready task first (tasks are the longest items: starting them early
    keeps the processes busy to the end), else the earliest ready phase, so the first phase of every chain comes
    before any second one. The first failure of a phase stops the jobs not yet started and is raised here; finished
    runs stay and resume. A failed task is not raised: it is returned (with the tasks whose runs never finished) for
    the caller to run itself, where its error is reported as it would be without workers.

    Returns:
        The tasks not done in the workers.
    """
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds OpenMP threads
    ready: list[tuple[list[Job], int]] = [(chain, 0) for chain in chains]
    waiting, not_done = list(tasks), []
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        running: dict[concurrent.futures.Future, tuple[list[Job], int] | Task] = {}

        def dispatch() -> None:
            while len(running) < workers:
                task = next((t for t in waiting if t.ready()), None)
                if task is not None:
                    waiting.remove(task)
                    running[pool.submit(call_with_threads, task.function, threads, task.kwargs)] = task
                elif ready:
                    chain, index = ready.pop(0)
                    running[pool.submit(_run_job, strategy, data, out, chain[index], device.type, amp, threads)] = (
                        chain, index)
                else:
                    return

        bar = tqdm(total=sum(map(len, chains)) + len(waiting), desc="chains", unit="job", disable=not progress,
                   dynamic_ncols=True)
        try:
            dispatch()
            while running:
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    if isinstance(item, Task):
                        try:
                            future.result()
                            print(f"{item.label}: done in a worker", flush=True)
                        except Exception as exc:  # noqa: BLE001 - the caller runs it again and reports the error
                            print(f"{item.label}: failed in a worker ({exc}); it runs again after the chains",
                                  flush=True)
                            not_done.append(item)
                    else:
                        chain, index = item
                        bar.set_postfix_str(future.result())
                        if index + 1 < len(chain):
                            ready.append((chain, index + 1))
                    bar.update()
                dispatch()
        except BaseException:
            for future in running:
                future.cancel()
            raise
        finally:
            bar.close()
    return not_done + waiting
