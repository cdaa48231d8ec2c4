"""An MR-like channel of the phantom (``pemma synth --modalities ct,pet,mr``): T2-weighted soft-tissue contrast.

MR differs from CT in what a segmentation model must cope with, and the phantom reproduces those differences:

* **soft-tissue contrast**: fat bright, muscle darker than other soft tissue, bone and air dark (a T2-weighted
  look, read from the tissue each voxel was painted with, through its HU before any CT noise);
* **the tumour is visible**: GTVp and GTVn are hyperintense against muscle (their CT contrast is a few tens of HU;
  on T2 they stand out), with a heterogeneous texture;
* **no physical unit**: every case has its own arbitrary intensity scale;
* **a smooth multiplicative bias field** (coil sensitivity): ``exp(b * smooth noise)`` varying over centimetres;
* Rician-like noise (the magnitude of complex gaussian noise), and its own grid (spacing, offset).

Every draw comes from the case's own MR stream (a fifth child of its seed sequence), so a phantom with MR has the
CT, PET and labels of the phantom without it, byte for byte.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pemma.data.phantom_anatomy import smooth_noise

#: T2-like signal (arbitrary units, soft tissue ~0.45) as a function of the painted HU: air, fat, soft tissue,
#: muscle, dense soft tissue, cartilage / cancellous bone, cortical bone (interpolated between the knots)
T2_OF_HU: tuple[tuple[float, ...], tuple[float, ...]] = (
    (-1000.0, -500.0, -100.0, 0.0, 40.0, 52.0, 100.0, 320.0, 1300.0),
    (0.0, 0.05, 0.95, 0.55, 0.45, 0.32, 0.40, 0.25, 0.03),
)
#: tumour signal (GTVp, GTVn) drawn per case from these ranges: hyperintense against muscle (0.32)
TUMOUR_T2: dict[int, tuple[float, float]] = {1: (0.68, 0.82), 2: (0.62, 0.76)}
#: strength of the bias field (sd of its log) and its smoothness (mm)
BIAS_LOG_SD: tuple[float, float] = (0.15, 0.30)
BIAS_SMOOTH_MM = 40.0
#: per-case intensity scale (MR has no unit), noise sd relative to soft tissue, blur (mm FWHM-ish sigma)
SCALE_RANGE: tuple[float, float] = (400.0, 1600.0)
NOISE_SD = 0.025
BLUR_SIGMA_MM = 1.0
#: the MR grid: its voxel size (mm) and the largest offset of its centre from the CT's (mm per axis)
MR_SPACING_MM: tuple[float, float, float] = (2.5, 2.5, 3.5)
MR_MAX_OFFSET_MM = 3.0


def paint_mr(tissue_hu: np.ndarray, label: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The MR-like image on the CT grid (float32, arbitrary units, >= 0).

    Args:
        tissue_hu: the painted HU of every voxel (tissues and lesions, before CT blur, noise and calibration).
        label: the phantom's label on the same grid (1 GTVp, 2 GTVn).
        spacing: voxel size (mm) of the grid.
        rng: the case's MR stream.
    """
    signal = np.interp(tissue_hu, *T2_OF_HU).astype(np.float32)
    for value, (lo, hi) in TUMOUR_T2.items():
        inside = label == value
        if inside.any():
            level = rng.uniform(lo, hi)
            texture = 1.0 + 0.08 * smooth_noise(rng, label.shape, 1.0)
            signal[inside] = (level * texture)[inside]
        else:
            rng.uniform(lo, hi)  # the same number of draws whatever the case holds
            smooth_noise(rng, label.shape, 1.0)
    signal = ndimage.gaussian_filter(signal, BLUR_SIGMA_MM / spacing, mode="nearest")
    field = smooth_noise(rng, label.shape, BIAS_SMOOTH_MM / spacing)
    field = (field - field.mean()) / (field.std() + 1e-6)  # a field smoother than the grid is nearly constant
    bias = np.exp(rng.uniform(*BIAS_LOG_SD) * field)
    real = signal * bias + NOISE_SD * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = NOISE_SD * rng.standard_normal(signal.shape, dtype=np.float32)
    magnitude = np.sqrt(real**2 + imag**2)
    return (rng.uniform(*SCALE_RANGE) * magnitude).astype(np.float32)
