"""``pemma check --register`` registers with the settings of a run (``--model``), a preset or a config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pemma.data.phantom_misalign import misalign_pet, rigid_matrix

MOVED = "CHUM-001"


def _data(phantom: Path, root: Path) -> Path:
    data = root / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for case in ("CHUM-000", MOVED):
        for suffix in ("CT", "PT"):
            shutil.copy(phantom / "imagesTr" / f"{case}__{suffix}.nii.gz", data / "imagesTr")
        shutil.copy(phantom / "labelsTr" / f"{case}.nii.gz", data / "labelsTr")
    ct = nib.load(data / "imagesTr" / f"{MOVED}__CT.nii.gz")
    centre = ct.affine[:3, :3] @ ((np.asarray(ct.shape) - 1) / 2) + ct.affine[:3, 3]
    pet = data / "imagesTr" / f"{MOVED}__PT.nii.gz"
    misalign_pet(pet, pet, rigid_matrix([6.0, 0.0, 8.0], [0.0, 0.0, 5.0], centre))
    return data


@pytest.mark.slow
def test_check_registers_with_a_runs_or_configs_settings(phantom: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_main

    import pemma

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _data(phantom, tmp_path)
    default = json.loads(run_main("check", str(data), "--register", "rigid", "--json"))
    assert not default["bad_cases"] and default["registration_settings"]["from"] == "defaults"
    # a config whose divergence limit (6 mm) the 10 mm misalignment exceeds: its settings are the ones used
    config = tmp_path / "strict.yaml"
    config.write_text("preprocess:\n  register: rigid\n  register_max_shift_mm: 6.0\n")
    strict = pemma.check(data, config=config, progress=False)  # the mode from the config too
    assert strict["bad_cases"] == [MOVED] and "register_max_shift_mm 6" in strict["problems"][MOVED][0]
    assert strict["registration_settings"]["max_shift_mm"] == 6.0
    # a run trained with those settings (CT-only, one step): --model uses its preprocessing
    run = pemma.train(data, tmp_path / "run", modalities="ct", max_steps=1, val_fraction=0.0,
                      register_max_shift_mm=6.0)
    header_only = json.loads(run_main("check", str(data), "--model", str(run), "--registration", "--json"))
    assert not header_only["bad_cases"] and header_only["registration_settings"]["mode"] == "none"
    from_run = pemma.check(data, model=run, register="rigid", progress=False)
    assert from_run["bad_cases"] == [MOVED] and from_run["registration_settings"]["from"] == str(tmp_path / "run")
    # with --preset, the preset's registration settings replace the run's (as pemma adapt combines them)
    combined = json.loads(run_main("check", str(data), "--model", str(run), "--preset", "tiny", "--register", "rigid",
                                   "--json"))
    assert not combined["bad_cases"] and combined["registration_settings"]["max_shift_mm"] == 50.0
