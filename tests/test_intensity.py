"""A file of the wrong kind is named, not read as a CT / PET: a mask in a folder of CTs, a CT given as the PET, an
image already normalised; unusual but possible intensities (no air in a CT, negative SUV) are warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import main_result

from pemma.data.intensity import intensity_problem, intensity_warning
from pemma.io_utils import save_nifti

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_known_answers_on_real_and_phantom_images(phantom: Path) -> None:
    if (REAL / "lung1_ct.nii.gz").is_file():  # a real CT (int16 HU) and its tumour mask
        ct, mask = _voxels(REAL / "lung1_ct.nii.gz"), _voxels(REAL / "lung1_tumour.nii.gz")
        assert intensity_problem("ct", ct, "ct.nii.gz", "lung1") is None
        assert intensity_warning("ct", ct, "ct.nii.gz", "lung1") is None
        problem = intensity_problem("ct", mask, "lung1_tumour.nii.gz", "lung1")
        assert problem.startswith("lung1_tumour.nii.gz: CT of case lung1 has voxels from 0 to 1 only: not a CT")
    ct = _voxels(phantom / "imagesTr" / "CHUM-000__CT.nii.gz")
    pet = _voxels(phantom / "imagesTr" / "CHUM-000__PT.nii.gz")
    assert intensity_problem("ct", ct, "c", "x") is None and intensity_problem("pet", pet, "p", "x") is None
    assert intensity_warning("pet", pet, "p", "x") is None
    swapped = intensity_problem("pet", ct, "CHUM-000__PT.nii.gz", "CHUM-000")
    assert "not a PET in SUV (a CT in HU? are CT and PET swapped?)" in swapped
    assert "not a CT in Hounsfield units" in intensity_problem("ct", np.clip(ct, 0, 1000) / 1000.0, "c", "x")
    assert intensity_problem("mr", np.zeros(8), "m", "x") is None  # MR / dose: any scale
    assert intensity_problem("ct", np.zeros(8), "c", "x") is None  # one value: a warning (an empty mask?)
    assert "has the value 0 everywhere" in intensity_warning("ct", np.zeros(8), "c", "x")
    assert "no voxel below 0 HU" in intensity_warning("ct", ct + 1024.0, "c", "x")
    noisy = pet.astype(np.float32).copy()
    noisy.flat[0] = -3.0  # below reconstruction noise, one voxel: a warning, not a problem
    assert intensity_problem("pet", noisy, "p", "x") is None
    assert "down to -3 SUV" in intensity_warning("pet", noisy, "p", "x")


def test_check_names_swapped_files_and_warns_on_odd_units(phantom: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    ct, pet = data / "imagesTr" / "CHUP-000__CT.nii.gz", data / "imagesTr" / "CHUP-000__PT.nii.gz"
    ct.rename(tmp_path / "ct"), pet.rename(ct), (tmp_path / "ct").rename(pet)  # CT and PET swapped
    offset = data / "imagesTr" / "MDA-000__CT.nii.gz"
    img = nib.load(str(offset))
    save_nifti(np.asanyarray(img.dataobj).astype(np.float32) + 1024.0, img.affine, offset)  # no rescale intercept
    result = main_result("check", str(data), "--modalities", "ct,pet")
    assert result.returncode == 1, result.stdout
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith(f"{ct}: CT of case CHUP-000 has voxels from") for line in lines), lines
    assert any(line.startswith(f"{pet}: PET of case CHUP-000 has") and "swapped" in line for line in lines), lines
    assert lines[-1] == "6 case(s) checked: 1 bad (CHUP-000)"
    assert f"{offset}: CT of case MDA-000 has no voxel below 0 HU" in result.stderr


@pytest.mark.slow
def test_a_mask_in_a_folder_of_cts_fails_only_its_case(bases, phantom: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cts"
    folder.mkdir()
    shutil.copy(phantom / "imagesTr" / "MDA-000__CT.nii.gz", folder / "p001.nii.gz")
    shutil.copy(phantom / "labelsTr" / "MDA-000.nii.gz", folder / "p001_mask.nii.gz")
    out = tmp_path / "pred"
    result = main_result("predict", "--model", str(bases["unetr"]), "--input", str(folder), "--out", str(out))
    assert result.returncode != 0
    assert f"{folder / 'p001_mask.nii.gz'}: CT of case p001_mask has voxels from 0 to" in result.stderr
    assert "case(s) failed: p001_mask" in result.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["p001.nii.gz"]
