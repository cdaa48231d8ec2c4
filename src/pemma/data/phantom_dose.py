"""A planned RT dose of the phantom (``pemma synth --modalities ct,pet,dose``): Gy on the CT grid.

What a head-and-neck plan from the treatment-planning system looks like to a segmentation model, in the simplest
form that keeps its character:

* **high dose** (``HIGH_GY``, about 70 Gy) over the gross tumour volumes (GTVp and GTVn) grown by ``HIGH_MARGIN_MM``
  (a PTV-like margin);
* **elective dose** (``ELECTIVE_GY``, about 54 Gy) over the tumours grown by ``ELECTIVE_MARGIN_MM`` (the elective
  region around them);
* a **smooth fall-off**: the two levels blurred by ``FALLOFF_MM`` (the penumbra), with a low-dose bath
  (``BATH_SHARE`` of the levels blurred by ``BATH_MM``) around them;
* **0 Gy outside the body**; computed on the planning CT, so on the CT grid (the ``dose`` modality declares no
  registration, :class:`pemma.modalities.ModalitySpec`).

The dose is a function of the label and the body alone (no random draw), so a phantom with dose has the CT, PET,
MR and labels of the phantom without it, byte for byte. It reveals where the tumours are, by construction, as a
plan drawn on them does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: prescriptions (Gy): the high-dose volume around the tumours and the elective region
HIGH_GY = 70.0
ELECTIVE_GY = 54.0
#: margins (mm) of the high-dose volume and of the elective region around GTVp and GTVn
HIGH_MARGIN_MM = 5.0
ELECTIVE_MARGIN_MM = 20.0
#: penumbra (gaussian sigma, mm) and the low-dose bath (its share of the levels, its sigma in mm)
FALLOFF_MM = 4.0
BATH_SHARE = 0.35
BATH_MM = 15.0


def paint_dose(label: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The planned dose (float32 Gy, >= 0, 0 outside ``body``) on the grid of ``label``.

    Args:
        label: the phantom's label (1 GTVp, 2 GTVn) on the CT grid. body: the body mask on the same grid.
        spacing: voxel size (mm) of the grid.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    tumour = np.asarray(label) > 0
    if not tumour.any():
        return np.zeros(label.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    levels = np.where(distance <= HIGH_MARGIN_MM, HIGH_GY, np.where(distance <= ELECTIVE_MARGIN_MM, ELECTIVE_GY, 0.0))
    dose = np.maximum(ndimage.gaussian_filter(levels, FALLOFF_MM / spacing, mode="constant"),
                      BATH_SHARE * ndimage.gaussian_filter(levels, BATH_MM / spacing, mode="constant"))
    return (dose * np.asarray(body, dtype=bool)).astype(np.float32)
