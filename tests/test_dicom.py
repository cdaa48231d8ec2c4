"""DICOM in (CT / PET series grouped into cases, PET in SUVbw from its tags) and RTSTRUCT out (read back with
rt-utils and rasterised onto the CT, within one voxel of the NIfTI label)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import FAST, run_main
from dicom_series import BQML_PER_SUV, PET_DRUG, PET_TAGS, within_one_voxel, write_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from rt_utils import RTStructBuilder
from torch import nn

from pemma.config import build_config
from pemma.data.dicom import dicom_cases, is_dicom_input, nifti_affine, read_series
from pemma.data.suv import suv_factor
from pemma.errors import PemmaError
from pemma.inference.dicom import predict_dicom_cases
from pemma.inference.rtstruct import write_rtstruct
from pemma.models.loaded import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _pet_header(tags: dict | None = None, drug: dict | None = None) -> Dataset:
    ds = Dataset()
    for name, value in {**PET_TAGS, **(tags or {})}.items():
        if value is not None:
            setattr(ds, name, value)
    item = Dataset()
    for name, value in {**PET_DRUG, **(drug or {})}.items():
        if value is not None:
            setattr(item, name, value)
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    return ds


# ---------------------------------------------------------------------------------------------- SUV known answers


def test_suv_known_answers() -> None:
    # START: 1 h from injection (09:00) to the series (10:00), half-life 1 h: 300 MBq decays to 150 MBq;
    # SUVbw = Bq/ml * 75 kg * 1000 g/kg / 150e6 Bq = Bq/ml * 5e-4, so 2000 Bq/ml is SUV 1.0
    assert suv_factor([_pet_header()], "s").factor == pytest.approx(5e-4, rel=1e-12)
    # ADMIN: already decay corrected to the injection: 75000 / 300e6
    assert suv_factor([_pet_header({"DecayCorrection": "ADMIN"})], "s").factor == pytest.approx(2.5e-4, rel=1e-12)
    # F-18 (half-life 6586.2 s), 370 MBq, 80 kg, injected 23:30 the day before the 00:45 series (4500 s), the
    # date from RadiopharmaceuticalStartDateTime: 2^(-4500/6586.2) = 0.6227622, decayed dose 230.4220 MBq,
    # factor 80000 / 230.4220e6 = 3.471891e-4 (with bc -l)
    f18 = _pet_header({"PatientWeight": "80", "SeriesDate": "20260102", "SeriesTime": "004500",
                       "AcquisitionDate": "20260102", "AcquisitionTime": "004500"},
                      {"RadiopharmaceuticalStartDateTime": "20260101233000", "RadionuclideTotalDose": "370000000",
                       "RadionuclideHalfLife": "6586.2"})
    found = suv_factor([f18], "s")
    assert found.elapsed_s == 4500
    assert found.factor == pytest.approx(3.471891e-4, rel=1e-6)
    # the same with the injection as a time alone (23:30, the scan at 00:45): the day before the scan (it was an
    # error: "injection ... is 81900 s after the scan"); an injection an hour after the scan's time stays one
    f18_time = _pet_header({"PatientWeight": "80", "SeriesDate": "20260102", "SeriesTime": "004500",
                            "AcquisitionDate": "20260102", "AcquisitionTime": "004500"},
                           {"RadiopharmaceuticalStartTime": "233000", "RadionuclideTotalDose": "370000000",
                            "RadionuclideHalfLife": "6586.2"})
    assert suv_factor([f18_time], "s").elapsed_s == 4500
    assert suv_factor([f18_time], "s").factor == pytest.approx(found.factor, rel=1e-12)
    # a series time after the first acquisition (post-processed series): the earliest acquisition is the reference
    late = [_pet_header({"SeriesTime": "103000", "AcquisitionTime": t}) for t in ("100000", "100500")]
    assert suv_factor(late, "s").elapsed_s == 3600
    # values already in SUVbw
    gml = suv_factor([_pet_header({"Units": "GML"})], "s")
    assert gml.factor == 1.0 and gml.describe() == "PET units GML: already SUVbw, read as it is (factor 1)"


@pytest.mark.parametrize(("tags", "drug", "named"), [
    ({"PatientWeight": None}, None, "PatientWeight (0010,1030)"),
    ({"Units": None}, None, "Units (0054,1001)"),
    ({"DecayCorrection": None}, None, "DecayCorrection (0054,1102)"),
    (None, {"RadionuclideTotalDose": None}, "RadionuclideTotalDose (0018,1074)"),
    (None, {"RadionuclideHalfLife": None}, "RadionuclideHalfLife (0018,1075)"),
    (None, {"RadiopharmaceuticalStartTime": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
    ({"SeriesTime": None, "AcquisitionTime": None}, None, "SeriesTime (0008,0031)"),
    ({"Units": "CNTS"}, None, "Units CNTS"),
    ({"DecayCorrection": "NONE"}, None, "DecayCorrection NONE"),
    ({"SeriesTime": "080000", "AcquisitionTime": "080000"}, None, "after the scan"),
])
def test_suv_errors_name_the_tag_and_series(tags: dict | None, drug: dict | None, named: str) -> None:
    with pytest.raises(PemmaError, match=r"^PT series 9\.9 in /dicom/pt: .*") as info:
        suv_factor([_pet_header(tags, drug)], "PT series 9.9 in /dicom/pt")
    assert named in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- reading and grouping


def _oblique_ct(shape: tuple[int, int, int] = (40, 40, 14), spacing=(1.5, 1.5, 3.0)) -> sitk.Image:
    """A CT with a tilted, LPS-flipped grid: air, a body, a 300 HU ball (GTVp) and a 100 HU ball (GTVn)."""
    zyx = np.indices(shape[::-1]).astype(float)
    z, y, x = zyx
    hu = np.full(shape[::-1], -1000.0)
    hu[((x - 20) / 18) ** 2 + ((y - 20) / 18) ** 2 <= 1] = 0.0
    hu[(x - 14) ** 2 + (y - 16) ** 2 + ((z - 6) * 2) ** 2 <= 36] = 300.0
    hu[(x - 28) ** 2 + (y - 24) ** 2 + ((z - 8) * 2) ** 2 <= 16] = 100.0
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((31.5, -12.25, 480.0))
    t = np.deg2rad(12)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag([-1, -1, 1])
    image.SetDirection(tuple(rot.flatten()))
    return image


def test_cases_grouped_by_patient_and_study(tmp_path: Path) -> None:
    ct = _oblique_ct((8, 8, 4))
    write_series(ct, tmp_path / "a" / "ct", "CT", patient="A/1", study_uid="1.1")
    write_series(ct, tmp_path / "a" / "pet", "PT", patient="A/1", study_uid="1.1", values=np.full((4, 8, 8), 10.0))
    write_series(ct, tmp_path / "b" / "s1", "CT", patient="B", study_uid="2.1")
    write_series(ct, tmp_path / "b" / "s2" / "deep", "CT", patient="B", study_uid="2.2", tags={"StudyDate": "20260301"})
    write_series(_oblique_ct((8, 8, 6)), tmp_path / "b" / "s2" / "thin", "CT", patient="B", study_uid="2.2",
                 tags={"StudyDate": "20260301"})
    (tmp_path / "b" / "notes.txt").write_text("not DICOM")
    assert is_dicom_input(tmp_path) and not is_dicom_input(tmp_path / "b" / "notes.txt")
    cases = {c.record.case_id: c for c in dicom_cases(tmp_path, tmp_path / "stage")}
    assert sorted(cases) == ["A_1", "B_20260101_1", "B_20260301_2"]
    assert set(cases["A_1"].series) == {"ct", "pet"} and set(cases["B_20260101_1"].series) == {"ct"}
    assert len(cases["B_20260301_2"].series["ct"].files) == 6  # of two CTs in a study, the one with most slices
    assert cases["A_1"].record.images["pet"] == str(tmp_path / "stage" / "A_1__PT.nii")


def test_dicom_case_equals_the_nifti_it_was_written_from(phantom: Path, tmp_path: Path) -> None:
    """CT exact (HU, geometry), PET in SUVbw to the quantisation of its int16 slices (a rescale slope per slice)."""
    ct_path, pet_path = (phantom / "imagesTr" / f"CHUM-000__{m}.nii.gz" for m in ("CT", "PT"))
    ct, pet = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(pet_path))
    write_series(ct, tmp_path / "dcm" / "ct", "CT", study_uid="1.5")
    write_series(pet, tmp_path / "dcm" / "pet", "PT", study_uid="1.5",
                 values=sitk.GetArrayFromImage(pet) * BQML_PER_SUV, per_slice_slope=True)
    (case,) = dicom_cases(tmp_path / "dcm", tmp_path / "stage")
    case.stage(["ct", "pet"])
    for key, original, atol in (("ct", ct_path, 0.5), ("pet", pet_path, 2e-3)):
        staged, truth = nib.load(case.record.images[key]), nib.load(str(original))
        np.testing.assert_allclose(staged.affine, truth.affine, atol=1e-4)
        np.testing.assert_allclose(staged.get_fdata(), truth.get_fdata(), atol=atol)
    assert nib.load(case.record.images["pet"]).get_fdata().max() > 1.0  # SUVs, not Bq/ml (thousands)
    # whole HU are written as int16 (the same values, a smaller file), SUVs as float32
    assert [nib.load(case.record.images[k]).get_data_dtype() for k in ("ct", "pet")] == [np.int16, np.float32]
    case.unstage()
    assert not Path(case.record.images["ct"]).exists()


def test_missing_slice_and_gantry_tilt_are_refused(tmp_path: Path) -> None:
    write_series(_oblique_ct((8, 8, 5)), tmp_path / "ct", "CT")
    (tmp_path / "ct" / "CT0002.dcm").unlink()
    (case,) = dicom_cases(tmp_path, tmp_path / "stage")
    with pytest.raises(PemmaError, match=r"^CT series .* in .*ct: slices are not evenly spaced"):
        read_series(case.series["ct"])
    write_series(_oblique_ct((8, 8, 5)), tmp_path / "tilt", "CT")
    for k, f in enumerate(sorted((tmp_path / "tilt").iterdir())):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1] + 0.5 * k,
                                   ds.ImagePositionPatient[2]]
        ds.save_as(f)
    tilted = next(c for c in dicom_cases(tmp_path / "tilt", tmp_path / "stage"))
    with pytest.raises(PemmaError, match=r"in .*tilt: slices are shifted .* sideways .*gantry tilt"):
        read_series(tilted.series["ct"])


@pytest.mark.parametrize("slice_file", ["CT0000.dcm", "CT0002.dcm"])  # the first slice, a middle one
def test_a_damaged_slice_is_named_not_dropped(tmp_path: Path, slice_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GDCM leaves an unreadable file out of its series: a truncated first slice gave a volume one slice short
    with exit 0, a middle one an error about slice spacing that did not name the file. Only its case fails."""
    from pemma.data.layout import discover_cases

    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    for patient in ("A", "B"):
        write_series(_oblique_ct((8, 8, 5)), tmp_path / "tree" / patient / "ct", "CT", patient=patient)
    damaged = tmp_path / "tree" / "B" / "ct" / slice_file
    damaged.write_bytes(damaged.read_bytes()[:300])
    code, err = _main("convert-dicom", str(tmp_path / "tree"), "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out" / "imagesTr" / "B__CT.nii.gz").exists()
    assert f"{damaged}: damaged or truncated DICOM file" in err
    failures: dict[str, str] = {}  # what check / predict / train collect: the healthy case is still read
    assert [c.case_id for c in discover_cases(tmp_path / "tree", failures=failures)] == ["A"]
    assert list(failures) == ["B"] and f"{damaged}: damaged or truncated" in failures["B"]


# ------------------------------------------------------------------------------------------------ RTSTRUCT out


class TwoBallNet(nn.Module):
    """A 'segmenter' with a known answer on :func:`_oblique_ct`: GTVp where the scaled CT is above 0.7
    (300 HU), GTVn between 0.35 and 0.6 (100 HU), background elsewhere (CT window -200..400 HU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :1]
        return torch.cat([torch.zeros_like(s), 40 * (s - 0.7), 40 * torch.minimum(s - 0.35, 0.6 - s)], dim=1)


def _two_ball_model() -> LoadedModel:
    cfg = build_config("tiny", overrides={"preprocess": {"ct_window": [-200.0, 400.0], "target_spacing": [1.5, 1.5, 3],
                                                         "crop_mm": [400, 400, 400]},
                                          "model": {"roi_size": [32, 32, 16]}})
    return LoadedModel(net=TwoBallNet(), config=cfg, meta={}, input_sets=[["ct"]])


def _read_back(ct_folder: Path, rt_path: Path, name: str, files: tuple[str, ...]) -> np.ndarray:
    """The ROI rasterised by rt-utils onto the CT, reordered to the (column, row, slice in ``files``) grid."""
    rt = RTStructBuilder.create_from(str(ct_folder), str(rt_path))
    mask = rt.get_roi_mask_by_name(name)  # (row, column, slice ascending along the normal)
    ours = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    theirs = [ds.SOPInstanceUID for ds in rt.series_data]
    return np.transpose(mask[:, :, [theirs.index(uid) for uid in ours]], (1, 0, 2))


def test_rtstruct_round_tripwithin_one_voxel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ct = _oblique_ct()
    write_series(ct, tmp_path / "dcm" / "ct", "CT", patient="RT1")
    cases = dicom_cases(tmp_path / "dcm", tmp_path / "stage")
    (tmp_path / "stage").mkdir()
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        (label_path,) = predict_dicom_cases(_two_ball_model(), cases, ["ct"], tmp_path / "out", torch.device("cpu"),
                                            rtstruct=True, progress=False)
    # rt-utils' use of attributes pydicom deprecates printed two lines per case
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and "will be removed" in r.getMessage()]
    label_img = nib.load(str(label_path))
    np.testing.assert_allclose(label_img.affine, nifti_affine(ct), atol=1e-4)  # on the CT grid
    label = np.asarray(label_img.dataobj)
    assert label.shape == ct.GetSize()
    hu = sitk.GetArrayFromImage(ct).transpose(2, 1, 0)
    within_one_voxel(label == 1, hu == 300)  # the known answer: the model finds the balls
    within_one_voxel(label == 2, hu == 100)
    rt_path = tmp_path / "out" / "RT1_RTSTRUCT.dcm"
    rt = pydicom.dcmread(rt_path)
    assert rt.Modality == "RTSTRUCT" and [r.ROIName for r in rt.StructureSetROISequence] == ["GTVp", "GTVn"]
    referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == cases[0].series["ct"].uid
    for name, value in (("GTVp", 1), ("GTVn", 2)):
        within_one_voxel(_read_back(tmp_path / "dcm" / "ct", rt_path, name, cases[0].series["ct"].files),
                          label == value)


def test_empty_class_is_left_out_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ct = _oblique_ct((12, 12, 4))
    write_series(ct, tmp_path / "ct", "CT")
    (case,) = dicom_cases(tmp_path, tmp_path / "stage")
    label = np.zeros(ct.GetSize(), np.uint8)
    label[3:7, 4:9, 1:3] = 1
    with caplog.at_level(logging.INFO, logger="pemma.dicom"):
        assert write_rtstruct(label, case.series["ct"], tmp_path / "rt.dcm") == ["GTVp"]
    assert "no GTVn voxels predicted; ROI GTVn left out" in caplog.text
    assert [r.ROIName for r in pydicom.dcmread(tmp_path / "rt.dcm").StructureSetROISequence] == ["GTVp"]
    with pytest.raises(PemmaError, match="does not match CT series"):
        write_rtstruct(label[:, :, :3], case.series["ct"], tmp_path / "rt2.dcm")


# ------------------------------------------------------------------------------------------- the CLI, end to end


def _main(*args: str) -> tuple[int, str]:
    """``pemma ARGS`` in this process: (exit code, stderr)."""
    import contextlib
    import io

    from pemma.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


@pytest.mark.slow
def test_predict_dicom_cli_matches_nifti(phantom: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``pemma predict --input DICOM --rtstruct`` on a tiny CT+PET model gives the label of the same case read from
    NIfTI, on the CT grid, and an RTSTRUCT with an ROI per predicted class; a PET series without PatientWeight is a
    warning naming the tag and series, then an error line (exit 2)."""
    run = tmp_path / "run"
    run_main("train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "ct,pet", *FAST, "--max-steps",
             "1", "--out", str(run))
    ct_path, pet_path = (phantom / "imagesTr" / f"CHUM-000__{m}.nii.gz" for m in ("CT", "PT"))
    ct, pet = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(pet_path))
    dcm = tmp_path / "dicom" / "CHUM-000"
    write_series(ct, dcm / "ct", "CT", patient="CHUM-000", study_uid="1.7")
    write_series(pet, dcm / "pet", "PT", patient="CHUM-000", study_uid="1.7",
                 values=sitk.GetArrayFromImage(pet) * BQML_PER_SUV, per_slice_slope=True)
    run_main("predict", "--model", str(run), "--input", str(ct_path), "--out", str(tmp_path / "nifti"))
    with caplog.at_level(logging.INFO, logger="pemma.dicom"):
        run_main("predict", "--model", str(run), "--input", str(tmp_path / "dicom"), "--out", str(tmp_path / "preds"),
                 "--rtstruct")
    assert "SUVbw = value x 0.0005" in caplog.text  # the SUV decision is logged
    from_dicom, from_nifti = (nib.load(str(tmp_path / d / "CHUM-000.nii.gz")) for d in ("preds", "nifti"))
    np.testing.assert_allclose(from_dicom.affine, nib.load(str(ct_path)).affine, atol=1e-4)
    a, b = np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj)
    assert a.shape == b.shape and (a == b).mean() > 0.999
    rt = pydicom.dcmread(tmp_path / "preds" / "CHUM-000_RTSTRUCT.dcm")
    assert [r.ROIName for r in rt.StructureSetROISequence] == [n for n, v in (("GTVp", 1), ("GTVn", 2))
                                                               if (a == v).any()]
    # PET-only input from DICOM: written on the CT series' grid (HECKTOR scores there), or with --reference pet on
    # the PET's, equal to the same case predicted from NIfTI
    pet_run = tmp_path / "pet_run"
    run_main("train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "pet", *FAST, "--max-steps", "1",
             "--out", str(pet_run))
    for reference, grid in (("ct", ct_path), ("pet", pet_path)):
        outs = {}
        for source, extra in (("dicom", [str(tmp_path / "dicom")]), ("nifti", [str(phantom / "imagesTr"),
                                                                                "--centres", "CHUM"])):
            outs[source] = tmp_path / f"pet_{reference}_{source}"
            run_main("predict", "--model", str(pet_run), "--input", *extra, "--modalities", "pet", "--reference",
                     reference, "--out", str(outs[source]))
        got, want = (nib.load(str(outs[s] / "CHUM-000.nii.gz")) for s in ("dicom", "nifti"))
        assert got.shape == nib.load(str(grid)).shape and np.allclose(got.affine, nib.load(str(grid)).affine,
                                                                       atol=1e-4), reference
        assert (np.asarray(got.dataobj) == np.asarray(want.dataobj)).mean() > 0.999, reference
    for f in (dcm / "pet").iterdir():
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        ds.save_as(f)
    code, err = _main("predict", "--model", str(run), "--input", str(tmp_path / "dicom"), "--out",
                      str(tmp_path / "bad"))
    assert code == 2 and "Traceback" not in err
    assert "missing DICOM tag PatientWeight (0010,1030)" in err and "PT series" in err
    code, err = _main("predict", "--model", str(run), "--input", str(ct_path), "--out", str(tmp_path / "x"),
                      "--rtstruct")
    assert code == 2 and "--rtstruct needs DICOM input" in err.strip() and len(err.strip().splitlines()) == 1
