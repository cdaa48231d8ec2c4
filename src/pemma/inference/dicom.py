"""``pemma predict`` on DICOM: each case is staged (its CT / PET series read into NIfTI), predicted on the CT grid,
written as ``<case>.nii.gz`` and, when asked, as ``<case>_RTSTRUCT.dcm`` referencing the CT series; the staged
files are removed after each case."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pemma.data.dicom import DicomCase
from pemma.errors import PemmaError, record_case_failure
from pemma.inference.predict import WindowSettings, interrupted, output_reference, predict_case
from pemma.inference.rtstruct import write_rtstruct
from pemma.io_utils import save_nifti
from pemma.models.loaded import LoadedModel

log = logging.getLogger("pemma.dicom")

#: file name of a case's RTSTRUCT, beside its ``<case>.nii.gz``
RTSTRUCT_NAME = "{case_id}_RTSTRUCT.dcm"


def predict_dicom_cases(model: LoadedModel, cases: Sequence[DicomCase], modalities: Sequence[str],
                        out_dir: str | Path, device: torch.device, window: WindowSettings | None = None,
                        rtstruct: bool = False, progress: bool = True,
                        failures: dict[str, str] | None = None, reference: str = "ct") -> list[Path]:
    """Predict every DICOM case; write ``out_dir/<case_id>.nii.gz`` (on the CT grid; input without CT on the CT
    grid when the case has a CT series, as HECKTOR scores, else or with ``reference="pet"`` on its own) and with
    ``rtstruct`` ``out_dir/<case_id>_RTSTRUCT.dcm``.

    Args:
        model: the loaded model.
        cases: from :func:`pemma.data.dicom.dicom_cases` (their staging folder must exist).
        modalities: the input set, e.g. ``["ct", "pet"]``.
        out_dir: output folder.
        device: torch device.
        window: sliding-window settings. Default: as trained.
        rtstruct: also write an RTSTRUCT per case referencing its CT series (needs a CT series).
        progress: show a progress bar.
        failures: when given, a bad case (a :class:`PemmaError`) is recorded here (``{case_id: message}``) and
            the others are still predicted; by default the first bad case stops.
        reference: the grid of predictions without CT input (:func:`~pemma.inference.predict.output_reference`):
            ``ct`` (default; the CT series is then read for its geometry) or ``pet``.

    Returns:
        The label NIfTI files written.

    Raises:
        PemmaError: ``rtstruct`` without the CT among ``modalities``; a bad case (unless ``failures`` is given).
    """
    if rtstruct and "ct" not in modalities:
        raise PemmaError(f"--rtstruct needs the CT among the inputs (the RTSTRUCT is drawn on the CT series), got "
                         f"{'+'.join(modalities)}")
    out_dir = Path(out_dir)
    written: list[Path] = []
    try:
        for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
            _predict_one(model, case, modalities, out_dir, device, window, rtstruct, failures, reference, written)
    except KeyboardInterrupt:
        raise interrupted(out_dir, written, [c.record.case_id for c in cases]) from None
    return written


def _predict_one(model: LoadedModel, case: DicomCase, modalities: Sequence[str], out_dir: Path, device: torch.device,
                 window: WindowSettings | None, rtstruct: bool, failures: dict[str, str] | None, reference: str,
                 written: list[Path]) -> None:
    """One case of :func:`predict_dicom_cases`: staged, predicted, written (label map, then RTSTRUCT: each file
    atomically), unstaged; its label map is appended to ``written``."""
    cid = case.record.case_id
    try:
        if rtstruct and "ct" not in case.series:
            raise PemmaError(f"case {cid}: no CT series, so no RTSTRUCT (it references the CT series)")
        # the output grid's series is read too (a PET-only prediction is written on the CT grid)
        ref_key = output_reference(case.record, modalities, reference)
        case.stage([*modalities, *([ref_key] if ref_key not in modalities else [])])
        label, ref_img = predict_case(model, case.record, modalities, device, window, reference=reference)
        path = out_dir / f"{cid}.nii.gz"
        save_nifti(label, ref_img.affine, path, header=ref_img.header, dtype=np.uint8)
        written.append(path)
        if rtstruct:
            rt_path = out_dir / RTSTRUCT_NAME.format(case_id=cid)
            rois = write_rtstruct(label, case.series["ct"], rt_path)
            log.info(f"case {cid}: RTSTRUCT {rt_path} with ROIs {', '.join(rois) or 'none'}")
    except Exception as exc:  # a bad input raised inside MONAI's transforms arrives wrapped
        record_case_failure(failures, cid, exc)
    finally:
        case.unstage()
