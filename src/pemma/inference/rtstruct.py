"""RTSTRUCT out: a predicted label map as a DICOM RT Structure Set referencing the CT series it was predicted on.

Written with rt-utils (contours traced per CT slice from the mask); one ROI per tumour class (GTVp, GTVn), an empty
class is left out with a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
from rt_utils import RTStruct, ds_helper

from pemma.data.dicom import DicomSeries, series_headers
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path
from pemma.vocab import LABELS, TUMOUR_CLASSES

log = logging.getLogger("pemma.dicom")

#: display colours (RGB) of the ROIs
ROI_COLOURS: dict[str, list[int]] = {"GTVp": [255, 0, 0], "GTVn": [0, 0, 255]}


def write_rtstruct(label: np.ndarray, series: DicomSeries, path: str | os.PathLike,
                   classes: Mapping[str, int] | None = None, description: str = "pemma prediction") -> list[str]:
    """Write ``label`` as an RTSTRUCT referencing the CT ``series`` (atomically).

    Args:
        label: the label map on the series' grid, indexed (column, row, slice) with slices in the order of
            ``series.files`` (what :func:`pemma.data.dicom.read_series` reads and the NIfTI of ``predict`` holds).
        series: the CT series the label was predicted on.
        path: the ``.dcm`` file to write.
        classes: ROI name -> label value. Default GTVp = 1, GTVn = 2.
        description: the RTSTRUCT series description.

    Returns:
        The ROI names written (empty classes are skipped with a log line).

    Raises:
        PemmaError: the label does not match the series' grid, or the series has non-square pixels.
    """
    classes = dict(classes or {name: LABELS[name] for name in TUMOUR_CLASSES})
    headers, order = series_headers(series)
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    if tuple(label.shape) != (columns, rows, len(series.files)):
        raise PemmaError(f"{path}: label shape {tuple(label.shape)} does not match {series.where} "
                         f"({columns} x {rows} x {len(series.files)})")
    with _quiet_pydicom_deprecations():
        rtstruct = RTStruct(headers, ds_helper.create_rtstruct_dataset(headers))
    rtstruct.set_series_description(description)
    written = []
    for name, value in classes.items():
        # rt-utils slice i is our slice order[i]; its mask is (row, column, slice)
        mask = np.transpose(label[:, :, order] == value, (1, 0, 2))
        if not mask.any():
            log.info(f"{path}: no {name} voxels predicted; ROI {name} left out")
            continue
        rtstruct.add_roi(mask=np.ascontiguousarray(mask), name=name, color=ROI_COLOURS.get(name),
                         description=description, roi_generation_algorithm="AUTOMATIC")
        written.append(name)
    with atomic_path(path) as tmp, _quiet_pydicom_deprecations():
        rtstruct.ds.save_as(str(tmp))
    return written


@contextlib.contextmanager
def _quiet_pydicom_deprecations() -> Iterator[None]:
    """rt-utils sets the transfer syntax through attributes pydicom 3 deprecates (the file is the same); pydicom
    both warns and logs each use, which printed two lines per case under ``predict --rtstruct``."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*FileDataset.is_", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
