"""Ground truth from DICOM: an RTSTRUCT (rasterised with rt-utils) or a DICOM-SEG (read with highdicom) drawn on a
case's CT (or PET) series, as a label map on that series' grid with pemma's values (GTVp 1, GTVn 2); staging
(:mod:`pemma.data.dicom_stage`) brings a PET-drawn one onto the CT grid.

ROIs (RTSTRUCT) and segments (SEG) are mapped to pemma's classes by name. Default names, compared case-insensitively
with spaces, ``_`` and ``-`` removed and trailing digits dropped (``GTVn_2`` is ``gtvn``): the names a
``dataset.json`` may give (:data:`pemma.data.labels.LABEL_NAME_VALUES`): ``GTVp``, ``GTV_T``, ``GTVt``,
``GTV_primary``, ``primary``, ``tumour`` -> GTVp; ``GTVn``, ``GTV_LN``, ``GTV_node(s)``, ``lymph node(s)`` -> GTVn.
Numbered names such as ``GTV-1`` are not guessed. ``roi_names`` (``GTVp=GTV_primary,GTVn=GTV_LN+GTV_LN_R``) replaces
the default names of the classes it names (exact names, case-insensitive). Several ROIs of one class are merged;
where a GTVp and a GTVn ROI overlap, GTVp wins. Other ROIs (BODY, organs) are logged and ignored.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from pemma.data.dicom import DicomSeries, series_headers
from pemma.data.labels import LABEL_NAME_VALUES
from pemma.errors import PemmaError
from pemma.vocab import LABELS, TUMOUR_CLASSES, RoiNames

log = logging.getLogger("pemma.dicom")

#: DICOM modalities that carry a label (structure set, segmentation)
LABEL_MODALITIES = ("RTSTRUCT", "SEG")


def roi_value(name: str, overrides: RoiNames) -> int | None:
    """pemma's label value for an ROI / segment name (None: not a tumour class), see the module docstring."""
    lower = name.strip().lower()
    for cls, names in overrides.items():
        if lower in names:
            return LABELS[cls]
    key = re.sub(r"\d+$", "", re.sub(r"[\s_\-]+", "", lower))
    value = LABEL_NAME_VALUES.get(key)
    if not value:
        return None
    cls = next(c for c in TUMOUR_CLASSES if LABELS[c] == value)
    return None if cls in overrides else value  # a class the user named takes only the names given


@dataclass(frozen=True)
class LabelObject:
    """An RTSTRUCT or DICOM-SEG file and the image series it is drawn on."""

    path: str
    modality: str
    referenced_series: str
    patient_id: str


def _referenced_series(ds: pydicom.Dataset) -> str:
    """The SeriesInstanceUID an RTSTRUCT (through its referenced frame of reference) or SEG references."""
    try:
        if ds.Modality == "RTSTRUCT":
            frame = ds.ReferencedFrameOfReferenceSequence[0]
            return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        return ""


def find_label_objects(root: str | Path, image_files: set[str]) -> list[LabelObject]:
    """The RTSTRUCT and SEG files under ``root`` (the files of image series, ``image_files``, are not opened)."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    found = []
    for path in paths:
        if str(path) in image_files or path.name.startswith(".") or not pydicom.misc.is_dicom(str(path)):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - a damaged non-image file is not a label
            continue
        if str(ds.get("Modality", "")) not in LABEL_MODALITIES:
            continue
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        found.append(LabelObject(str(path), str(ds.Modality), _referenced_series(ds), str(ds.get("PatientID", ""))))
    return found


def read_label(obj: LabelObject, series: DicomSeries, case_id: str, roi_names: RoiNames) -> np.ndarray:
    """The label map (uint8, indexed column, row, slice in ``series.files`` order: the staged CT's voxel order) of an
    RTSTRUCT / SEG drawn on ``series``.

    Raises:
        PemmaError: no ROI / segment maps to GTVp or GTVn (the names found are listed), or the file cannot be read.
    """
    rois = _rtstruct_masks(obj, series) if obj.modality == "RTSTRUCT" else _seg_masks(obj, series)
    label = np.zeros(_grid(series), np.uint8)
    used: dict[str, list[str]] = {}
    for value in sorted((LABELS[c] for c in TUMOUR_CLASSES), reverse=True):  # GTVn first: GTVp wins overlaps
        for name, mask in rois.items():
            if roi_value(name, roi_names) == value:
                label[mask()] = value
                used.setdefault(next(c for c in TUMOUR_CLASSES if LABELS[c] == value), []).append(name)
    ignored = [n for n in rois if roi_value(n, roi_names) is None]
    tumour_like = [n for n in ignored if re.sub(r"[\s_\-]+", "", n.lower()).startswith("gtv")]
    if used and tumour_like:  # e.g. GTVn_L / GTVn_R beside a GTVp: background in training, unless named
        warnings.warn(f"case {case_id}: {obj.path}: ROI(s) {', '.join(tumour_like)} look like tumour volumes but "
                      "map to neither GTVp nor GTVn, so they are background in the label; name them with "
                      f"--roi-names (e.g. GTVn={'+'.join(tumour_like)})", UserWarning, stacklevel=2)
    if not used:
        raise PemmaError(f"case {case_id}: {obj.path}: no {obj.modality} ROI names GTVp or GTVn (ROIs found: "
                         f"{', '.join(rois) or 'none'}); name them with --roi-names GTVp=NAME,GTVn=NAME")
    log.info(f"case {case_id}: label from {obj.path}: " + "; ".join(f"{c} = {' + '.join(n)}" for c, n in
                                                                   sorted(used.items())) +
             (f"; ignored ROIs {', '.join(ignored)}" if ignored else ""))
    return label


def _grid(series: DicomSeries) -> tuple[int, int, int]:
    head = pydicom.dcmread(series.files[0], stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    return int(head.Columns), int(head.Rows), len(series.files)


def _rtstruct_masks(obj: LabelObject, series: DicomSeries) -> dict[str, Callable[[], np.ndarray]]:
    """ROI name -> a function giving its mask on the series grid (rasterised by rt-utils when called). Several ROIs
    of one name (two nodes both named "GTVn") are merged; an ROI without contours (no ``ContourSequence``: an
    empty planned ROI, a type 3 attribute) is an empty mask."""
    from rt_utils import RTStruct
    from rt_utils.image_helper import create_series_mask_from_contour_sequence

    headers, order = series_headers(series, square=False)
    if int(headers[0].Rows) != int(headers[0].Columns):
        raise PemmaError(f"{obj.path}: {series.where} has {headers[0].Rows} x {headers[0].Columns} pixels; rt-utils "
                         f"rasterises RTSTRUCT contours only on square slices")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            rt = RTStruct(headers, pydicom.dcmread(obj.path))
        names = rt.get_roi_names()
    except Exception as exc:  # noqa: BLE001 - pydicom / rt-utils raise many types on damaged files
        raise PemmaError(f"{obj.path}: cannot read the RTSTRUCT ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    inverse = np.argsort(order)  # rt-utils slice i is our slice order[i]
    numbers: dict[str, list[str]] = {}
    for roi in rt.ds.StructureSetROISequence:
        numbers.setdefault(str(roi.ROIName), []).append(str(roi.ROINumber))
    contours = {str(c.ReferencedROINumber): c for c in getattr(rt.ds, "ROIContourSequence", [])}

    def mask_of(name: str) -> Callable[[], np.ndarray]:
        def mask() -> np.ndarray:
            rows_cols = np.zeros((int(headers[0].Rows), int(headers[0].Columns), len(headers)), bool)
            for number in numbers.get(name, []):
                sequence = getattr(contours.get(number), "ContourSequence", None)
                if not sequence:
                    log.info(f"{obj.path}: ROI {name} (number {number}) has no contours: an empty mask")
                    continue
                try:  # (row, column, slice ascending along the normal)
                    rows_cols |= create_series_mask_from_contour_sequence(rt.series_data, sequence).astype(bool)
                except Exception as exc:  # noqa: BLE001
                    raise PemmaError(f"{obj.path}: cannot rasterise ROI {name} ({exc})") from None
            return np.transpose(rows_cols, (1, 0, 2))[:, :, inverse]
        return mask

    return {str(n): mask_of(str(n)) for n in dict.fromkeys(names)}


def _seg_masks(obj: LabelObject, series: DicomSeries) -> dict[str, Callable[[], np.ndarray]]:
    """Segment label -> a function giving its mask on the series grid (read with highdicom)."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(obj.path)
    except Exception as exc:  # noqa: BLE001
        raise PemmaError(f"{obj.path}: cannot read the DICOM-SEG ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for f in series.files]

    def mask_of(number: int) -> Callable[[], np.ndarray]:
        def mask() -> np.ndarray:
            try:
                pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number], combine_segments=True,
                                                           assert_missing_frames_are_empty=True)
            except Exception as exc:  # noqa: BLE001
                raise PemmaError(f"{obj.path}: cannot read segment {number} on {series.where} ({exc})") from None
            # (slice, row, column) -> (column, row, slice); a FRACTIONAL segment is read as 0..1: half or more is in
            return np.transpose(pixels >= 0.5, (2, 1, 0))
        return mask

    by_label: dict[str, list[int]] = {}
    for number in seg.segment_numbers:  # several segments of one label are merged, as ROIs of one name are
        by_label.setdefault(str(seg.get_segment_description(number).segment_label), []).append(number)

    def merged(numbers: list[int]) -> Callable[[], np.ndarray]:
        return lambda: np.logical_or.reduce([mask_of(n)() for n in numbers])

    return {label: merged(numbers) for label, numbers in by_label.items()}
