"""PET-to-CT registration (``--register``): a known misalignment is recovered, identity stays identity, failures are
one line naming the case, the pipeline and ``pemma check --registration`` apply it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from registration_helpers import errors, misalignment

from pemma.config import PreprocessConfig
from pemma.data.phantom_misalign import misalign_pet
from pemma.data.register import register_case
from pemma.data.registration import RegistrationSettings, register_images
from pemma.errors import PemmaError

CASE = "CHUM-000"


def _images(phantom: Path, case: str = CASE) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    folder = phantom / "imagesTr"
    return nib.load(folder / f"{case}__CT.nii.gz"), nib.load(folder / f"{case}__PT.nii.gz")


def _settings(mode: str, **kwargs: float) -> RegistrationSettings:
    return RegistrationSettings.from_preprocess(PreprocessConfig(register=mode, **kwargs))


def test_shift_and_rotation_recovered_within_a_pet_voxel(phantom: Path) -> None:
    ct, pet = _images(phantom)
    truth = misalignment(ct)
    result = register_images(CASE, np.asarray(ct.dataobj), ct.affine, np.asarray(pet.dataobj), truth @ pet.affine,
                             _settings("rigid"))
    pet_voxel = np.asarray(pet.header.get_zooms()[:3])
    unregistered = errors(ct, np.eye(4), truth)
    err = errors(ct, result.matrix, truth)
    assert unregistered.max() > 8.0  # the misalignment is real
    assert np.all(err.max(axis=0) <= pet_voxel), (err.max(axis=0), pet_voxel)
    assert np.linalg.norm(err, axis=1).mean() < 0.5 * np.linalg.norm(unregistered, axis=1).mean()
    assert result.rotation_deg > 1.0  # turned the right way (measured 2.7 of the 5 degrees: within a voxel here)
    assert result.after.body_dice > result.before.body_dice and result.after.mi > result.before.mi


def test_identity_stays_identity(phantom: Path) -> None:
    ct, pet = _images(phantom)
    result = register_images(CASE, np.asarray(ct.dataobj), ct.affine, np.asarray(pet.dataobj), pet.affine,
                             _settings("rigid"))
    pet_voxel = np.asarray(pet.header.get_zooms()[:3])
    assert np.all(errors(ct, result.matrix, np.eye(4)).max(axis=0) <= pet_voxel)


def test_failed_and_diverged_registrations_name_the_case(phantom: Path) -> None:
    ct, pet = _images(phantom)
    far = np.eye(4)
    far[:3, 3] = [0.0, 0.0, 2000.0]  # no overlap at all: SimpleITK finds no sample inside the PET
    with pytest.raises(PemmaError) as failed:
        register_images(CASE, np.asarray(ct.dataobj), ct.affine, np.asarray(pet.dataobj), far @ pet.affine,
                        _settings("rigid"), pet_path="pet.nii.gz")
    assert CASE in str(failed.value) and "failed" in str(failed.value) and "\n" not in str(failed.value)
    with pytest.raises(PemmaError, match=rf"case {CASE}: rigid registration .* diverged: .* register_max_shift_mm 2"):
        register_images(CASE, np.asarray(ct.dataobj), ct.affine, np.asarray(pet.dataobj),
                        misalignment(ct) @ pet.affine, _settings("rigid", register_max_shift_mm=2.0))


def test_transform_cached_per_case(phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pemma.data.register as registration

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registration, "_MEMO", {})
    ct_path, pet_path = (phantom / "imagesTr" / f"{CASE}__{s}.nii.gz" for s in ("CT", "PT"))
    ct, pet = _images(phantom)
    args = (CASE, np.asarray(ct.dataobj), ct.affine, str(ct_path), np.asarray(pet.dataobj), pet.affine, str(pet_path))
    first = register_case(*args, _settings("rigid"))
    assert first.transform_file is not None and first.transform_file.endswith(".tfm")
    monkeypatch.setattr(registration, "_MEMO", {})
    monkeypatch.setattr(registration, "register_images", lambda *a, **k: pytest.fail("not read from the cache"))
    again = register_case(*args, _settings("rigid"))
    np.testing.assert_allclose(again.matrix, first.matrix, atol=1e-6)
    assert again.after == first.after
    # a cached case's files are not read again (training start-up and predict call register_files per case)
    monkeypatch.setattr(registration, "load_nifti", lambda *a, **k: pytest.fail("images read for a cached case"))
    from_files = registration.register_files(CASE, str(ct_path), str(pet_path), _settings("rigid"))
    np.testing.assert_allclose(from_files.matrix, first.matrix, atol=1e-6)


def test_pipeline_applies_the_registration(phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The misaligned PET, registered in the MONAI chain, lands on the CT grid where the aligned one does."""
    from pemma.data.transforms import preprocessing

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    ct, _ = _images(phantom)
    moved = tmp_path / "moved__PT.nii.gz"
    misalign_pet(phantom / "imagesTr" / f"{CASE}__PT.nii.gz", moved, misalignment(ct))
    item = {"case_id": CASE, "ct": str(phantom / "imagesTr" / f"{CASE}__CT.nii.gz")}

    def pet_channel(pet: Path, mode: str) -> np.ndarray:
        cfg = PreprocessConfig(target_spacing=[4.0, 4.0, 4.0], register=mode)
        return np.asarray(preprocessing(["ct", "pet"], cfg, [32, 32, 32], with_label=False)(
            {**item, "pet": str(pet)})["image"][1])

    aligned = pet_channel(phantom / "imagesTr" / f"{CASE}__PT.nii.gz", "none")
    plain, registered = pet_channel(moved, "none"), pet_channel(moved, "rigid")
    assert np.abs(registered - aligned).mean() < 0.5 * np.abs(plain - aligned).mean()


def test_check_prints_registration_qc(phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_main

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for case in ("CHUM-000", "CHUM-001"):
        for suffix in ("CT", "PT"):
            shutil.copy(phantom / "imagesTr" / f"{case}__{suffix}.nii.gz", data / "imagesTr")
        shutil.copy(phantom / "labelsTr" / f"{case}.nii.gz", data / "labelsTr")
    ct, _ = _images(data, "CHUM-001")
    misalign_pet(data / "imagesTr" / "CHUM-001__PT.nii.gz", data / "imagesTr" / "CHUM-001__PT.nii.gz",
                 misalignment(ct))
    before = run_main("check", str(data), "--registration")
    assert "case CHUM-000: PET-CT agreement on the header geometry: MI" in before and "after" not in before
    out = run_main("check", str(data), "--register", "rigid", "--json")
    report = json.loads(out)
    moved = report["registration"]["CHUM-001"]
    assert moved["after"]["body_dice"] > moved["before"]["body_dice"]
    assert moved["rotation_deg"] > 2.0
    text = run_main("check", str(data), "--register", "rigid")
    assert "case CHUM-001: PET-CT agreement" in text and "after rigid registration: MI" in text


def test_affine_recovers_an_anisotropic_scale_and_shift(phantom: Path) -> None:
    """Affine mode on a known anisotropic scale (x 1.06, y 0.95) + shift: errors well below the unregistered ones.

    Not within one PET voxel: on this phantom the Mattes optimum of an affine transform lies off the truth (from the
    co-registered PET it drifts to y 0.92-0.95, z 1.03-1.05 while the body Dice falls; benchmarks/README.md).
    """
    ct, pet = _images(phantom)
    centre = ct.affine[:3, :3] @ ((np.asarray(ct.shape) - 1) / 2) + ct.affine[:3, 3]
    truth = np.eye(4)
    truth[:3, :3] = np.diag([1.06, 0.95, 1.0])
    truth[:3, 3] = centre - truth[:3, :3] @ centre + np.array([4.0, -3.0, 5.0])
    result = register_images(CASE, np.asarray(ct.dataobj), ct.affine, np.asarray(pet.dataobj), truth @ pet.affine,
                             _settings("affine"))
    pet_voxel = np.asarray(pet.header.get_zooms()[:3])
    unregistered, err = errors(ct, np.eye(4), truth), errors(ct, result.matrix, truth)
    scales = np.linalg.svd(result.matrix[:3, :3], compute_uv=False)
    assert scales.max() - scales.min() > 0.02  # an affine, not a rigid, transform
    assert result.matrix[0, 0] > 1.0 > result.matrix[1, 1]  # scaled the right way on x and y
    assert np.linalg.norm(err, axis=1).mean() < 0.5 * np.linalg.norm(unregistered, axis=1).mean()
    assert np.all(err.max(axis=0) <= 1.5 * pet_voxel), (err.max(axis=0), pet_voxel)
    assert result.after.mi > result.before.mi
