"""Reading the HECKTOR 2022 layout (with its quirks), the nnU-Net raw layout and datalists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pemma.data.layout import centre_of, discover_cases, select_cases, split_cases
from pemma.errors import PemmaError
from pemma.io_utils import save_nifti

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _img(path: Path, value: float = 0.0, shape=(8, 8, 6)) -> None:
    save_nifti(np.full(shape, value, np.float32), AFF, path)


def test_hecktor_layout_recursive_with_both_id_styles(tmp_path: Path) -> None:
    root = tmp_path / "hecktor2022_training" / "extra_level"
    for cid in ("CHUM-000", "CHUP_012", "MDA-101"):
        _img(root / "imagesTr" / f"{cid}__CT.nii.gz")
        _img(root / "imagesTr" / f"{cid}__PT.nii.gz")
    _img(root / "labelsTr" / "CHUM-000.nii.gz")
    _img(root / "labelsTr" / "CHUP_012.nii.gz")
    cases = discover_cases(tmp_path / "hecktor2022_training")
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["CHUM-000", "CHUP_012", "MDA-101"]
    assert by_id["CHUP_012"].centre == "CHUP"
    assert set(by_id["CHUM-000"].images) == {"ct", "pet"}
    assert by_id["MDA-101"].label is None
    assert by_id["CHUM-000"].label.endswith("labelsTr/CHUM-000.nii.gz")
    assert [c.case_id for c in select_cases(cases, centres=["chum", "CHUP"], require_label=True)] == [
        "CHUM-000", "CHUP_012"]
    with pytest.raises(PemmaError, match="MDA-101: no label"):
        select_cases(cases, centres=["MDA"], require_label=True)
    with pytest.raises(PemmaError, match="no cases for centres"):
        select_cases(cases, centres=["HGJ"])


def test_missing_modality_is_named(tmp_path: Path) -> None:
    _img(tmp_path / "imagesTr" / "HGJ-001__CT.nii.gz")
    cases = discover_cases(tmp_path)
    with pytest.raises(PemmaError, match="HGJ-001: no PET image"):
        select_cases(cases, modalities=["ct", "pet"])


def test_nnunet_layout(tmp_path: Path) -> None:
    root = tmp_path / "Dataset100_HECKTOR"
    (root).mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    for cid in ("CHUS-003", "HMR-010"):
        _img(root / "imagesTr" / f"{cid}_0000.nii.gz")
        _img(root / "imagesTr" / f"{cid}_0001.nii.gz")
        _img(root / "labelsTr" / f"{cid}.nii.gz")
    cases = discover_cases(root)
    assert [c.case_id for c in cases] == ["CHUS-003", "HMR-010"]
    assert cases[0].images["ct"].endswith("CHUS-003_0000.nii.gz")
    assert cases[0].images["pet"].endswith("CHUS-003_0001.nii.gz")
    assert cases[1].centre == "HMR" and cases[1].label.endswith("labelsTr/HMR-010.nii.gz")


def test_nnunet_channel_order_follows_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET", "1": "CT"},
                                                       "file_ending": ".nii.gz"}))
    _img(tmp_path / "imagesTr" / "x_0000.nii.gz")
    _img(tmp_path / "imagesTr" / "x_0001.nii.gz")
    case = discover_cases(tmp_path)[0]
    assert case.images["pet"].endswith("_0000.nii.gz") and case.images["ct"].endswith("_0001.nii.gz")


def test_datalist_json(tmp_path: Path) -> None:
    _img(tmp_path / "a_ct.nii.gz")
    _img(tmp_path / "a_pt.nii.gz")
    _img(tmp_path / "a_seg.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps({"training": [
        {"id": "CHUV-007", "ct": "a_ct.nii.gz", "pet": "a_pt.nii.gz", "label": "a_seg.nii.gz"}]}))
    (case,) = discover_cases(tmp_path / "list.json")
    assert case.case_id == "CHUV-007" and case.centre == "CHUV"
    assert Path(case.images["pet"]).name == "a_pt.nii.gz" and Path(case.label).is_file()


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PemmaError, match="not found"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(PemmaError, match="no cases found"):
        discover_cases(tmp_path)


def test_centre_and_split() -> None:
    assert centre_of("CHUM-001") == centre_of("CHUM_001") == "CHUM"
    assert centre_of("hecktor_MDA_12") == "MDA"
    from pemma.data.layout import CaseRecord

    cases = [CaseRecord(f"{c}-{i:03d}", c, {"ct": "x"}) for c in ("CHUM", "MDA") for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert {c.centre for c in val} == {"CHUM", "MDA"}
    assert split_cases(cases, 0.2, seed=3) == (train, val)
    assert split_cases(cases, 0.2, seed=4)[1] != val
