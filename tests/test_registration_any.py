"""Registration of any added modality to the CT: the phantom's MR shifted 10 mm and rotated 5 degrees is recovered
within one MR voxel, dose (on the CT grid) is never registered, PET keys and files are those of before, the pipeline,
``registration.json``, ``pemma check --registration`` and MR-only prediction follow the MR's registration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from registration_helpers import errors, misalignment

from pemma.config import PreprocessConfig
from pemma.data.phantom import PhantomConfig, synthesize_phantom
from pemma.data.phantom_misalign import misalign_image
from pemma.data.registration import RegistrationSettings, register_images, registrable
from pemma.errors import PemmaError

CASES = ("CHUM-000", "CHUM-001")


@pytest.fixture(scope="module")
def mr_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CHUM's two cases of the session phantom (48 x 48 x 32, seed 1) with the MR-like channel."""
    root = tmp_path_factory.mktemp("phantom_mr")
    synthesize_phantom(root, PhantomConfig(cases_per_centre=2, centres=("CHUM",), ct_shape=(48, 48, 32), seed=1,
                                           modalities="ct,pet,mr"), progress=False)
    return root


def _mr_settings(mode: str = "rigid", **kwargs: object) -> RegistrationSettings:
    return RegistrationSettings.from_preprocess(PreprocessConfig(register=mode, **kwargs), modality="mr")


@pytest.mark.parametrize("case", CASES)
def test_mr_shift_and_rotation_recovered_within_an_mr_voxel(mr_phantom: Path, case: str) -> None:
    """Measured on the 6 cases of the test phantom: largest error per axis 0.2-1.2 mm (MR voxel 2.5 x 2.5 x 3.5 mm),
    rotation found 4.3-6.1 of the 5 degrees, body Dice 0.83-0.89 -> 0.86-0.92."""
    ct = nib.load(mr_phantom / "imagesTr" / f"{case}__CT.nii.gz")
    mr = nib.load(mr_phantom / "imagesTr" / f"{case}__MR.nii.gz")
    truth = misalignment(ct)
    result = register_images(case, np.asarray(ct.dataobj), ct.affine, np.asarray(mr.dataobj), truth @ mr.affine,
                             _mr_settings())
    mr_voxel = np.asarray(mr.header.get_zooms()[:3])
    unregistered, err = errors(ct, np.eye(4), truth), errors(ct, result.matrix, truth)
    assert unregistered.max() > 8.0
    assert np.all(err.max(axis=0) <= mr_voxel), (err.max(axis=0), mr_voxel)
    assert 3.0 < result.rotation_deg < 7.0
    assert result.after.body_dice > result.before.body_dice and result.after.mi > result.before.mi
    assert result.modality == "mr" and "MR-CT agreement" in result.line()


def test_mr_body_mask_qc_tells_aligned_from_misaligned(mr_phantom: Path) -> None:
    """The moving body (signal above a share of its median inside the CT body) works for MR: the co-registered MR
    agrees with the CT body (Dice > 0.85) and better than the misaligned one."""
    case = CASES[0]
    ct = nib.load(mr_phantom / "imagesTr" / f"{case}__CT.nii.gz")
    mr = nib.load(mr_phantom / "imagesTr" / f"{case}__MR.nii.gz")
    args = (case, np.asarray(ct.dataobj), ct.affine, np.asarray(mr.dataobj))
    aligned = register_images(*args, mr.affine, _mr_settings("none"))
    moved = register_images(*args, misalignment(ct) @ mr.affine, _mr_settings("none"))
    assert aligned.before.body_dice > 0.85 and aligned.before.body_dice > moved.before.body_dice + 0.02
    assert aligned.before.mi > moved.before.mi + 0.2


def test_which_modalities_register_and_their_clip() -> None:
    cfg = PreprocessConfig(register="rigid", modality_specs={"t1": {"normalisation": "minmax", "percentiles": [1, 99]},
                                                             "map": {"range": [0, 5], "register": False}})
    assert registrable(["ct", "pet", "mr", "dose", "t1", "map"], cfg) == ["pet", "mr", "t1"]
    assert registrable(["pet", "mr"], cfg) == []  # nothing to register to
    mr = RegistrationSettings.from_preprocess(cfg, modality="mr")
    assert mr.percentile_clip and mr.pet_range == (0.5, 99.5) and mr.label == "MR"
    assert RegistrationSettings.from_preprocess(cfg, modality="t1").pet_range == (1.0, 99.0)
    with pytest.raises(PemmaError, match="cannot register 'ct' to the CT"):
        RegistrationSettings.from_preprocess(cfg, modality="ct")
    with pytest.raises(ValueError, match="modality_specs.map.register must be true or false"):
        PreprocessConfig(modality_specs={"map": {"range": [0, 5], "register": "no"}})


def test_pet_keys_and_cache_files_are_those_of_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known answers from main before any modality could be registered: the PET's settings key and record, and its
    cache file stem (no modality in it); the MR's differ and name the MR."""
    from pemma.data.registration_cache import cache_entry

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    pet = RegistrationSettings.from_preprocess(PreprocessConfig(register="rigid"))
    assert pet.key() == "7510dc961952c9cf"
    assert RegistrationSettings.from_preprocess(PreprocessConfig()).key() == "a6d3539d27560485"
    assert set(pet.record()) == {"mode", "spacing_mm", "iterations", "max_shift_mm", "ct_window", "pet_range",
                                 "body_threshold_hu"}
    mr = _mr_settings()
    assert mr.key() != pet.key() and mr.record()["modality"] == "mr"
    for name in ("a__CT.nii.gz", "a__PT.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    _, pet_stem = cache_entry("A-1", tmp_path / "a__CT.nii.gz", tmp_path / "a__PT.nii.gz", pet.key(), "rigid")
    _, mr_stem = cache_entry("A-1", tmp_path / "a__CT.nii.gz", tmp_path / "a__PT.nii.gz", mr.key(), "rigid", "mr")
    assert pet_stem.name.startswith("A-1-rigid-") and mr_stem.name.startswith("A-1-mr-rigid-")


def _misaligned_mr(mr_phantom: Path, root: Path) -> Path:
    """A copy of the MR phantom whose CHUM-001 MR is misaligned (10 mm, 5 degrees)."""
    data = root / "data"
    shutil.copytree(mr_phantom, data)
    ct = nib.load(data / "imagesTr" / "CHUM-001__CT.nii.gz")
    mr = data / "imagesTr" / "CHUM-001__MR.nii.gz"
    misalign_image(mr, mr, misalignment(ct), what="MR")
    return data


def test_pipeline_applies_the_mr_registration(mr_phantom: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pemma.data.transforms import describe, preprocessing

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _misaligned_mr(mr_phantom, tmp_path)
    item = {"case_id": "CHUM-001", "ct": str(data / "imagesTr" / "CHUM-001__CT.nii.gz")}

    def mr_channel(mr: Path, mode: str) -> np.ndarray:
        cfg = PreprocessConfig(target_spacing=[4.0, 4.0, 4.0], register=mode)
        return np.asarray(preprocessing(["ct", "mr"], cfg, [32, 32, 32], with_label=False)(
            {**item, "mr": str(mr)})["image"][1])

    aligned = mr_channel(mr_phantom / "imagesTr" / "CHUM-001__MR.nii.gz", "none")
    moved = data / "imagesTr" / "CHUM-001__MR.nii.gz"
    plain, registered = mr_channel(moved, "none"), mr_channel(moved, "rigid")
    assert np.abs(registered - aligned).mean() < 0.5 * np.abs(plain - aligned).mean()
    lines = describe(["ct", "pet", "mr", "dose"], PreprocessConfig(register="rigid"))
    assert any(line.startswith("registration: PET -> CT rigid") for line in lines)
    assert any(line.startswith("registration: MR -> CT rigid") and "percentiles [0.5, 99.5]" in line
               for line in lines)
    assert not any("DOSE ->" in line for line in lines)


def test_registration_json_per_modality_and_old_pet_files_read(mr_phantom: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pemma.data.registration_record import record_registration, registration_by_modality

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _misaligned_mr(mr_phantom, tmp_path)
    cases = [SimpleNamespace(case_id=c, images={m: str(data / "imagesTr" / f"{c}__{s}.nii.gz")
                                                for m, s in (("ct", "CT"), ("pet", "PT"), ("mr", "MR"))})
             for c in CASES]
    cfg = PreprocessConfig(register="rigid")
    assert record_registration(tmp_path / "none", cases, ["ct", "pet", "mr"], PreprocessConfig()) is None
    pet_only = record_registration(tmp_path / "ctpet", cases, ["ct", "pet"], cfg)
    assert "modalities" not in pet_only and set(pet_only) == {"mode", "settings", "optimizer", "mean_body_dice",
                                                               "cases"}  # a PET run's file as before
    assert set(registration_by_modality(pet_only)) == {"pet"}
    record = json.loads((record_registration(tmp_path / "run", cases, ["ct", "pet", "mr"], cfg) and
                         (tmp_path / "run" / "registration.json")).read_text())
    blocks = registration_by_modality(record)
    assert set(blocks) == {"pet", "mr"} and record["cases"] == blocks["pet"]["cases"]
    moved = blocks["mr"]["cases"]["CHUM-001"]
    assert moved["rotation_deg"] > 3.0 and moved["after"]["body_dice"] > moved["before"]["body_dice"]
    assert blocks["mr"]["settings"]["modality"] == "mr"
    ct_mr = record_registration(tmp_path / "ctmr", cases, ["ct", "mr"], cfg)
    assert "cases" not in ct_mr and set(registration_by_modality(ct_mr)) == {"mr"}


def test_check_lists_mr_agreement(mr_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_main

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _misaligned_mr(mr_phantom, tmp_path)
    text = run_main("check", str(data), "--registration")
    for case in CASES:
        assert f"case {case}: PET-CT agreement on the header geometry: MI" in text
        assert f"case {case}: MR-CT agreement on the header geometry: MI" in text
    report = json.loads(run_main("check", str(data), "--register", "rigid", "--json"))
    assert not report["bad_cases"] and set(report["registration"]) == set(CASES)  # the PET's, as before
    moved = report["registration_modalities"]["mr"]["CHUM-001"]
    assert moved["after"]["body_dice"] > moved["before"]["body_dice"] and moved["rotation_deg"] > 3.0
    only_pet = json.loads(run_main("check", str(data), "--registration", "--modalities", "ct,pet", "--json"))
    assert set(only_pet["registration_modalities"]) == {"pet"}


def test_mr_only_prediction_follows_the_mr_registration(mr_phantom: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pemma.data.register import register_files
    from pemma.inference.predict import output_reference, registered_to_ct

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _misaligned_mr(mr_phantom, tmp_path)
    images = {m: str(data / "imagesTr" / f"CHUM-001__{s}.nii.gz") for m, s in (("ct", "CT"), ("pet", "PT"),
                                                                                 ("mr", "MR"))}
    case = SimpleNamespace(case_id="CHUM-001", images=images)
    affine = nib.load(images["mr"]).affine
    cfg = PreprocessConfig(register="rigid")
    assert output_reference(case, ["mr"]) == "ct" and output_reference(case, ["mr"], "pet") == "mr"
    expected = register_files("CHUM-001", images["ct"], images["mr"], _mr_settings()).moved_affine(affine)
    np.testing.assert_allclose(registered_to_ct(case, ["mr"], "ct", cfg, affine), expected)
    assert not np.allclose(expected, affine)
    np.testing.assert_array_equal(registered_to_ct(case, ["mr"], "ct", PreprocessConfig(), affine), affine)
    np.testing.assert_array_equal(registered_to_ct(case, ["ct", "mr"], "ct", cfg, affine), affine)


@pytest.mark.slow  # an adaptation step (registers both cases' MR first)
def test_adapt_ct_to_mr_registers_the_mr_and_records_it(mr_phantom: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from monai.networks.nets import UNETR

    import pemma

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _misaligned_mr(mr_phantom, tmp_path)
    torch.manual_seed(5)
    net = UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    base = pemma.import_model(tmp_path / "net.pt", tmp_path / "ct", backbone="unetr", preset="tiny", roi=[32] * 3,
                              spacing=[4, 4, 4]).path
    run = pemma.adapt(base, data, tmp_path / "ctmr", add_modality="mr", register="rigid", max_steps=1,
                      val_fraction=0.0)
    record = json.loads((Path(run.path) / "registration.json").read_text())
    assert record["mode"] == "rigid" and "cases" not in record and set(record["modalities"]) == {"mr"}
    moved = record["modalities"]["mr"]["cases"]["CHUM-001"]
    assert moved["rotation_deg"] > 3.0 and moved["after"]["body_dice"] > moved["before"]["body_dice"]
    log = (Path(run.path) / "train.log").read_text()
    assert "registration: MR -> CT rigid" in log and "registration QC, mean body Dice MR-CT" in log
