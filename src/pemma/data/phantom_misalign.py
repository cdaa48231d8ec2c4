"""A misaligned PET (or MR, or any modality) for registration tests and benchmarks: the same voxels under a header
moved by a known rigid transform (what an image that is not co-registered with its CT looks like to pemma)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from pemma.io_utils import load_nifti, save_nifti


def rigid_matrix(shift_mm: Sequence[float], degrees: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """4 x 4 world (RAS mm) transform: rotations about x, y, z (degrees, applied in that order) about ``centre``,
    then the shift.

    Args:
        shift_mm: (x, y, z) translation in mm. degrees: rotation angles about x, y and z. centre: rotation centre (mm).
    """
    ax, ay, az = (math.radians(float(d)) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    c = np.asarray(centre, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = c - rotation @ c + np.asarray(shift_mm, dtype=np.float64)
    return out


def random_misalignment(rng: np.random.Generator, centre: np.ndarray, shift_mm: float, degrees: float) -> np.ndarray:
    """A rigid world transform: ``shift_mm`` in a random direction and ``degrees`` about a random axis through
    ``centre`` (for :func:`misalign_image`).

    Args:
        rng: the draws. centre: rotation centre (mm). shift_mm: length of the shift. degrees: rotation angle.
    """
    direction = rng.normal(size=3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k  # Rodrigues
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = centre - rotation @ centre + shift_mm * direction / np.linalg.norm(direction)
    return out


def misalign_image(path: str | os.PathLike, out_path: str | os.PathLike, matrix: np.ndarray,
                   what: str = "PET") -> None:
    """Write ``path``'s voxels (a PET, an MR...) to ``out_path`` under the header ``matrix @ affine``.

    The anatomy a CT point ``x`` shows is then found in the header world of the new image at ``matrix @ x``: the
    transform a registration (CT fixed, this image moving) must recover is ``matrix``.

    Args:
        path: the co-registered image. out_path: the misaligned copy (may be ``path``).
        matrix: 4 x 4 world transform (e.g. :func:`rigid_matrix`). what: the modality, named in errors.
    """
    img: nib.Nifti1Image = load_nifti(path, what=what)
    data = np.asanyarray(img.dataobj)
    save_nifti(np.asarray(data), np.asarray(matrix, dtype=np.float64) @ img.affine, out_path, dtype=data.dtype)


def misalign_pet(pet_path: str | os.PathLike, out_path: str | os.PathLike, matrix: np.ndarray) -> None:
    """:func:`misalign_image` of a PET (the name before any modality could be misaligned)."""
    misalign_image(pet_path, out_path, matrix, what="PET")
