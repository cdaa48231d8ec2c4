"""DICOM in: a folder (or tree) of DICOM series -> cases (one per patient and study) with a CT and / or PET series.

Series are found and ordered by SimpleITK (GDCM), their tags read with pydicom, the voxels read with SimpleITK's
``ImageSeriesReader`` (rescale slope / intercept applied per slice: CT in HU, PET in Bq/ml, then SUVbw from the
tags, see :mod:`pemma.data.suv`). A case is *staged* as NIfTI files (``<case>__CT.nii``, ``<case>__PT.nii``) whose
affine is the series geometry (DICOM LPS turned into NIfTI RAS), so the rest of pemma reads it like any other case
and the predicted label lies on the CT grid of the DICOM series.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pemma.data.case import CaseRecord, centre_of
from pemma.data.suv import suv_factor
from pemma.errors import PemmaError
from pemma.io_utils import save_nifti

if TYPE_CHECKING:  # SimpleITK is imported where a series is read, not by every look-up for DICOM input
    import SimpleITK as sitk

log = logging.getLogger("pemma.dicom")

#: DICOM Modality -> pemma modality
MODALITY_OF = {"CT": "ct", "PT": "pet"}
#: relative spread of the slice gaps above which a series counts as unevenly spaced (missing slices)
MAX_GAP_SPREAD = 0.01
_SUFFIX = {"ct": "__CT.nii", "pet": "__PT.nii"}
#: Type 2 attributes rt-utils copies from the CT; a CT without them gets them empty, as the standard allows
_TYPE2 = ("StudyDate", "StudyTime", "StudyID")


@dataclass(frozen=True)
class DicomSeries:
    """One image series: its files in slice order (as GDCM sorts them) and the tags that group it."""

    uid: str
    modality: str
    patient_id: str
    study_uid: str
    study_date: str
    folder: str
    files: tuple[str, ...] = field(hash=False)
    description: str = ""
    #: a damaged file of the series' folder that GDCM left out (:func:`read_series` refuses the series with it)
    problem: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        """How errors name the series: ``PT series 1.2.3 (WB AC) in /dicom/p42/pet``."""
        what = f" ({self.description})" if self.description else ""
        return f"{self.modality} series {self.uid}{what} in {self.folder}"


@dataclass
class DicomCase:
    """A case from DICOM: the :class:`CaseRecord` pemma predicts from (paths of the staged NIfTI files), its
    series by pemma modality (``ct``, ``pet``), and the other series of each modality in its study (``alternatives``:
    a second reconstruction, a whole-body CT), one of which replaces the chosen one when the case's RTSTRUCT / SEG
    is drawn on it (:meth:`use`)."""

    record: CaseRecord
    series: dict[str, DicomSeries]
    alternatives: dict[str, list[DicomSeries]] = field(default_factory=dict)

    def use(self, modality: str, uid: str) -> DicomSeries | None:
        """Make the alternative series ``uid`` of ``modality`` the chosen one (logged); None when it is none."""
        others = self.alternatives.get(modality, [])
        found = next((s for s in others if s.uid == uid), None)
        if found is not None:
            log.info(f"case {self.record.case_id}: using {found.where} ({len(found.files)} slices), the series its "
                     f"label is drawn on, instead of {self.series[modality].where}")
            self.alternatives[modality] = [s for s in others if s is not found] + [self.series[modality]]
            self.series[modality] = found
        return found

    def stage(self, modalities: Sequence[str]) -> None:
        """Read the requested series and write them to the record's NIfTI paths (PET in SUVbw)."""
        for modality in modalities:
            image = read_series(self.series[modality])
            write_nifti(image, self.record.images[modality])

    def unstage(self) -> None:
        """Remove the staged NIfTI files."""
        for path in self.record.images.values():
            Path(path).unlink(missing_ok=True)


def is_dicom_input(path: str | os.PathLike) -> bool:
    """True for a DICOM file, or a folder with no NIfTI / ``dataset.json`` that holds a DICOM file."""
    path = Path(path)
    if path.is_file():
        return pydicom.misc.is_dicom(str(path))
    if not path.is_dir() or (path / "dataset.json").is_file():
        return False
    found = False
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith((".nii", ".nii.gz")):
                return False
            if not found and pydicom.misc.is_dicom(os.path.join(folder, name)):
                found = True
    return found


def _header(path: str) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise PemmaError(f"{path}: cannot read DICOM header ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None


def find_series(root: str | os.PathLike) -> list[DicomSeries]:
    """Every CT and PET (``PT``) image series under ``root`` (searched recursively; other modalities skipped).

    Raises:
        PemmaError: a series split over two folders (both named).
    """
    import SimpleITK as sitk

    root = Path(root)
    folders = [root.parent] if root.is_file() else [Path(d) for d, _, files in sorted(os.walk(root)) if files]
    found: dict[str, DicomSeries] = {}
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on every folder without a series
    try:
        for folder in folders:
            _add_series(folder, found)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    return list(found.values())


def _add_series(folder: Path, found: dict[str, DicomSeries]) -> None:
    """Add the CT and PT image series of one folder to ``found`` (by SeriesInstanceUID). A DICOM file of the folder
    that belongs to no series GDCM could read (truncated or damaged: GDCM leaves it out, so the volume would
    silently lose a slice) becomes the ``problem`` of the folder's series, which only their case then fails on.

    Raises:
        PemmaError: a series split over two folders.
    """
    import SimpleITK as sitk

    listed: set[str] = set()
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        listed.update(os.path.realpath(f) for f in files)
        head = _header(files[0])
        modality = str(head.get("Modality", ""))
        if modality in ("RTSTRUCT", "SEG"):
            continue  # labels: found by pemma.data.dicom_labels.find_label_objects
        if modality not in MODALITY_OF:
            log.info(f"skipped {modality or 'unknown-modality'} series {uid} in {folder} (only CT and PT are read)")
            continue
        if "LOCALIZER" in [str(v).upper() for v in head.get("ImageType", [])] or len(files) < 2:
            log.info(f"skipped {modality} series {uid} in {folder}: a localizer, a single slice or a multi-frame "
                     f"file (one file per slice is read)")
            continue
        if uid in found:
            raise PemmaError(f"{modality} series {uid} is split over {found[uid].folder} and {folder}; put its "
                             f"files in one folder")
        found[uid] = DicomSeries(uid, modality, str(head.get("PatientID", "") or "patient"),
                                 str(head.get("StudyInstanceUID", "")), str(head.get("StudyDate", "") or ""),
                                 str(folder), files, str(head.get("SeriesDescription", "") or ""))
    here = [uid for uid, s in found.items() if s.folder == str(folder)]
    for uid, problem in _unlisted_problems(folder, listed, found):
        targets = [uid] if uid in found else here
        for target in targets:
            found[target] = dataclasses.replace(found[target], problem=found[target].problem or problem)
        if not targets:
            log.warning(problem)


def _unlisted_problems(folder: Path, listed: set[str], found: dict[str, DicomSeries]) -> list[tuple[str, str]]:
    """``(series UID or "", message)`` for each DICOM file of ``folder`` outside every series GDCM read
    (``listed``): damaged, or a slice GDCM could not read. A DICOMDIR and complete files of other kinds are left
    alone."""
    problems = []
    for path in sorted(folder.iterdir()):
        if (not path.is_file() or os.path.realpath(path) in listed or path.name.upper() == "DICOMDIR"
                or not pydicom.misc.is_dicom(str(path))):
            continue
        try:
            head = _header(str(path))
        except PemmaError as exc:
            problems.append(("", str(exc)))
            continue
        uid = head.get("SeriesInstanceUID")
        if uid is None and head.get("Modality") is None and "DirectoryRecordSequence" not in head:
            problems.append(("", f"{path}: damaged or truncated DICOM file (no Modality or SeriesInstanceUID); "
                                 f"replace or remove it"))
        elif uid is not None and str(uid) in found:
            problems.append((str(uid), f"{path}: a slice of {found[str(uid)].where} that cannot be read (damaged "
                                       f"or truncated?); replace or remove it"))
    return problems


def _case_id(patient: str, study_date: str, index: int, studies: int) -> str:
    cid = re.sub(r"[^A-Za-z0-9._-]+", "_", patient).strip("._") or "patient"
    if studies > 1:
        cid += f"_{study_date or 'study'}_{index}"
    return cid


def _pick(series: list[DicomSeries], case_id: str) -> DicomSeries:
    """The series with the most slices (the others are logged as ignored; a label drawn on one of them makes it the
    case's series: :meth:`DicomCase.use`)."""
    chosen = max(series, key=lambda s: (len(s.files), s.uid))
    for other in series:
        if other is not chosen:
            log.info(f"case {case_id}: ignored {other.where} ({len(other.files)} slices); using {chosen.uid} "
                     f"({len(chosen.files)} slices)")
    return chosen


def dicom_cases(root: str | os.PathLike, staging: str | os.PathLike) -> list[DicomCase]:
    """Cases from the DICOM series under ``root``, grouped by patient and study (nothing is read yet).

    The case ID is the PatientID (made file-name safe), with the study date and a number when a patient has
    several studies. Each record's image paths point into ``staging``, where :meth:`DicomCase.stage` writes them.

    Args:
        root: a folder (or tree) of DICOM files, or one DICOM file (its series).
        staging: a folder for the NIfTI files of the staged cases.

    Raises:
        PemmaError: no CT or PET series under ``root``.
    """
    series = find_series(root)
    if Path(root).is_file():
        uid = str(_header(str(root)).get("SeriesInstanceUID", ""))
        series = [s for s in series if s.uid == uid]
    if not series:
        raise PemmaError(f"{root}: no DICOM CT or PET (PT) image series found")
    by_patient: dict[str, dict[str, list[DicomSeries]]] = {}
    for s in series:
        by_patient.setdefault(s.patient_id, {}).setdefault(s.study_uid, []).append(s)
    cases = []
    for patient, studies in sorted(by_patient.items()):
        ordered = sorted(studies.items(), key=lambda item: (item[1][0].study_date, item[0]))
        for index, (_, members) in enumerate(ordered, start=1):
            cid = _case_id(patient, members[0].study_date, index, len(studies))
            chosen, alternatives = {}, {}
            for dicom_modality, modality in MODALITY_OF.items():
                of_kind = [s for s in members if s.modality == dicom_modality]
                if of_kind:
                    chosen[modality] = _pick(of_kind, cid)
                    alternatives[modality] = [s for s in of_kind if s is not chosen[modality]]
            images = {m: str(Path(staging) / f"{cid}{_SUFFIX[m]}") for m in chosen}
            cases.append(DicomCase(CaseRecord(cid, centre_of(cid), images), chosen, alternatives))
            log.info(f"case {cid}: " + ", ".join(f"{s.where} ({len(s.files)} slices)" for s in chosen.values()))
    return cases


def _check_spacing(series: DicomSeries, headers: Sequence[Dataset]) -> None:
    """Refuse a series whose slices are not evenly spaced along the slice normal (missing or duplicate slices) or
    not stacked along it (gantry tilt): the volume would not have one affine."""
    try:
        orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        corners = np.array([np.asarray(h.ImagePositionPatient, dtype=float) for h in headers])
    except AttributeError as exc:
        raise PemmaError(f"{series.where}: missing {exc.args[0].split()[-1]} (image geometry)") from None
    steps = np.diff(corners, axis=0)
    gaps = steps @ normal
    mean = float(np.mean(np.abs(gaps))) if len(gaps) else 0.0
    if mean == 0.0 or float(np.ptp(gaps)) > MAX_GAP_SPREAD * mean:
        raise PemmaError(f"{series.where}: slices are not evenly spaced (gaps {np.round(gaps.min(), 3)} to "
                         f"{np.round(gaps.max(), 3)} mm; missing or duplicate slices?)")
    sideways = float(np.linalg.norm(steps - np.outer(gaps, normal), axis=1).max())
    if sideways > MAX_GAP_SPREAD * mean:
        raise PemmaError(f"{series.where}: slices are shifted {sideways:.3g} mm sideways from one to the next "
                         f"(gantry tilt); resample the series to an orthogonal grid first")


def read_series(series: DicomSeries) -> sitk.Image:
    """The series as a float32 SimpleITK image (CT in HU; PET in SUVbw from its tags, see :func:`suv_factor`).

    Raises:
        PemmaError: unreadable files, uneven slices, or (PET) a missing SUV tag; one line naming the series (or a
            damaged file of its folder: :attr:`DicomSeries.problem`).
    """
    import SimpleITK as sitk

    if series.problem:
        raise PemmaError(series.problem)
    headers = [_header(f) for f in series.files]
    _check_spacing(series, headers)
    factor = suv_factor(headers, series.where) if series.modality == "PT" else None  # a missing tag fails early
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), "unreadable")
        raise PemmaError(f"{series.where}: cannot read the pixel data ({reason.strip()[:200]})") from None
    if factor is not None:
        log.info(f"{series.where}: {factor.describe()}")
        image = sitk.Cast(image * factor.factor, sitk.sitkFloat32)
    return image


def nifti_affine(image: sitk.Image) -> np.ndarray:
    """The NIfTI (RAS) voxel-to-world affine of a SimpleITK (LPS) image; voxel (i, j, k) = SimpleITK (x, y, z)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def write_nifti(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write a SimpleITK image as NIfTI (voxel order x, y, z, RAS affine) atomically: int16 when every value is a
    whole number in its range (a CT in HU: two thirds of the float32 file, the same values), else float32."""
    import SimpleITK as sitk

    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    info = np.iinfo(np.int16)
    whole = array.size and info.min <= array.min() and array.max() <= info.max and np.all(np.rint(array) == array)
    dtype = np.int16 if whole else np.float32
    save_nifti(array.astype(dtype), nifti_affine(image), path, dtype=dtype)


def series_headers(series: DicomSeries, square: bool = True) -> tuple[list[Dataset], list[int]]:
    """The CT headers in rt-utils' slice order (ascending along the slice normal), checked for what its contour
    geometry assumes, and for each the index of its file in ``series.files``.

    Args:
        series: the image series.
        square: refuse non-square pixel spacing (rt-utils writes contours only for square pixels).
    """
    from rt_utils import image_helper

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    for ds in headers:
        for name in _TYPE2:
            if name not in ds:
                setattr(ds, name, "")
    row_gap, column_gap = (float(v) for v in headers[0].PixelSpacing)
    if square and abs(row_gap - column_gap) > 1e-6 * max(row_gap, column_gap):
        raise PemmaError(f"{series.where}: pixel spacing {row_gap:g} x {column_gap:g} mm is not square; "
                         f"rt-utils writes RTSTRUCT contours only for square pixels")
    order = sorted(range(len(headers)), key=lambda k: image_helper.get_slice_position(headers[k]))
    return [headers[k] for k in order], order
