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
