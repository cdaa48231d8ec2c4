"""Which machine trained each run of a results folder (no training: run folders made by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pemma.protocol.demo import write_seed_summary
from pemma.protocol.provenance import other_machines_note, record_machine, run_machines, seed_machines
from pemma.runtime import describe_machine, machine_line

AMX = {"cpu": "Intel Xeon", "cpu_bf16": "AMX", "cores": 2, "device": "cpu", "torch": "2.13.0", "pemma": "0.1.0",
       "python": "3.11.2"}
EPYC = {**AMX, "cpu": "AMD EPYC", "cpu_bf16": "AVX512-BF16"}


def _run(results: Path, name: str, marker: str, machine: dict | None) -> None:
    run = results / "runs" / "unetr" / name
    run.mkdir(parents=True)
    (run / marker).write_text("{}")
    if machine:
        (run / "machine.json").write_text(json.dumps(machine))


def test_record_machine_writes_the_description(tmp_path: Path) -> None:
    written = record_machine(tmp_path / "run", torch.device("cpu"))
    assert json.loads((tmp_path / "run" / "machine.json").read_text()) == written == describe_machine(
        torch.device("cpu"))


def test_runs_are_grouped_by_the_machine_that_trained_them(tmp_path: Path) -> None:
    _run(tmp_path, "shared/00_pretrain", "phase.json", AMX)
    _run(tmp_path, "pemma_lora/01_adapt", "phase.json", EPYC)
    _run(tmp_path, "prognosis_x/ct", "stage.json", EPYC)
    _run(tmp_path, "prognosis_x/lesion_lora", "chain.json", None)
    (tmp_path / "runs" / "unetr" / "pemma_dora" / "01_adapt").mkdir(parents=True)  # unfinished: not a run yet
    (tmp_path / "runs" / "unetr" / "pemma_dora" / "01_adapt" / "machine.json").write_text(json.dumps(AMX))
    assert run_machines(tmp_path) == {
        machine_line(EPYC): ["runs/unetr/pemma_lora/01_adapt", "runs/unetr/prognosis_x/ct"],
        "not recorded": ["runs/unetr/prognosis_x/lesion_lora"],
        machine_line(AMX): ["runs/unetr/shared/00_pretrain"]}
    note = other_machines_note(tmp_path, machine_line(EPYC))
    assert note == (f"Runs reused from earlier calls: 1 run(s) have no machine record (trained before pemma "
                    f"recorded one): `runs/unetr/prognosis_x/lesion_lora`; 1 run(s) were trained on "
                    f"{machine_line(AMX)}: `runs/unetr/shared/00_pretrain`.")
    assert seed_machines(tmp_path) == (f"mixed: {machine_line(EPYC)} / not recorded / {machine_line(AMX)}")


def test_a_results_folder_trained_on_one_machine_says_nothing_more(tmp_path: Path) -> None:
    for name in ("shared/00_pretrain", "pemma_lora/01_adapt", "pemma_lora/02_update", "prognosis_x/ct"):
        _run(tmp_path, name, "stage.json" if "prognosis" in name else "phase.json", AMX)
    (tmp_path / "machine.json").write_text(json.dumps(EPYC))  # the latest call (reusing every run) ran elsewhere
    assert other_machines_note(tmp_path, machine_line(AMX)) == ""
    assert seed_machines(tmp_path) == machine_line(AMX)  # the machine that trained the runs, not the latest call's
    assert "Runs reused" in other_machines_note(tmp_path, machine_line(EPYC))


def test_seed_summary_names_mixed_seeds(tmp_path: Path) -> None:
    for seed, machines in ((0, [AMX, AMX]), (1, [AMX, EPYC]), (2, [None, None])):
        folder = tmp_path / f"seed_{seed}"
        folder.mkdir()
        (folder / "findings.json").write_text("{}")
        (folder / "machine.json").write_text(json.dumps(EPYC))
        for i, machine in enumerate(machines):
            _run(folder, f"m/0{i}_phase", "phase.json", machine)
    summary = write_seed_summary({s: tmp_path / f"seed_{s}" for s in range(3)}, tmp_path / "seeds.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("Machines"))
    assert (f"seed 0: {machine_line(AMX)}; seed 1: mixed: {machine_line(AMX)} / {machine_line(EPYC)}; "
            f"seed 2: {machine_line(EPYC)} (the latest call's machine; its runs have no record)") in line
