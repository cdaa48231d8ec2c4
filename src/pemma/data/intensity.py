"""Is a CT in Hounsfield units and a PET in SUV? Cheap checks on the voxels of one image.

A file of the wrong kind is a common slip with real folders: a tumour mask left among the CTs of a folder to predict
(taken as a CT-only case), a CT given as the PET (or the two swapped), an image already normalised to [0, 1]. Each
would be read without complaint and give a meaningless prediction. :func:`intensity_problem` names such a file
(the loader and ``pemma check`` refuse it); :func:`intensity_warning` names what is unusual but may be right (for
``pemma check`` only).
"""

from __future__ import annotations

import numpy as np

#: a CT whose voxels span less than this many HU is not a CT in HU (a mask, a normalised image)
MIN_CT_SPAN_HU = 100.0
#: a PET with more than :data:`MAX_NEGATIVE_SHARE` of its voxels below this value is not in SUV (a CT in HU?)
PET_NEGATIVE_LIMIT = -50.0
MAX_NEGATIVE_SHARE = 0.01
#: PET voxels below this (SUV) are more than reconstruction noise: worth a warning
PET_NOISE_FLOOR = -1.0

#: the modalities whose units are checked (MR, dose and declared modalities have any scale)
CHECKED: tuple[str, ...] = ("ct", "pet")


def intensity_problem(modality: str, voxels: np.ndarray, path: str, case_id: str) -> str | None:
    """Why the voxels of ``path`` cannot be the ``modality`` image of a case, or None.

    * CT: voxels spanning less than :data:`MIN_CT_SPAN_HU` (a 0/1/2 mask, an image normalised to [0, 1]); a CT of
      one value everywhere is left to :func:`intensity_warning` (an empty mask looks so, and so do test volumes).
    * PET: more than 1 % of the voxels below -50 (a CT in HU given as the PET, or the two files swapped).
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
    share = float(np.count_nonzero(voxels < PET_NEGATIVE_LIMIT)) / voxels.size
    if share > MAX_NEGATIVE_SHARE:
        return (f"{path}: {what} has {100 * share:.0f} % of its voxels below {PET_NEGATIVE_LIMIT:g} (min "
                f"{float(np.min(voxels)):g}): not a PET in SUV (a CT in HU? are CT and PET swapped?)")
    return None


def intensity_warning(modality: str, voxels: np.ndarray, path: str, case_id: str) -> str | None:
    """What is unusual about a plausible image (a CT of one value, a CT with no voxel below 0 HU, a PET below -1
    SUV), or None."""
    if modality not in CHECKED or voxels.size == 0:
        return None
    what = f"{modality.upper()} of case {case_id}"
    low = float(np.min(voxels))
    if modality == "ct" and low == float(np.max(voxels)):
        return f"{path}: {what} has the value {low:g} everywhere: an empty image (an empty mask?), not a CT scan"
    if modality == "ct" and low >= 0:
        return (f"{path}: {what} has no voxel below 0 HU (min {low:g}): no air or fat in view; if it was stored "
                f"without its rescale intercept, HU = value - 1024")
    if modality == "pet" and low < PET_NOISE_FLOOR:
        return (f"{path}: {what} has voxels down to {low:g} SUV; SUV is not negative beyond reconstruction noise "
                f"(check the PET's units and scaling)")
    return None
