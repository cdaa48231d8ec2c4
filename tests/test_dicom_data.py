"""DICOM as a dataset for train / adapt / evaluate / check: labels from an RTSTRUCT (rt-utils) or a DICOM-SEG
(highdicom) on the CT grid, ROIs mapped by name (defaults and --roi-names), cases staged once into the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import FAST, run_main
from dicom_series import BQML_PER_SUV, within_one_voxel, write_rtstruct_file, write_seg_file, write_series

import pemma
from pemma.data import dicom_stage
from pemma.data.dicom_labels import roi_value
from pemma.data.layout import discover_cases
from pemma.errors import PemmaError
from pemma.io_utils import save_nifti
from pemma.vocab import parse_roi_names

pytestmark = pytest.mark.usefixtures("one_thread")
#: the phantom cases written as DICOM, and how each one's label is stored
LABELLED = {"CHUM-001": "rtstruct", "CHUM-000": "seg"}


def _phantom_label(phantom: Path, cid: str) -> np.ndarray:
    return np.asarray(nib.load(str(phantom / "labelsTr" / f"{cid}.nii.gz")).dataobj)


@pytest.fixture(scope="module")
def dicom_tree(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom cases as DICOM CT + PET (Bq/ml with SUV tags): CHUM-001's label as an RTSTRUCT written by rt-utils
    (ROIs GTV_T, GTVn_1 and BODY), CHUM-000's as a DICOM-SEG written by highdicom (segments GTVp, GTVn)."""
    root = tmp_path_factory.mktemp("dicom") / "tree"
    for n, (cid, kind) in enumerate(LABELLED.items()):
        ct, pet = (sitk.ReadImage(str(phantom / "imagesTr" / f"{cid}__{m}.nii.gz")) for m in ("CT", "PT"))
        write_series(ct, root / cid / "ct", "CT", patient=cid, study_uid=f"1.9.{n}")
        write_series(pet, root / cid / "pet", "PT", patient=cid, study_uid=f"1.9.{n}",
                     values=sitk.GetArrayFromImage(pet) * BQML_PER_SUV, per_slice_slope=True)
        label = _phantom_label(phantom, cid)
        if kind == "rtstruct":
            write_rtstruct_file(root / cid / "ct", {"GTV_T": label == 1, "GTVn_1": label == 2, "BODY": label >= 0},
                                root / cid / "structures.dcm")
        else:
            write_seg_file(root / cid / "ct", label, {"GTVp": 1, "GTVn": 2}, root / cid / "seg.dcm")
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _block_ct(folder: Path, rois: dict[str, tuple[slice, slice, slice]] | None, patient: str = "BLK-1") -> None:
    """A 16 x 16 x 6 CT series (and an RTSTRUCT with box ROIs, if given) in ``folder``."""
    image = sitk.GetImageFromArray(np.zeros((6, 16, 16), np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    write_series(image, folder / "ct", "CT", patient=patient, study_uid="1.7.1")
    if rois is not None:
        masks = {}
        for name, box in rois.items():
            masks[name] = np.zeros((16, 16, 6), bool)
            masks[name][box] = True
        write_rtstruct_file(folder / "ct", masks, folder / "rs.dcm")


def _main(*args: str) -> tuple[int, str]:
    """``pemma ARGS`` in this process: (exit code, stderr)."""
    import contextlib
    import io

    from pemma.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


# ------------------------------------------------------------------------------------------------ labels, staging


def test_staged_cases_equal_the_nifti_they_were_written_from(phantom: Path, dicom_tree: Path, cache: Path) -> None:
    cases = {c.case_id: c for c in discover_cases(dicom_tree)}
    assert sorted(cases) == sorted(LABELLED) and all(c.centre == "CHUM" for c in cases.values())
    for cid, case in cases.items():
        ct = nib.load(case.images["ct"])
        truth_ct = nib.load(str(phantom / "imagesTr" / f"{cid}__CT.nii.gz"))
        np.testing.assert_allclose(ct.affine, truth_ct.affine, atol=1e-4)
        np.testing.assert_allclose(ct.get_fdata(), truth_ct.get_fdata(), atol=0.5)  # HU
        pet = nib.load(case.images["pet"]).get_fdata()
        np.testing.assert_allclose(pet, nib.load(str(phantom / "imagesTr" / f"{cid}__PT.nii.gz")).get_fdata(),
                                   atol=2e-3)  # SUVbw from the tags
        label_img = nib.load(case.label)
        np.testing.assert_allclose(label_img.affine, ct.affine, atol=1e-6)  # on the CT grid
        label, truth = np.asarray(label_img.dataobj), _phantom_label(phantom, cid)
        assert label.shape == truth.shape and label.dtype == np.uint8
        if LABELLED[cid] == "seg":
            np.testing.assert_array_equal(label, truth)  # a SEG holds the voxels themselves
        else:
            for value in (1, 2):  # contours traced and filled again: equal up to the border voxels
                within_one_voxel(label == value, truth == value)
    assert str(cache) in cases["CHUM-000"].images["ct"]


def test_second_discovery_reads_no_pixel_data(dicom_tree: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = discover_cases(dicom_tree)
    stamps = {p: os.stat(p).st_mtime_ns for c in first for p in [*c.images.values(), c.label]}
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(str(args[0]))
        raise AssertionError("pixel data read again")

    monkeypatch.setattr(dicom_stage, "read_series", refuse)
    monkeypatch.setattr(dicom_stage, "read_label", refuse)
    assert discover_cases(dicom_tree) == first and not calls
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    # a changed file (here the RTSTRUCT) restages its case, and only that one
    rt = dicom_tree / "CHUM-001" / "structures.dcm"
    before = os.stat(rt)
    try:
        os.utime(rt, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        with pytest.raises(AssertionError, match="pixel data read again"):
            discover_cases(dicom_tree)
        assert len(calls) == 1 and "CHUM-001" in calls[0]
    finally:
        os.utime(rt, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_roi_names_defaults_and_overrides() -> None:
    for name in ("GTVp", "gtvp", "GTV_T", "GTV-T", "GTVt", "GTV primary", "GTVp_2", "Tumour"):
        assert roi_value(name, {}) == 1, name
    for name in ("GTVn", "GTVn1", "GTVn_2", "GTV_LN", "gtv-node", "Lymph nodes"):
        assert roi_value(name, {}) == 2, name
    for name in ("GTV-1", "GTV", "BODY", "CTV_high", "Parotid_L"):
        assert roi_value(name, {}) is None, name
    names = parse_roi_names("gtvp=GTV_primary_x , GTVn=LN_L+LN_R")
    assert names == {"GTVp": ("gtv_primary_x",), "GTVn": ("ln_l", "ln_r")}
    assert roi_value("GTV_PRIMARY_X", names) == 1 and roi_value("ln_r", names) == 2
    assert roi_value("GTVp", names) is None  # a class the user named takes only the names given
    assert parse_roi_names({"GTVn": ["a", "b"]}) == {"GTVn": ("a", "b")} and parse_roi_names("") == {}
    for bad, said in (("GTVp", "CLASS=ROI"), ("CTV=x", "must be one of GTVp, GTVn"), ("GTVp=", "empty ROI name")):
        with pytest.raises(ValueError, match=said):
            parse_roi_names(bad)


def test_unnamed_rois_are_an_error_naming_them_until_roi_names_maps_them(tmp_path: Path, cache: Path) -> None:
    _block_ct(tmp_path / "p", {"Primary_A1": np.s_[3:7, 4:9, 1:4], "LN_level2": np.s_[10:13, 10:13, 2:5],
                               "BODY": np.s_[1:15, 1:15, 0:6]})
    with pytest.raises(PemmaError, match=r"^case BLK-1: .*rs\.dcm: no RTSTRUCT ROI names GTVp or GTVn \(ROIs found: "
                                         r"Primary_A1, LN_level2, BODY\); name them with --roi-names") as info:
        discover_cases(tmp_path / "p")
    assert "\n" not in str(info.value)
    code, err = _main("convert-dicom", str(tmp_path / "p"), "--out", str(tmp_path / "n"))  # one error line, exit 2
    assert code == 2 and err.strip().splitlines()[-1] == f"pemma convert-dicom: error: {info.value}"
    assert "Traceback" not in err
    report = pemma.check(tmp_path / "p", progress=False)  # check lists it as the case's problem
    assert report["n_cases"] == 1 and report["problems"] == {"BLK-1": [str(info.value)]}
    code, err = _main("check", str(tmp_path / "p"), "--roi-names", "GTVx=LN_level2")
    assert code == 2 and "class 'GTVx' must be one of GTVp, GTVn" in err and "Traceback" not in err
    (case,) = discover_cases(tmp_path / "p", roi_names="GTVp=primary_a1,GTVn=LN_level2")
    label = np.asarray(nib.load(case.label).dataobj)
    assert {v: int((label == v).sum()) for v in (1, 2)} == {1: 4 * 5 * 3, 2: 3 * 3 * 3}  # box ROIs: exact
    assert label[3:7, 4:9, 1:4].min() == 1 and label[10:13, 10:13, 2:5].min() == 2


def test_rois_as_planning_systems_export_them(tmp_path: Path, cache: Path) -> None:
    """Two ROIs named "GTVn" (two nodes): the second was lost (rt-utils' lookup by name finds the first); an ROI
    without a ContourSequence (an empty planned ROI) failed the case; GTVn_L beside a GTVp became background with
    an info line only."""
    _block_ct(tmp_path / "p", {"GTVp": np.s_[3:7, 4:9, 1:4], "node_a": np.s_[10:13, 10:13, 2:5],
                               "node_b": np.s_[1:3, 12:15, 0:2], "planned": np.s_[5:6, 5:6, 5:6],
                               "GTVn_L": np.s_[12:14, 1:3, 4:6]})
    rs = pydicom.dcmread(tmp_path / "p" / "rs.dcm")
    names = {str(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
    for roi in rs.StructureSetROISequence:
        if roi.ROIName in ("node_a", "node_b"):
            roi.ROIName = "GTVn"
    for contour in rs.ROIContourSequence:
        if names[str(contour.ReferencedROINumber)] == "planned":
            del contour.ContourSequence
    rs.save_as(tmp_path / "p" / "rs.dcm")
    with pytest.warns(UserWarning, match=r"ROI\(s\) GTVn_L look like tumour volumes but map to neither GTVp nor "
                                         r"GTVn.*--roi-names \(e\.g\. GTVn=GTVn_L\)"):
        (case,) = discover_cases(tmp_path / "p")
    label = np.asarray(nib.load(case.label).dataobj)
    assert {v: int((label == v).sum()) for v in (1, 2)} == {1: 4 * 5 * 3, 2: 3 * 3 * 3 + 2 * 3 * 2}  # both nodes
    assert label[12:14, 1:3, 4:6].max() == 0  # GTVn_L: background, as warned


def test_the_ct_series_the_label_is_drawn_on_is_the_one_used(tmp_path: Path, cache: Path) -> None:
    """A study with the head-and-neck CT the RTSTRUCT is drawn on and a whole-body CT of more slices: the larger was
    chosen and the RTSTRUCT dropped ("it references series ..., which is not the CT or PET series of any case")."""
    _block_ct(tmp_path / "p", {"GTVp": np.s_[3:7, 4:9, 1:4]})
    body = sitk.GetImageFromArray(np.zeros((9, 16, 16), np.float32))
    body.SetSpacing((2.0, 2.0, 3.0))
    write_series(body, tmp_path / "p" / "wholebody", "CT", patient="BLK-1", study_uid="1.7.1")
    (case,) = discover_cases(tmp_path / "p")
    assert nib.load(case.images["ct"]).shape == (16, 16, 6) and case.label is not None
    assert int((np.asarray(nib.load(case.label).dataobj) == 1).sum()) == 4 * 5 * 3


def test_a_label_drawn_on_the_pet_is_resampled_onto_the_ct(tmp_path: Path, cache: Path) -> None:
    """PET voxels of 4 x 4 x 6 mm centred 1, 1, 1.5 mm past the CT's 2 x 2 x 3 mm ones: CT voxel j lies in PET voxel
    j // 2 on every axis, so the PET box [1:3, 2:4, 0:2] is the CT box [2:6, 4:8, 0:4] exactly."""
    _block_ct(tmp_path / "p", None)
    pet = sitk.GetImageFromArray(np.full((3, 8, 8), 2000.0, np.float32))
    pet.SetSpacing((4.0, 4.0, 6.0))
    pet.SetOrigin((1.0, 1.0, 1.5))
    write_series(pet, tmp_path / "p" / "pet", "PT", patient="BLK-1", study_uid="1.7.1")
    box = np.zeros((8, 8, 3), bool)
    box[1:3, 2:4, 0:2] = True
    write_rtstruct_file(tmp_path / "p" / "pet", {"GTVp": box}, tmp_path / "p" / "rs_pet.dcm", modality="PT")
    (case,) = discover_cases(tmp_path / "p")
    label_img, ct_img = nib.load(case.label), nib.load(case.images["ct"])
    np.testing.assert_allclose(label_img.affine, ct_img.affine, atol=1e-6)
    expected = np.zeros((16, 16, 6), np.uint8)
    expected[2:6, 4:8, 0:4] = 1
    np.testing.assert_array_equal(np.asarray(label_img.dataobj), expected)


def test_unlabelled_dicom_is_fine_to_discover_and_an_error_to_score(tmp_path: Path, cache: Path) -> None:
    _block_ct(tmp_path / "p", None)
    (case,) = discover_cases(tmp_path / "p")
    assert case.label is None and set(case.images) == {"ct"}
    save_nifti(np.zeros((16, 16, 6), np.uint8), nib.load(case.images["ct"]).affine, tmp_path / "pred" / "BLK-1.nii.gz")
    with pytest.raises(PemmaError, match=r"^case BLK-1: no label file in .*p \(.*for DICOM an RTSTRUCT or DICOM-SEG"):
        pemma.evaluate(pred=tmp_path / "pred", data=tmp_path / "p")


def test_model_free_evaluate_on_dicom_equals_evaluate_on_nifti(phantom: Path, dicom_tree: Path, cache: Path,
                                                                tmp_path: Path) -> None:
    """The same predictions (the phantom's labels, shifted by two voxels) scored against the DICOM tree's labels and
    against the phantom's NIfTI labels: the same Dice per case (the SEG label is exact, the RTSTRUCT one was traced
    and filled again on the same grid)."""
    for cid in LABELLED:
        img = nib.load(str(phantom / "labelsTr" / f"{cid}.nii.gz"))
        save_nifti(np.roll(np.asarray(img.dataobj), 2, axis=0), img.affine, tmp_path / "pred" / f"{cid}.nii.gz")
    on_dicom = pemma.evaluate(pred=tmp_path / "pred", data=dicom_tree, out=tmp_path / "a")
    on_nifti = pemma.evaluate(pred=tmp_path / "pred", data=phantom, centres="CHUM", out=tmp_path / "b")
    assert on_dicom["n_cases"] == on_nifti["n_cases"] == 2
    for cls in ("GTVp", "GTVn", "mean"):
        assert on_dicom["DSCagg"][cls] == pytest.approx(on_nifti["DSCagg"][cls], abs=1e-9)
    assert 0.2 < on_dicom["DSCagg"]["mean"] < 0.95  # a real score, not a trivial 0 or 1


def test_check_and_convert_dicom_cli(phantom: Path, dicom_tree: Path, cache: Path, tmp_path: Path) -> None:
    report = json.loads(run_main("check", str(dicom_tree), "--json"))
    assert report["n_cases"] == 2 and report["bad_cases"] == []
    assert "wrote 2 cases" in run_main("convert-dicom", str(dicom_tree), "--out", str(tmp_path / "nifti"))
    converted = {c.case_id: c for c in discover_cases(tmp_path / "nifti")}
    staged = {c.case_id: c for c in discover_cases(dicom_tree)}
    assert sorted(converted) == sorted(LABELLED)
    for cid, case in converted.items():
        assert Path(case.images["pet"]).name == f"{cid}__PT.nii.gz" and Path(case.label).parent.name == "labelsTr"
        np.testing.assert_array_equal(np.asarray(nib.load(case.label).dataobj),
                                      np.asarray(nib.load(staged[cid].label).dataobj))
    # into a dataset that already holds these cases: refused before anything is written, unless --force
    label = Path(converted["CHUM-000"].label)
    label.write_bytes(b"the user's own label")
    code, err = _main("convert-dicom", str(dicom_tree), "--out", str(tmp_path / "nifti"))
    assert code == 2 and "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert label.read_bytes() == b"the user's own label"
    assert "wrote 2 cases" in run_main("convert-dicom", str(dicom_tree), "--out", str(tmp_path / "nifti"), "--force")
    assert label.read_bytes() != b"the user's own label"
    # a file of the case this conversion does not write (an earlier conversion's MR, or a label the case no longer
    # has) would be paired with the new images: refused, and removed with --force
    stale = tmp_path / "nifti" / "imagesTr" / "CHUM-000__MR.nii.gz"
    shutil.copyfile(converted["CHUM-000"].images["ct"], stale)
    code, err = _main("convert-dicom", str(dicom_tree), "--out", str(tmp_path / "nifti"))
    assert code == 2 and "--force" in err and stale.is_file()
    assert "wrote 2 cases" in run_main("convert-dicom", str(dicom_tree), "--out", str(tmp_path / "nifti"), "--force")
    assert not stale.exists() and Path(converted["CHUM-000"].images["pet"]).is_file()
    code, err = _main("convert-dicom", str(tmp_path / "nowhere"), "--out", str(tmp_path / "n2"))
    assert code == 2 and err.strip().endswith(f"{tmp_path / 'nowhere'}: not found")


@pytest.mark.slow
def test_train_adapt_evaluate_on_a_dicom_tree(dicom_tree: Path, cache: Path, tmp_path: Path) -> None:
    """``train`` (CT), ``adapt`` (+ PET) and ``evaluate`` run on the DICOM tree as on NIfTI: the cases staged by the
    first verb are reused, the scores are computed on the RTSTRUCT / SEG labels."""
    run_main("train", "--data", str(dicom_tree), "--modalities", "ct", *FAST, "--max-steps", "2", "--out",
             str(tmp_path / "ct"))
    staged = sorted(p.name for p in (cache / "dicom").iterdir())
    run_main("adapt", "--base", str(tmp_path / "ct"), "--data", str(dicom_tree), "--add-modality", "pet", *FAST,
             "--max-steps", "2", "--out", str(tmp_path / "ad"))
    meta = json.loads((tmp_path / "ad" / "model.json").read_text())
    assert sorted(meta["train_cases"] + meta["val_cases"]) == sorted(LABELLED)
    out = run_main("evaluate", "--model", str(tmp_path / "ad"), "--data", str(dicom_tree), "--modalities", "ct,pet",
                   "--out", str(tmp_path / "eval"))
    assert "DSCagg" in out
    scores = json.loads(next((tmp_path / "eval").glob("metrics_*.json")).read_text())
    assert scores["n_cases"] == 2 and 0.0 <= scores["DSCagg"]["mean"] <= 1.0
    assert sorted(p.name for p in (cache / "dicom").iterdir()) == staged  # staged once, by train
