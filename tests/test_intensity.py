"""A file of the wrong kind is named, not read as a CT / PET: a mask in a folder of CTs, a CT given as the PET, an
image already normalised; unusual but possible intensities (no air in a CT, negative SUV, Bq/mL) are warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import main_result

from pemma.data.intensity import intensity_problem, intensity_warnings
from pemma.io_utils import save_nifti

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.mark.skipif(not (REAL / "lung1_ct.nii.gz").is_file(), reason="the real CT of shared/data/real is not here")
def test_a_real_ct_passes_and_its_mask_is_refused_as_a_ct() -> None:
    ct, mask = _voxels(REAL / "lung1_ct.nii.gz"), _voxels(REAL / "lung1_tumour.nii.gz")  # int16 HU, int16 0/1
    assert intensity_problem("ct", ct, "ct.nii.gz", "lung1") is None
    assert intensity_warnings("ct", ct, "ct.nii.gz", "lung1") == []
    problem = intensity_problem("ct", mask, "lung1_tumour.nii.gz", "lung1")
    assert problem.startswith("lung1_tumour.nii.gz: CT of case lung1 has voxels from 0 to 1 only: not a CT")
    assert "swapped" in intensity_problem("pet", ct, "pet.nii.gz", "lung1")


def test_known_answers_on_phantom_images(phantom: Path) -> None:
    ct = _voxels(phantom / "imagesTr" / "CHUM-000__CT.nii.gz")
    pet = _voxels(phantom / "imagesTr" / "CHUM-000__PT.nii.gz")
    assert intensity_problem("ct", ct, "c", "x") is None and intensity_problem("pet", pet, "p", "x") is None
    assert intensity_warnings("pet", pet, "p", "x") == []
    swapped = intensity_problem("pet", ct, "CHUM-000__PT.nii.gz", "CHUM-000")
    assert "not a PET in SUV (a CT in HU? are CT and PET swapped?)" in swapped
    assert "not a CT in Hounsfield units" in intensity_problem("ct", np.clip(ct, 0, 1000) / 1000.0, "c", "x")
    assert intensity_problem("mr", np.zeros(8), "m", "x") is None  # MR / dose: any scale
    assert intensity_problem("ct", np.zeros(8), "c", "x") is None  # one value: a warning (an empty mask?)
    assert "has the value 0 everywhere" in intensity_warnings("ct", np.zeros(8), "c", "x")[0]
    assert "no voxel below 0 HU" in intensity_warnings("ct", ct + 1024.0, "c", "x")[0]
    noisy = pet.astype(np.float32).copy()
    noisy.flat[0] = -3.0  # below reconstruction noise, one voxel: a warning, not a problem
    assert intensity_problem("pet", noisy, "p", "x") is None
    assert "down to -3 SUV" in intensity_warnings("pet", noisy, "p", "x")[0]
    # padding of a constant negative fill (a PET resampled onto a larger grid) is still a PET
    padded = np.pad(pet.astype(np.float32), ((0, 0), (0, 0), (4, 4)), constant_values=-1024.0)
    assert intensity_problem("pet", padded, "p", "x") is None
    # a PET in Bq/mL (SUV x ~5000): read, with a warning that names the units
    assert intensity_problem("pet", pet * 5000.0, "p", "x") is None
    assert any("not SUV (Bq/mL?)" in w for w in intensity_warnings("pet", pet * 5000.0, "p", "x"))


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


def test_only_an_explicit_cause_makes_a_wrapped_error_a_case_failure() -> None:
    """MONAI re-raises a transform's error ``from`` it: that case fails alone. A bug raised while a user error was
    being handled only has it as context: it is re-raised, not recorded as the case's bad input."""
    from pemma.errors import PemmaError, record_case_failure, user_error

    bad_input = PemmaError("case.nii.gz: NaN voxels")
    try:
        raise RuntimeError("applying transform LoadCased") from bad_input
    except RuntimeError as wrapped:
        failures: dict[str, str] = {}
        record_case_failure(failures, "c1", wrapped)
        assert failures == {"c1": "case.nii.gz: NaN voxels"} and user_error(wrapped) is bad_input
    try:
        try:
            raise bad_input
        except PemmaError:
            raise KeyError("a bug in the handler")  # noqa: B904  (its context is the user error, not its cause)
    except KeyError as bug:
        assert user_error(bug) is None
        with pytest.raises(KeyError, match="a bug in the handler"):
            record_case_failure({}, "c2", bug)
    with pytest.raises(PemmaError):
        record_case_failure(None, "c3", bad_input)  # nowhere to record: the first bad case stops
