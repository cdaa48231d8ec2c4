"""A DICOM tree as a dataset for every verb (``train``, ``adapt``, ``evaluate``, ``check``): each case is staged once
as NIfTI (CT in HU, PET in SUVbw, the label of its RTSTRUCT / DICOM-SEG on the CT grid) in a cache folder, and
:func:`pemma.data.layout.discover_cases` returns records pointing there, as for any NIfTI dataset.

The cache is ``$PEMMA_CACHE_DIR/dicom`` (default ``~/.cache/pemma/preprocessed/dicom``), one folder per case named
``<case>-<key>``; the key hashes the series UIDs, every file's path, size and modification time, the label file and
the ROI names, so a later run reuses the staged files (no pixel data read) and a changed file restages its case.
Staged folders are never removed by pemma; delete the folder to reclaim the space.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from pemma.data.case import CaseRecord
from pemma.data.dicom import DicomCase, dicom_cases, nifti_affine, read_series, write_nifti
from pemma.data.dicom_labels import LabelObject, find_label_objects, read_label
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, default_cache_dir, file_stamp, save_nifti
from pemma.vocab import parse_roi_names

log = logging.getLogger("pemma.dicom")

#: bump when what a staged case holds changes (older cache folders are then not reused)
STAGING_VERSION = 1
#: written last into a case's cache folder: its presence means the case is staged completely
MANIFEST = "staged.json"
_FILES = {"ct": "{case}__CT.nii.gz", "pet": "{case}__PT.nii.gz"}


def cache_folder() -> Path:
    """``<cache root>/dicom`` (``$PEMMA_CACHE_DIR`` or ``~/.cache/pemma/preprocessed``)."""
    return default_cache_dir("dicom")


def _key(case: DicomCase, label: LabelObject | None, roi_names: Mapping[str, tuple[str, ...]]) -> str:
    parts = {"version": STAGING_VERSION, "case": case.record.case_id, "rois": sorted(roi_names.items()),
             "series": {m: [s.uid, [file_stamp(f) for f in s.files]] for m, s in sorted(case.series.items())},
             "label": file_stamp(label.path) if label else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _labels_by_case(root: str | Path, cases: list[DicomCase]) -> dict[str, tuple[LabelObject, str]]:
    """Case ID -> the RTSTRUCT / SEG drawn on one of its series, and that series' modality (``ct``, ``pet``).

    A label drawn on the CT is preferred to one drawn on the PET (the other is logged as ignored). A label drawn
    on a series of the case other than the one chosen (the study's second CT reconstruction, a whole-body CT) makes
    that series the case's (:meth:`~pemma.data.dicom.DicomCase.use`), so the label and its images stay together.

    Raises:
        PemmaError: two label files on one series of a case (both named).
    """
    files = {f for c in cases for s in [*c.series.values(), *(a for v in c.alternatives.values() for a in v)]
             for f in s.files}
    by_series = {s.uid: (c.record.case_id, m) for c in cases for m, s in c.series.items()}
    by_alternative = {s.uid: (c, m) for c in cases for m, v in c.alternatives.items() for s in v}
    found: dict[str, tuple[LabelObject, str]] = {}
    for obj in find_label_objects(root, files):
        ref = obj.referenced_series
        cid, modality = by_series.get(ref, (None, ""))
        if cid is None and ref in by_alternative:  # drawn on another series of the case than the one chosen
            case, kind = by_alternative[ref]
            held = found.get(case.record.case_id)
            if held is not None and held[1] == kind:
                log.warning(f"{obj.path}: {obj.modality} ignored: drawn on another {kind.upper()} series of case "
                            f"{case.record.case_id} than {held[0].path}, which is used")
                continue
            previous = case.series[kind].uid
            case.use(kind, ref)  # the series the label is drawn on becomes the case's
            by_alternative[previous] = by_alternative.pop(ref)
            by_series.pop(previous, None)
            by_series[ref] = (case.record.case_id, kind)
            cid, modality = case.record.case_id, kind
        if cid is None:
            log.warning(f"{obj.path}: {obj.modality} ignored: it references series {obj.referenced_series or '?'}, "
                        f"which is not the CT or PET series of any case")
            continue
        if cid in found:
            other, other_modality = found[cid]
            if other_modality == modality:
                raise PemmaError(f"case {cid}: two label files on its {modality.upper()} series, {other.path} and "
                                 f"{obj.path}; keep one of them")
            ignored = obj if other_modality == "ct" else other
            log.info(f"case {cid}: {ignored.path} ignored (drawn on the PET series; the label drawn on the CT is used)")
            if other_modality == "ct":
                continue
        found[cid] = (obj, modality)
    return found


def discover_dicom(root: str | os.PathLike, roi_names: str | Mapping[str, object] | None = None,
                   progress: bool = True, failures: dict[str, str] | None = None) -> list[CaseRecord]:
    """The cases of a DICOM tree, staged as NIfTI in :func:`cache_folder` (only those not staged before).

    Args:
        root: a folder (tree) of DICOM CT / PET series with RTSTRUCT or DICOM-SEG files, or one DICOM file.
        roi_names: which ROI names are GTVp / GTVn (``"GTVp=GTV_primary,GTVn=GTV_LN+GTV_LN2"``); default the names
            of :mod:`pemma.data.dicom_labels`.
        progress: show a progress bar while staging.
        failures: when given, a case that cannot be staged (a :class:`PemmaError`) is recorded here
            (``{case_id: message}``) and left out; by default the first such case stops.

    Returns:
        One record per patient and study; ``label`` is None for a case without an RTSTRUCT / SEG on its CT.

    Raises:
        PemmaError: no series, unreadable series, a missing SUV tag, a label with no GTVp / GTVn ROI (the ROI
            names found are listed), two labels on one CT; one line naming the case or file.
    """
    try:
        overrides = parse_roi_names(roi_names)
    except ValueError as exc:
        raise PemmaError(f"--roi-names: {exc}") from None
    base = cache_folder()
    cases = dicom_cases(root, base)
    labels = _labels_by_case(root, cases)
    records, todo = [], []
    for case in cases:
        cid = case.record.case_id
        label = labels.get(cid)
        folder = base / f"{cid}-{_key(case, label[0] if label else None, overrides)}"
        record = CaseRecord(cid, case.record.centre,
                            {m: str(folder / _FILES[m].format(case=cid)) for m in case.series},
                            str(folder / "labelsTr" / f"{cid}.nii.gz") if label else None)
        records.append(record)
        if not (folder / MANIFEST).is_file():
            todo.append((case, label, folder, record))
    log.info(f"{root}: {len(cases)} DICOM case(s), {len(labels)} with an RTSTRUCT / SEG label; "
             f"{len(cases) - len(todo)} already staged in {base}")
    for case, label, folder, record in tqdm(todo, desc="staging DICOM", unit="case",
                                            disable=not progress or not todo):
        try:
            _stage(case, label, folder, record, overrides)
        except PemmaError as exc:
            if failures is None:
                raise
            failures[record.case_id] = str(exc)
    return [r for r in records if failures is None or r.case_id not in failures]


def _stage(case: DicomCase, label: tuple[LabelObject, str] | None, folder: Path, record: CaseRecord,
           roi_names: Mapping[str, tuple[str, ...]]) -> None:
    """Write a case's images (and label, on the CT grid; on the PET grid for a case without CT) into ``folder``,
    then its manifest."""
    images = {}
    for modality, series in case.series.items():
        images[modality] = read_series(series)
        write_nifti(images[modality], record.images[modality])
    if label is not None and record.label is not None:
        obj, drawn_on = label
        values = read_label(obj, case.series[drawn_on], record.case_id, dict(roi_names))
        reference = "ct" if "ct" in images else drawn_on
        if drawn_on != reference:
            values = _resample_label(values, images[drawn_on], images[reference])
            log.info(f"case {record.case_id}: {obj.path} is drawn on the {drawn_on.upper()} series; resampled "
                     f"(nearest neighbour) onto the CT grid")
        save_nifti(values, nifti_affine(images[reference]), record.label, dtype=np.uint8)
    manifest = {"case_id": record.case_id, "series": {m: s.uid for m, s in case.series.items()},
                "label": label[0].path if label else None, "version": STAGING_VERSION}
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))


def _resample_label(values: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """A label map (x, y, z) on ``grid``'s voxels, resampled by nearest neighbour onto ``target``'s (world
    coordinates; outside ``grid`` is background)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    moved = sitk.Resample(image, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved).transpose(2, 1, 0)


def convert_dicom(root: str | os.PathLike, out: str | os.PathLike,
                  roi_names: str | Mapping[str, object] | None = None, progress: bool = True,
                  force: bool = False) -> list[CaseRecord]:
    """Write the cases of a DICOM tree in the HECKTOR layout: ``out/imagesTr/<case>__CT.nii.gz``, ``__PT.nii.gz``
    and ``out/labelsTr/<case>.nii.gz`` (copied from the staging cache, each file atomically).

    Args:
        root: the DICOM tree (any folder layout; one case per patient and study).
        out: the dataset folder to write.
        roi_names: the RTSTRUCT / SEG names of GTVp and GTVn (``"GTVp=GTV_primary,GTVn=GTV_LN"``); default the
            usual names (:mod:`pemma.data.dicom_labels`).
        progress: show a progress bar. Default True.
        force: replace files of ``out`` that have a converted case's name, and remove the case's files this
            conversion does not write (a label or PET the case no longer has, which would else be paired with the
            new images); else an error before anything is written: a dataset of the same case IDs is not
            overwritten by accident. Default False.

    Returns:
        The records of the written cases (paths in ``out``).
    """
    plan = []
    for record in discover_dicom(root, roi_names, progress):
        images = {m: (p, Path(out) / "imagesTr" / Path(p).name) for m, p in record.images.items()}
        label = (record.label, Path(out) / "labelsTr" / Path(record.label).name) if record.label else None
        plan.append((record, images, label))
    targets = {t for _, images, label in plan for _, t in [*images.values(), *([label] if label else [])]}
    stale = [p for record, _, _ in plan for p in _case_files(Path(out), record.case_id) if p not in targets]
    existing = sorted(t for t in targets if t.exists()) + stale
    if existing and not force:
        raise PemmaError(f"{existing[0]}: exists ({len(existing)} file(s) of the converted cases are already in "
                         f"{out}); convert into another --out, or pass --force to replace them")
    written = []
    for record, images, label in plan:
        for source, target in [*images.values(), *([label] if label else [])]:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        written.append(CaseRecord(record.case_id, record.centre, {m: str(t) for m, (_, t) in images.items()},
                                  str(label[1]) if label else None))
    for path in stale:  # only with force: the case's files from an earlier conversion that this one has not
        path.unlink()
    return written


def _case_files(out: Path, case_id: str) -> list[Path]:
    """The files of ``case_id`` in a HECKTOR-layout ``out``: its images (``imagesTr/<case>__*``) and label."""
    name = glob.escape(case_id)
    return sorted([*(out / "imagesTr").glob(f"{name}__*.nii.gz"), *(out / "labelsTr").glob(f"{name}.nii.gz")])
