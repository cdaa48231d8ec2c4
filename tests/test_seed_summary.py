"""``seeds.md`` from finished seed folders (no training): prognosis stages whose C-index is undefined on a seed."""

from __future__ import annotations

import json
from pathlib import Path

from pemma.protocol.demo import write_seed_summary


def test_seed_summary_leaves_out_undefined_c_indices(tmp_path: Path) -> None:
    values = {0: [0.6, None], 1: [0.8, 0.7]}  # (ct, lesion ct) per seed; the lesion CT stage undefined on seed 0
    for seed, (ct, lesion) in values.items():
        folder = tmp_path / f"seed_{seed}"
        folder.mkdir()
        (folder / "findings.json").write_text("{}")
        (folder / "prognosis.json").write_text(json.dumps([
            {"method": "CT model", "stage": "ct", "c_index": ct},
            {"method": "lesion-cox:lora", "stage": "ct", "c_index": lesion}]))
    summary = write_seed_summary({s: tmp_path / f"seed_{s}" for s in values}, tmp_path / "seeds.md").read_text()
    assert "| CT model | ct | 0.700 [0.600, 0.800] |" in summary
    assert "| lesion-cox:lora | ct | 0.700 [0.700, 0.700] (defined on 1/2 seeds) |" in summary


def test_seed_summary_names_the_machine_of_each_seed(tmp_path: Path) -> None:
    from pemma.runtime import machine_line

    amx = {"cpu": "Intel Xeon", "cpu_bf16": "AMX", "cores": 2, "device": "cpu", "torch": "2.13.0",
           "pemma": "0.1.0", "python": "3.11.2"}
    epyc = {**amx, "cpu": "AMD EPYC", "cpu_bf16": "AVX512-BF16"}
    for seed, machine in ((0, amx), (1, epyc), (2, amx), (3, None)):
        folder = tmp_path / f"seed_{seed}"
        folder.mkdir()
        (folder / "findings.json").write_text("{}")
        if machine:
            (folder / "machine.json").write_text(json.dumps(machine))
    summary = write_seed_summary({s: tmp_path / f"seed_{s}" for s in range(4)}, tmp_path / "seeds.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("Machines"))
    # seeds grouped by machine, in seed order; a seed folder from before machine.json says so
    assert (f"seed 0, 2: {machine_line(amx)}; seed 1: {machine_line(epyc)}; seed 3: not recorded") in line
    assert machine_line(epyc) == ("AMD EPYC (bf16: AVX512-BF16), 2 cores, cpu; torch 2.13.0, pemma 0.1.0, "
                                  "Python 3.11.2")
