"""Shared by the registration tests: the known misalignment they apply and its per-axis error."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pemma.data.phantom_misalign import rigid_matrix


def misalignment(ct: nib.Nifti1Image) -> np.ndarray:
    """A 10 mm shift (6, 0, 8 mm) and a 5 degree rotation about z through the CT centre."""
    centre = ct.affine[:3, :3] @ ((np.asarray(ct.shape) - 1) / 2) + ct.affine[:3, 3]
    return rigid_matrix([6.0, 0.0, 8.0], [0.0, 0.0, 5.0], centre)


def errors(ct: nib.Nifti1Image, found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found(x) - truth(x)| per axis (mm) at 500 points spread over the CT box, shape (500, 3)."""
    idx = np.random.default_rng(0).uniform(0, np.asarray(ct.shape) - 1, (500, 3))
    points = idx @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    return np.abs(points @ found[:3, :3].T + found[:3, 3] - (points @ truth[:3, :3].T + truth[:3, 3]))
