"""Which machine trained each run of ``pemma reproduce``.

The same seed gives other numbers, and sometimes other verdicts, on another CPU kind (README: findings over seeds),
and ``reproduce`` reuses every finished run it finds, so one results folder can hold runs trained by different calls
on different machines. Each run folder therefore gets its own ``machine.json`` (:func:`pemma.runtime.describe_machine`)
when its work starts: the training phases (``phase.json``), the neural prognosis stages (``stage.json``) and the
lesion-feature chains (``chain.json``). The report and the demo's ``seeds.md`` name every machine that trained a run
of the results they summarise. A run resumed from its checkpoint on another machine records the machine that
finished it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pemma.io_utils import write_text_atomic
from pemma.runtime import describe_machine, machine_line

#: the file a run folder of each kind is finished with
FINISHED_MARKERS = ("phase.json", "stage.json", "chain.json")

NOT_RECORDED = "not recorded"


def record_machine(run: Path, device: torch.device) -> dict[str, Any]:
    """Write ``run/machine.json`` (:func:`describe_machine` of ``device``) before the run's work starts; returns it.

    Example:
        >>> record_machine(Path(tmp) / "run", torch.device("cpu"))["device"]  # doctest: +SKIP
        'cpu'
    """
    machine = describe_machine(device)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "machine.json", json.dumps(machine, indent=2))
    return machine


def run_machines(results: Path) -> dict[str, list[str]]:
    """``{machine line (or "not recorded"): [run folders relative to results]}`` over every finished run under
    ``results/runs`` (a folder with a marker of :data:`FINISHED_MARKERS`), in path order."""
    machines: dict[str, list[str]] = {}
    runs = sorted({m.parent for marker in FINISHED_MARKERS for m in (results / "runs").rglob(marker)})
    for run in runs:
        file = run / "machine.json"
        line = machine_line(json.loads(file.read_text())) if file.is_file() else NOT_RECORDED
        machines.setdefault(line, []).append(run.relative_to(results).as_posix())
    return machines


def other_machines_note(results: Path, current: str) -> str:
    """A sentence for the report naming the runs of ``results`` trained on a machine other than ``current`` (runs
    reused from an earlier call) or with no record; ``""`` when every run was trained on ``current``."""
    parts = []
    for line, runs in run_machines(results).items():
        if line != current:
            shown = ", ".join(f"`{r}`" for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
            where = ("have no machine record (trained before pemma recorded one)" if line == NOT_RECORDED
                     else f"were trained on {line}")
            parts.append(f"{len(runs)} run(s) {where}: {shown}")
    return ("Runs reused from earlier calls: " + "; ".join(parts) + ".") if parts else ""


def seed_machines(results: Path) -> str:
    """The machine(s) that trained the runs of one ``reproduce`` results folder, one line, or ``"mixed: A / B"``
    when several did. Runs without a record count as ``"not recorded"``; a folder whose runs all lack one names its
    ``machine.json`` (the latest call's machine) as such, and a folder with no runs names its ``machine.json``."""
    file = results / "machine.json"
    latest = machine_line(json.loads(file.read_text())) if file.is_file() else None
    lines = list(run_machines(results))
    if not lines or lines == [NOT_RECORDED]:
        if latest is None:
            return NOT_RECORDED
        return latest if not lines else f"{latest} (the latest call's machine; its runs have no record)"
    return lines[0] if len(lines) == 1 else "mixed: " + " / ".join(lines)
