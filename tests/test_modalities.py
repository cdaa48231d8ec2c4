"""Modalities as names: specs in the config, discovery of any declared modality, its normalisation and its check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pemma.config import PreprocessConfig, RunConfig, build_config
from pemma.data.check import check_case
from pemma.data.layout import discover_cases
from pemma.data.normalise import normalise_array
from pemma.errors import PemmaError
from pemma.io_utils import save_nifti
from pemma.modalities import CATALOGUE, ModalitySpec

AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _img(path: Path, array: np.ndarray | float = 0.0, affine: np.ndarray = AFF, shape=(8, 8, 6)) -> None:
    data = np.full(shape, array, np.float32) if np.isscalar(array) else np.asarray(array, np.float32)
    save_nifti(data, affine, path)


# ---------------------------------------------------------------------------------------------- specs and config
def test_ct_and_pet_are_registry_entries_built_from_their_windows() -> None:
    pre = PreprocessConfig(ct_window=[-100.0, 300.0], pet_suv_range=[0.0, 15.0])
    reg = pre.modality_registry()
    assert list(reg)[:2] == ["ct", "pet"] and {"mr", "dose"} <= set(reg)
    assert reg["ct"].range == [-100.0, 300.0] and reg["ct"].suffixes == ["__CT"]
    assert reg["pet"].range == [0.0, 15.0] and reg["pet"].suffixes == ["__PT"]
    assert reg["mr"].normalisation == "zscore" and reg["dose"].unit == "Gy"


def test_a_ct_pet_config_yaml_is_as_before_and_declared_specs_round_trip(tmp_path: Path) -> None:
    plain = build_config("tiny", overrides={"data": {"modalities": "pet,ct"}})
    assert "modality_specs" not in plain.to_dict()["preprocess"]  # config.yaml of CT / PET runs unchanged
    cfg = build_config("tiny", overrides={"data": {"modalities": "t2,pet,ct"},
                                          "preprocess": {"modality_specs": {"t2": {"normalisation": "minmax",
                                                                                   "suffixes": ["__T2W"]}}}})
    assert cfg.data.modalities == ["ct", "pet", "t2"]
    cfg.save(tmp_path / "config.yaml")
    again = RunConfig.load(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    spec = again.preprocess.modality_registry()["t2"]
    assert spec.suffixes == ["__T2W"] and spec.channel_names == ["t2"] and spec.normalisation == "minmax"
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["preprocess"]["modality_specs"]["t2"][
        "normalisation"] == "minmax"
    assert build_config("tiny", overrides={"data": {"modalities": "mr,ct"}}).data.modalities == ["ct", "mr"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data": {"modalities": "ct,t2"}}, "data.modalities: no spec for t2"),
    ({"data": {"modalities": "ct,m r"}}, "modalities must be names such as ct, pet, mr"),
    ({"preprocess": {"modality_specs": {"dose2": {"normalisation": "range"}}}},
     "preprocess.modality_specs.dose2.range must be set"),
    ({"preprocess": {"modality_specs": {"t2": {"normalisation": "gauss"}}}},
     "modality_specs.t2.normalisation must be one of range, zscore, minmax"),
    ({"preprocess": {"modality_specs": {"t2": {"normalisation": "zscore", "percentiles": [5, 120]}}}},
     "percentiles must lie in"),
    ({"preprocess": {"modality_specs": {"pet": {"range": [0, 10]}}}}, "CT and PET are built in"),
    ({"preprocess": {"modality_specs": {"t2": {"colour": "red"}}}}, r"unknown keys \['colour'\]"),
])
def test_bad_modality_declarations_are_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(PemmaError, match=message):
        build_config("tiny", overrides=overrides)


def test_spec_defaults_follow_its_name() -> None:
    spec = ModalitySpec("t1ce", normalisation="zscore")
    assert spec.suffixes == ["__T1CE"] and spec.channel_names == ["t1ce"]
    assert "percentiles [0.5, 99.5] inside the body, z-score" in spec.describe()
    with pytest.raises(ValueError, match="modality name must be lower-case"):
        ModalitySpec("T1")


# ---------------------------------------------------------------------------------------------- normalisation
def test_zscore_inside_the_body_is_blind_to_mr_scale_and_offset() -> None:
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, size=(10, 10, 10))
    body = np.zeros(image.shape, bool)
    body[2:8, 2:8, 2:8] = True
    spec = ModalitySpec("mr", normalisation="zscore", percentiles=[0.0, 100.0])
    out = normalise_array(image, spec, body)
    assert abs(out[body].mean()) < 1e-5 and abs(out[body].std() - 1.0) < 1e-4
    assert np.all(out[~body] == 0)
    np.testing.assert_allclose(normalise_array(3.5 * image + 700.0, spec, body), out, atol=1e-4)
    clipped = normalise_array(image, ModalitySpec("mr", normalisation="zscore", percentiles=[5.0, 95.0]), body)
    assert clipped[body].max() < out[body].max()  # the bright tail is clipped before the statistics


def test_minmax_maps_the_body_percentiles_to_0_and_1() -> None:
    image = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    body = image >= 500
    out = normalise_array(image, ModalitySpec("mr", normalisation="minmax", percentiles=[0.0, 100.0]), body)
    assert out[body].min() == 0.0 and out[body].max() == 1.0 and np.all(out[~body] == 0)
    assert out.flat[750] == pytest.approx(250 / 499)


def test_ct_mr_preprocessing_resamples_mr_onto_the_ct_grid_and_normalises_it_in_the_body(tmp_path: Path) -> None:
    from pemma.data.transforms import describe, preprocessing

    shape = (20, 20, 20)
    ct = np.full(shape, -1000.0)
    ct[4:16, 4:16, 2:18] = 40.0  # the body
    mr = np.zeros((10, 10, 10))
    mr[2:8, 2:8, 1:9] = 800.0  # the same body on a grid of twice the spacing
    mr[4:6, 4:6, 4:6] = 1600.0
    _img(tmp_path / "ct.nii.gz", ct, AFF, shape)
    _img(tmp_path / "mr.nii.gz", mr, np.diag([4.0, 4.0, 4.0, 1.0]), mr.shape)
    cfg = build_config("tiny", overrides={"preprocess": {"target_spacing": [2.0, 2.0, 2.0]}}).preprocess
    pre = preprocessing(["ct", "mr"], cfg, [16, 16, 16], with_label=False)
    image = pre({"ct": str(tmp_path / "ct.nii.gz"), "mr": str(tmp_path / "mr.nii.gz"), "case_id": "X"})["image"]
    assert image.shape[0] == 2
    ct_out, mr_out = np.asarray(image[0]), np.asarray(image[1])
    body = ct_out > 0.5
    assert body.any() and np.all(mr_out[~body & (ct_out == 0)] == 0)  # outside the CT body: 0
    assert abs(mr_out[body].mean()) < 0.05 and abs(mr_out[body].std() - 1) < 0.05
    assert mr_out.max() > 2.0  # the bright spot stands out after the z-score
    assert "MR: clip to percentiles [0.5, 99.5] inside the body, z-score" in describe(["ct", "mr"], cfg)


# ---------------------------------------------------------------------------------------------- discovery, check
def test_hecktor_layout_finds_mr_and_declared_suffixes(tmp_path: Path) -> None:
    for suffix in ("__CT", "__PT", "__MR", "__T2W"):
        _img(tmp_path / "imagesTr" / f"CHUM-001{suffix}.nii.gz")
    _img(tmp_path / "labelsTr" / "CHUM-001.nii.gz")
    (case,) = discover_cases(tmp_path)
    assert set(case.images) == {"ct", "pet", "mr"}  # __T2W is no modality pemma knows
    specs = build_config("tiny", overrides={"preprocess": {"modality_specs": {
        "t2": {"suffixes": ["__T2W"], "normalisation": "zscore"}}}}).preprocess.modality_registry()
    (case,) = discover_cases(tmp_path, specs)
    assert case.images["t2"].endswith("CHUM-001__T2W.nii.gz") and case.label is not None
    claimed = build_config("tiny", overrides={"preprocess": {"modality_specs": {
        "t2": {"suffixes": ["__MR"], "normalisation": "zscore"}}}}).preprocess.modality_registry()
    assert set(discover_cases(tmp_path, claimed)[0].images) == {"ct", "pet", "t2"}  # the declared spec wins
    (single,) = discover_cases(tmp_path / "imagesTr" / "CHUM-001__MR.nii.gz")
    assert set(single.images) == {"ct", "pet", "mr"}


def test_nnunet_channel_names_of_other_modalities(tmp_path: Path) -> None:
    for name, channels in (("mr", {"0": "CT", "1": "T1"}), ("both", {"0": "CT", "1": "PET", "2": "T1", "3": "T2"})):
        root = tmp_path / name
        (root / "imagesTr").mkdir(parents=True)
        (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0},
                                                      "file_ending": ".nii.gz"}))
        for ch in channels:
            _img(root / "imagesTr" / f"CHUM-001_{int(ch):04d}.nii.gz")
    assert {m: Path(p).name for m, p in discover_cases(tmp_path / "mr")[0].images.items()} == {
        "ct": "CHUM-001_0000.nii.gz", "mr": "CHUM-001_0001.nii.gz"}
    assert set(discover_cases(tmp_path / "both")[0].images) == {"ct", "pet"}  # T1 and T2 both MR: neither taken
    specs = build_config("tiny", overrides={"preprocess": {"modality_specs": {
        "t2": {"channel_names": ["T2"], "normalisation": "zscore"}}}}).preprocess.modality_registry()
    images = discover_cases(tmp_path / "both", specs)[0].images  # T2 declared: its own; T1 then the only MR
    assert {m: Path(p).name[-11:] for m, p in images.items()} == {
        "ct": "0000.nii.gz", "pet": "0001.nii.gz", "mr": "0002.nii.gz", "t2": "0003.nii.gz"}


def test_check_reports_an_mr_that_misses_the_ct(tmp_path: Path) -> None:
    _img(tmp_path / "CHUM-001__CT.nii.gz")
    _img(tmp_path / "CHUM-001__MR.nii.gz", affine=np.array([[2.0, 0, 0, 500], [0, 2, 0, 0], [0, 0, 2, 0],
                                                            [0, 0, 0, 1]]))
    (case,) = discover_cases(tmp_path)
    (problem,) = check_case(case, ["ct", "mr"], with_label=False)
    assert problem.startswith("case CHUM-001: MR covers only 0% of the CT field of view") and "__MR" in problem
    assert check_case(case, ["ct", "t2"], with_label=False) == [
        "case CHUM-001: no T2 file (found: CT CHUM-001__CT.nii.gz, MR CHUM-001__MR.nii.gz)"]
    assert CATALOGUE["mr"].suffixes == ["__MR"]
