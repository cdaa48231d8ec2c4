"""``pemma check`` lists every problem of a dataset in one pass, and training / reproduce run the same check
before they train: a bad case stops them at once, or ``--exclude-bad-cases`` leaves it out and records it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST

from pemma.cli.main import main
from pemma.io_utils import save_nifti

STRATEGY = """
name: check_test
backbones: [unetr]
preset: tiny
max_steps: 1
split: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}
methods: [pemma_lora]
phases:
  - {name: pretrain, operation: pretrain, centres: [CHUM], modalities: [ct]}
  - {name: adapt_mda, operation: adapt, centres: [MDA], modalities: [ct, pet]}
"""


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _edit(path: Path, change) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    change(data)
    save_nifti(data, img.affine, path, dtype=data.dtype)


@pytest.fixture
def broken(phantom: Path, tmp_path: Path) -> Path:
    """The phantom with three bad cases: NaN PET voxels, a label value 4, a PET moved 1 m away."""
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    _edit(data / "imagesTr" / "CHUM-000__PT.nii.gz", lambda a: a.__setitem__((3, 3, 3), np.nan))
    _edit(data / "labelsTr" / "CHUP-001.nii.gz", lambda a: a.__setitem__((2, 2, 2), 4))
    pet = data / "imagesTr" / "MDA-000__PT.nii.gz"
    img = nib.load(str(pet))
    moved = img.affine.copy()
    moved[:3, 3] += 1000.0
    save_nifti(np.asanyarray(img.dataobj), moved, pet)
    return data


def test_good_dataset_passes(phantom: Path) -> None:
    code, out, _ = _run(["check", str(phantom), "--modalities", "ct,pet"])
    assert code == 0 and out.strip().splitlines()[-1] == "6 case(s) checked: all good"


def test_every_problem_is_listed_in_one_pass(broken: Path) -> None:
    code, out, _ = _run(["check", str(broken)])
    lines = out.strip().splitlines()
    assert code == 1
    assert "CHUM-000__PT.nii.gz: PET of case CHUM-000 has 1 NaN/inf voxels" in lines[0]
    assert "CHUP-001.nii.gz: label of case CHUP-001 has values [4] outside {0, 1, 2}" in lines[1]
    assert "case MDA-000: PET covers only 0% of the CT field of view" in lines[2]
    assert lines[-1] == "6 case(s) checked: 3 bad (CHUM-000, CHUP-001, MDA-000)"
    code, out, _ = _run(["check", str(broken), "--centres", "CHUP", "--json"])
    report = json.loads(out)
    assert code == 1 and report["n_cases"] == 2 and report["bad_cases"] == ["CHUP-001"]


def test_a_broken_endpoint_table_is_reported(phantom: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    table = next(data.rglob("*endpoint*.csv"))
    rows = table.read_text().splitlines()
    table.write_text("\n".join([rows[0], rows[1].rsplit(",", 1)[0] + ",-5", *rows[2:]]) + "\n")
    code, out, _ = _run(["check", str(data)])
    lines = out.strip().splitlines()
    assert code == 1 and str(table) in lines[0] and "RFS" in lines[0]
    assert lines[-1] == "6 case(s) checked: 1 bad (table hecktor2022_endpoint_training.csv)"


def test_training_stops_before_any_training_on_a_bad_case(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["train", "--data", str(broken), "--centres", "CHUM,CHUP", "--modalities", "ct,pet", *FAST,
                         "--max-steps", "1", "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "PET of case CHUM-000 has 1 NaN/inf voxels (2 of 4 cases of" in err
    assert "--exclude-bad-cases leaves them out" in err
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists()


def test_reproduce_checks_every_case_first(broken: Path, tmp_path: Path) -> None:
    strategy = tmp_path / "check_test.yaml"
    strategy.write_text(STRATEGY)
    code, _, err = _run(["reproduce", "--strategy", str(strategy), "--data", str(broken), "--out",
                         str(tmp_path / "results")])
    # the strategy reads CHUM and MDA: the MDA PET is bad too, found before any phase trains
    assert code == 2 and "PET of case CHUM-000 has 1 NaN/inf voxels (2 of 4 cases of" in err
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.slow
def test_exclude_bad_cases_trains_without_them_and_records_them(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["train", "--data", str(broken), "--centres", "CHUM,CHUP", "--modalities", "ct,pet", *FAST,
                         "--max-steps", "1", "--exclude-bad-cases", "--out", str(out)])
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    assert sorted(meta["excluded_cases"]) == ["CHUM-000", "CHUP-001"]
    assert not {"CHUM-000", "CHUP-001"} & set(meta["train_cases"] + meta["val_cases"])


def test_unchanged_cases_are_read_once_per_process(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    """reproduce checks every case up front and each phase again: unchanged files are not read twice, a changed
    file is."""
    from pemma.data import check as check_module
    from pemma.data.layout import discover_cases

    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    calls = []
    real = check_module.check_case
    monkeypatch.setattr(check_module, "check_case", lambda *a, **k: calls.append(a[0].case_id) or real(*a, **k))
    cases = [c for c in discover_cases(data) if c.centre == "MDA"]
    assert check_module.check_cases(cases, ["ct", "pet"]).ok and len(calls) == 2
    assert check_module.check_cases(cases, ["ct", "pet"]).ok and len(calls) == 2
    _edit(data / "imagesTr" / "MDA-000__PT.nii.gz", lambda a: a.__setitem__((3, 3, 3), np.nan))
    assert check_module.check_cases(cases, ["ct", "pet"]).bad_cases == ["MDA-000"] and calls[2:] == ["MDA-000"]


def test_tumour_outside_the_ct_is_found_by_the_check(phantom: Path, tmp_path: Path) -> None:
    """A label grid that overlaps the CT but whose tumour lies beyond it: the loader refuses it, so must the check."""
    from pemma.data.check import check_case
    from pemma.data.layout import discover_cases

    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    case = next(c for c in discover_cases(str(data)) if c.label is not None)
    ct = nib.load(case.images["ct"])
    label = np.zeros((*ct.shape[:2], ct.shape[2] * 2), np.uint8)  # twice as many slices as the CT
    label[10:20, 10:20, ct.shape[2] + 4:ct.shape[2] + 8] = 1  # tumour only in the slices past the CT
    save_nifti(label, ct.affine, case.label, dtype=np.uint8)
    problems = check_case(case, ["ct", "pet"])
    assert len(problems) == 1 and case.case_id in problems[0] and "outside" in problems[0]


def test_a_label_off_its_ct_grid_is_named(phantom: Path, tmp_path: Path) -> None:
    """A label cut short or with a shifted affine still overlaps the CT and is resampled onto it; the check (and
    every training, which runs it) names it instead of passing it silently. One voxel off stays silent (HECKTOR)."""
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    cut = data / "labelsTr" / "CHUM-000.nii.gz"
    img = nib.load(str(cut))
    save_nifti(np.asanyarray(img.dataobj)[:, :, :-6], img.affine, cut, dtype=np.uint8)
    shifted = data / "labelsTr" / "CHUM-001.nii.gz"
    img = nib.load(str(shifted))
    moved = img.affine.copy()
    moved[:3, 3] += moved[:3, 2] * 3  # three slices along the slice axis
    save_nifti(np.asanyarray(img.dataobj), moved, shifted, dtype=np.uint8)
    one_voxel = data / "labelsTr" / "CHUP-000.nii.gz"
    img = nib.load(str(one_voxel))
    save_nifti(np.asanyarray(img.dataobj)[:, :, :-1], img.affine, one_voxel, dtype=np.uint8)
    code, out, err = _run(["check", str(data), "--centres", "CHUM,CHUP"])
    warned = [line for line in err.splitlines() if "is not on its CT grid" in line]
    assert code == 0 and len(warned) == 2, err
    assert any(str(cut) in w and "case CHUM-000" in w for w in warned)
    assert any(str(shifted) in w and "case CHUM-001" in w for w in warned)


def test_a_missing_label_is_reported(phantom: Path, tmp_path: Path) -> None:
    """Training refuses a case without its label: the check says so too (it said "all good"); a dataset without
    any label (a test set) is still checked without them."""
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    (data / "labelsTr" / "MDA-000.nii.gz").unlink()
    code, out, _ = _run(["check", str(data), "--centres", "MDA"])
    assert code == 1 and "case MDA-000: no label file" in out
    # the same case's images in an imagesTs folder (a test set beside the training set) need no label
    (data / "imagesTs").mkdir()
    for image in (data / "imagesTr").glob("MDA-000__*"):
        image.rename(data / "imagesTs" / image.name)
    code, out, _ = _run(["check", str(data), "--centres", "MDA"])
    assert code == 0 and out.strip().splitlines()[-1] == "2 case(s) checked: all good", out
    shutil.rmtree(data / "labelsTr")
    code, out, _ = _run(["check", str(data), "--centres", "MDA"])
    assert code == 0 and out.strip().splitlines()[-1] == "2 case(s) checked: all good"
