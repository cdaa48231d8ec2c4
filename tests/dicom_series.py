"""Test helper: write a SimpleITK volume as a DICOM series with pydicom (CT in HU, or PET in Bq/ml with SUV tags)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "PT": "1.2.840.10008.5.1.4.1.1.128"}

#: PET tags of the series written by :func:`write_series` (START correction, 1 h after injection, half-life 1 h:
#: the dose has halved, so SUVbw = Bq/ml x 75000 g / 150 MBq = Bq/ml / 2000)
PET_TAGS = {"Units": "BQML", "DecayCorrection": "START", "PatientWeight": "75", "SeriesDate": "20260101",
            "SeriesTime": "100000", "AcquisitionDate": "20260101", "AcquisitionTime": "100000"}
PET_DRUG = {"RadiopharmaceuticalStartTime": "090000", "RadionuclideTotalDose": "300000000",
            "RadionuclideHalfLife": "3600"}
BQML_PER_SUV = 2000.0


def write_series(image: sitk.Image, folder: Path, modality: str, *, patient: str = "P042", study_uid: str = "",
                 frame_uid: str = "", values: np.ndarray | None = None, tags: dict | None = None,
                 drug: dict | None = None, per_slice_slope: bool = False) -> str:
    """Write ``image`` (its geometry; voxels ``values`` in HU or Bq/ml, default the image's) as one file per slice.

    Args:
        image: the geometry (and by default the voxel values).
        folder: where the ``.dcm`` files go (created).
        modality: ``CT`` or ``PT``.
        patient, study_uid, frame_uid: PatientID, StudyInstanceUID, FrameOfReferenceUID.
        values: voxel values, array indexed (z, y, x) as SimpleITK's. Default the image's.
        tags: extra (or, with value None, removed) series tags; PET gets :data:`PET_TAGS` first.
        drug: RadiopharmaceuticalInformationSequence item (PET; default :data:`PET_DRUG`; None values removed).
        per_slice_slope: a different RescaleSlope per slice (as PET scanners write).

    Returns:
        The SeriesInstanceUID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image).astype(np.float64) if values is None else np.asarray(values, float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin())
    series_uid, study_uid, frame_uid = generate_uid(), study_uid or generate_uid(), frame_uid or generate_uid()
    all_tags = {**(PET_TAGS if modality == "PT" else {}), **(tags or {})}
    for k in range(array.shape[0]):
        plane = array[k]
        slope = max(float(np.abs(plane).max()) / 30000.0, 1e-3) if per_slice_slope else 1.0
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = SOP_CLASS[modality]
        ds.Modality, ds.PatientID, ds.PatientName = modality, patient, patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20260101", "090000", "1", 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in origin + direction[:, 2] * spacing[2] * k]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.round(plane / float(f"{slope:.10g}")).astype(np.int16).tobytes()
        if modality == "PT":
            item = Dataset()
            for name, value in {**PET_DRUG, **(drug or {})}.items():
                if value is not None:
                    setattr(item, name, value)
            ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        for name, value in all_tags.items():
            if value is None:
                if name in ds:
                    delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(folder / f"{modality}{k:04d}.dcm", enforce_file_format=True)
    return series_uid


def write_rtstruct_file(ct_folder: Path, masks: dict[str, np.ndarray], path: Path, modality: str = "CT") -> None:
    """An RTSTRUCT drawn with rt-utils on the CT (or ``modality``) series in ``ct_folder`` (written by
    :func:`write_series`), one ROI per ``masks`` item; each mask is indexed (x, y, z) like the SimpleITK image the
    series was written from."""
    from rt_utils import RTStructBuilder

    files = sorted(ct_folder.glob(f"{modality}*.dcm"))  # write_series' slice k is CT{k:04d}.dcm
    ours = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    with warnings.catch_warnings():  # rt-utils sets transfer-syntax attributes pydicom 3 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        rt = RTStructBuilder.create_new(dicom_series_path=str(ct_folder))
        theirs = [ds.SOPInstanceUID for ds in rt.series_data]  # rt-utils' order: ascending along the slice normal
        for name, mask in masks.items():
            rows_cols = np.transpose(mask, (1, 0, 2))[:, :, [ours.index(uid) for uid in theirs]]
            rt.add_roi(mask=np.ascontiguousarray(rows_cols.astype(bool)), name=name)
        rt.save(str(path))


def write_seg_file(ct_folder: Path, label: np.ndarray, segments: dict[str, int], path: Path) -> None:
    """A DICOM-SEG written with highdicom on the CT series in ``ct_folder``: one segment per ``segments`` item
    (segment label -> value in ``label``, which is indexed (x, y, z) like :func:`write_rtstruct_file`'s masks)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    files = sorted(ct_folder.glob("CT*.dcm"))
    sources = [pydicom.dcmread(f) for f in files]
    for ds in sources:  # Type 2 patient / study attributes highdicom copies (empty, as the standard allows)
        for name in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
            if name not in ds:
                setattr(ds, name, "")
    frames = np.stack([np.stack([label[:, :, k] == v for v in segments.values()], axis=-1).transpose(1, 0, 2)
                       for k in range(label.shape[2])])  # (slice, row, column, segment)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in enumerate(segments, start=1)]
    with warnings.catch_warnings():  # the test's PatientName is a single component, as DICOM allows
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="pemma tests", manufacturer_model_name="test", software_versions="0",
            device_serial_number="0")
    seg.save_as(str(path))


def within_one_voxel(a: np.ndarray, b: np.ndarray) -> None:
    """Assert two non-empty masks differ only at their borders (each inside the other dilated by one voxel)."""
    from scipy.ndimage import binary_dilation

    ball = np.ones((3, 3, 3), bool)
    assert a.any() and b.any()
    assert not (a & ~binary_dilation(b, ball)).any() and not (b & ~binary_dilation(a, ball)).any()
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
