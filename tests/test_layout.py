"""Reading the HECKTOR 2022 layout (with its quirks), the nnU-Net raw layout and datalists."""

from __future__ import annotations

import json
import re
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
    with pytest.raises(PemmaError, match=r"no cases for centre\(s\) HGJ"):
        select_cases(cases, centres=["HGJ"])
    with pytest.raises(PemmaError, match=r"no cases for centre\(s\) HGJ \(centres found: CHUM, CHUP, MDA\)"):
        select_cases(cases, centres=["CHUM", "HGJ"])


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
    assert not case.test
    (tmp_path / "list.json").write_text(json.dumps({  # a "test" entry is a test case: never trained on
        "training": [{"id": "CHUV-007", "ct": "a_ct.nii.gz", "label": "a_seg.nii.gz"}],
        "test": [{"id": "CHUV-008", "ct": "a_ct.nii.gz"}]}))
    assert [(c.case_id, c.test) for c in discover_cases(tmp_path / "list.json")] == [("CHUV-007", False),
                                                                                     ("CHUV-008", True)]


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


def _hecktor_case(root: Path, cid: str) -> None:
    _img(root / "imagesTr" / f"{cid}__CT.nii.gz")
    _img(root / "imagesTr" / f"{cid}__PT.nii.gz")
    _img(root / "labelsTr" / f"{cid}.nii.gz", 1.0)


def test_predictions_folder_inside_the_dataset_is_not_a_label(tmp_path: Path) -> None:
    _hecktor_case(tmp_path, "CHUM-001")
    _img(tmp_path / "imagesTr" / "CHUS-002__CT.nii.gz")
    for folder in ("predictions", "zz_later", "imagesTr"):  # sorted after labelsTr: used to win
        _img(tmp_path / folder / "CHUM-001.nii.gz", 2.0)
        _img(tmp_path / folder / "CHUS-002.nii.gz", 2.0)
    by_id = {c.case_id: c for c in discover_cases(tmp_path)}
    assert by_id["CHUM-001"].label == str(tmp_path / "labelsTr" / "CHUM-001.nii.gz")
    assert by_id["CHUS-002"].label is None
    _img(tmp_path / "labelsTs" / "CHUS-002.nii.gz", 1.0)
    assert {c.case_id: c for c in discover_cases(tmp_path)}["CHUS-002"].label.endswith("labelsTs/CHUS-002.nii.gz")


def test_two_labels_for_one_case_name_both_files(tmp_path: Path) -> None:
    _hecktor_case(tmp_path / "a", "CHUM-001")
    _img(tmp_path / "b" / "labels_old" / "CHUM-001.nii.gz", 1.0)
    with pytest.raises(PemmaError) as err:
        discover_cases(tmp_path)
    msg = str(err.value)
    assert "case CHUM-001: two label files" in msg and "\n" not in msg
    assert str(tmp_path / "a" / "labelsTr" / "CHUM-001.nii.gz") in msg
    assert str(tmp_path / "b" / "labels_old" / "CHUM-001.nii.gz") in msg


def test_image_file_where_a_label_is_expected(tmp_path: Path) -> None:
    _hecktor_case(tmp_path, "CHUM-001")
    (tmp_path / "labelsTr" / "CHUM-001.nii.gz").unlink()
    _img(tmp_path / "labelsTr" / "CHUM-001__CT.nii.gz")
    with pytest.raises(PemmaError, match=r"labelsTr/CHUM-001__CT.nii.gz: an image file \(__CT\) inside a label "
                                         r"folder.*imagesTr/CHUM-001__(CT|PT).nii.gz"):
        discover_cases(tmp_path)
    _img(tmp_path / "a.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps([{"id": "CHUM-001", "ct": "a.nii.gz", "label": "a.nii.gz"}]))
    with pytest.raises(PemmaError, match=r"list.json: entry 0 \(CHUM-001\): label a.nii.gz is the same file as its "
                                         r"ct image .*a.nii.gz"):
        discover_cases(tmp_path / "list.json")


def test_nnunet_test_cases_take_labels_from_labels_ts(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    _img(tmp_path / "imagesTs" / "MDA-001_0000.nii.gz")
    _img(tmp_path / "labelsTr" / "MDA-001.nii.gz")
    assert discover_cases(tmp_path)[0].label is None
    _img(tmp_path / "labelsTs" / "MDA-001.nii.gz")
    assert discover_cases(tmp_path)[0].label == str(tmp_path / "labelsTs" / "MDA-001.nii.gz")


@pytest.mark.parametrize("shift_mm, ok", [(0.0, True), (3.0, True), (500.0, False)])
def test_label_grid_must_overlap_the_ct(tmp_path: Path, shift_mm: float, ok: bool) -> None:
    """A label on a grid far from the CT used to become an empty label; now training and evaluation refuse it."""
    from pemma.data.transforms import check_label_overlap

    label = np.zeros((8, 8, 6), np.uint8)
    label[2:5, 2:5, 2:4] = 1
    moved = AFF.copy()
    moved[2, 3] += shift_mm
    if ok:
        check_label_overlap("lab.nii.gz", "CHUM-001", label, moved, (8, 8, 6), AFF)
        return
    with pytest.raises(PemmaError, match=r"^lab.nii.gz: the label of case CHUM-001 does not overlap the CT: its grid "
                                         r"lies outside the CT field of view"):
        check_label_overlap("lab.nii.gz", "CHUM-001", label, moved, (8, 8, 6), AFF)


def test_label_tumour_outside_the_ct_is_refused_in_training_and_evaluation(tmp_path: Path) -> None:
    import nibabel as nib

    from pemma.config import build_config
    from pemma.data.layout import CaseRecord
    from pemma.data.transforms import preprocessing
    from pemma.evaluation.evaluate import label_on_grid

    ct = tmp_path / "CHUM-001__CT.nii.gz"
    save_nifti(np.full((8, 8, 6), 40, np.int16), AFF, ct)
    label = np.zeros((8, 8, 30), np.uint8)
    label[2:5, 2:5, 20:24] = 1  # the grid overlaps the CT, the tumour lies 42 mm beyond its last slice
    save_nifti(label, AFF, tmp_path / "labelsTr" / "CHUM-001.nii.gz", dtype=np.uint8)
    case = CaseRecord("CHUM-001", "CHUM", {"ct": str(ct)}, str(tmp_path / "labelsTr" / "CHUM-001.nii.gz"))
    pattern = r"labelsTr/CHUM-001.nii.gz: the label of case CHUM-001 does not overlap the CT: its tumour voxels lie"
    with pytest.raises(PemmaError, match=pattern):
        label_on_grid(case, nib.load(str(ct)))
    cfg = build_config("tiny", overrides={"preprocess": {"target_spacing": [2, 2, 3]}}).preprocess
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps it; pemma's datasets unwrap the PemmaError
        preprocessing(["ct"], cfg, [16, 16, 16], with_label=True)(
            {"case_id": "CHUM-001", "ct": case.images["ct"], "label": case.label})
    assert isinstance(err.value.__cause__, PemmaError) and re.search(pattern, str(err.value.__cause__))


def test_the_same_case_id_twice_is_named_not_dropped(tmp_path: Path) -> None:
    """Two sites' folders with the same IDs under one root: the second CT silently replaced the first (predict
    wrote 3 label maps for 6 CTs); a datalist with one ID twice wrote one prediction for two entries."""
    _hecktor_case(tmp_path / "siteA", "CHUM-001")
    _img(tmp_path / "siteB" / "imagesTr" / "CHUM-001__CT.nii.gz")
    with pytest.raises(PemmaError) as err:
        discover_cases(tmp_path)
    msg = str(err.value)
    assert msg.startswith("case CHUM-001: two CT images") and "siteA" in msg and "siteB" in msg and "\n" not in msg
    assert [c.case_id for c in discover_cases(tmp_path / "siteA")] == ["CHUM-001"]  # one site: fine
    _img(tmp_path / "a_ct.nii.gz")
    _img(tmp_path / "b_ct.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"id": "CHUM-001", "ct": "a_ct.nii.gz"}],
                                                    "test": [{"id": "CHUM-001", "ct": "b_ct.nii.gz"}]}))
    with pytest.raises(PemmaError, match=r"list\.json: entries 0 and 1 have the same case ID CHUM-001"):
        discover_cases(tmp_path / "list.json")
