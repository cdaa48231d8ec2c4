"""Test helper: write a SimpleITK volume as a DICOM series with pydicom (CT in HU, or PET in Bq/ml with SUV tags)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
