"""Is a CT in Hounsfield units and a PET in SUV? Cheap checks on the voxels of one image.

A file of the wrong kind is a common slip with real folders: a tumour mask left among the CTs of a folder to predict
(taken as a CT-only case), a CT given as the PET (or the two swapped), an image already normalised to [0, 1]. Each
would be read without complaint and give a meaningless prediction. :func:`intensity_problem` names such a file (the
loader and ``pemma check`` refuse it); :func:`intensity_warnings` names what is unusual but may be right, or is
wrong in a way a file cannot prove (a PET in Bq/mL, a CT without its rescale intercept; ``pemma check`` only).

The statistics are taken on at most :data:`SAMPLE_VOXELS` voxels (an even stride through the volume), so a check
costs milliseconds on a 512 x 512 x 300 CT.
"""

from __future__ import annotations

import numpy as np

#: a CT whose voxels span less than this many HU is not a CT in HU (a mask, a normalised image)
MIN_CT_SPAN_HU = 100.0
#: a PET whose median voxel lies below this is not in SUV: a CT in HU (air fills most of a head-and-neck field of
#: view; a PET's background is near 0 SUV, and padding of a constant negative fill moves the median only when it
#: covers half the volume)
PET_MAX_MEDIAN = -100.0
#: PET voxels below this (SUV) are more than reconstruction noise: worth a warning
PET_NOISE_FLOOR = -1.0
#: a PET whose 99.9th percentile exceeds this is not in SUV (tumour SUVmax rarely exceeds 50): Bq/mL?
PET_MAX_SUV = 100.0
#: the statistics read at most this many voxels
SAMPLE_VOXELS = 1 << 20

#: the modalities whose units are checked (MR, dose and declared modalities have any scale)
CHECKED: tuple[str, ...] = ("ct", "pet")


def _sample(voxels: np.ndarray) -> np.ndarray:
    """At most :data:`SAMPLE_VOXELS` voxels of ``voxels``, every k-th in memory order, as float64."""
    flat = np.asarray(voxels).reshape(-1)
    return flat[:: max(1, flat.size // SAMPLE_VOXELS)].astype(np.float64)


def intensity_problem(modality: str, voxels: np.ndarray, path: str, case_id: str) -> str | None:
    """Why the voxels of ``path`` cannot be the ``modality`` image of a case, or None.

    * CT: voxels spanning less than :data:`MIN_CT_SPAN_HU` (a 0/1/2 mask, an image normalised to [0, 1]); a CT of
      one value everywhere is left to :func:`intensity_warnings` (an empty mask looks so, and so do test volumes).
    * PET: a median below :data:`PET_MAX_MEDIAN` (a CT in HU given as the PET, or the two files swapped).
    Other modalities (MR, dose) are not checked.

    Args:
        modality: ``ct``, ``pet`` (others: None).
        voxels: the image's voxels, any shape (D, H, W).
        path, case_id: named in the message.

    Example:
        >>> intensity_problem("ct", np.array([0, 1, 2]), "p001_mask.nii.gz", "p001")
        'p001_mask.nii.gz: CT of case p001 has voxels from 0 to 2 only: not a CT in Hounsfield units (a mask? an ...'
    """
    if modality not in CHECKED or voxels.size == 0:
        return None
    what = f"{modality.upper()} of case {case_id}"
    if modality == "ct":
        low, high = float(np.min(voxels)), float(np.max(voxels))
        if 0 < high - low < MIN_CT_SPAN_HU:  # one value everywhere is a degenerate image, not a mask: a warning
            return (f"{path}: {what} has voxels from {low:g} to {high:g} only: not a CT in Hounsfield units (a mask? "
                    f"an image already normalised?); give the CT itself")
        return None
    median = float(np.median(_sample(voxels)))
    if median < PET_MAX_MEDIAN:
        return (f"{path}: {what} has its median voxel at {median:g}: not a PET in SUV (a CT in HU? are CT and PET "
                f"swapped?)")
    return None


def intensity_warnings(modality: str, voxels: np.ndarray, path: str, case_id: str) -> list[str]:
    """What is unusual about a plausible image: a CT of one value, a CT with no voxel below 0 HU (stored without
    its rescale intercept?), a PET below -1 SUV, a PET above 100 SUV (in Bq/mL?)."""
    if modality not in CHECKED or voxels.size == 0:
        return []
    what = f"{modality.upper()} of case {case_id}"
    low, high = float(np.min(voxels)), float(np.max(voxels))
    if modality == "ct":
        if low == high:
            return [f"{path}: {what} has the value {low:g} everywhere: an empty image (an empty mask?), not a CT scan"]
        if low >= 0:
            return [f"{path}: {what} has no voxel below 0 HU (min {low:g}): no air or fat in view; if it was stored "
                    f"without its rescale intercept, HU = value - 1024"]
        return []
    out = []
    if low < PET_NOISE_FLOOR:
        out.append(f"{path}: {what} has voxels down to {low:g} SUV; SUV is not negative beyond reconstruction noise "
                   f"(check the PET's units and scaling)")
    top = float(np.percentile(_sample(voxels), 99.9))
    if top > PET_MAX_SUV:
        out.append(f"{path}: {what} reaches {top:g} at its 99.9th percentile: not SUV (Bq/mL?); pemma's windows "
                   f"expect SUV (pemma convert-dicom computes it from the DICOM PET)")
    return out
