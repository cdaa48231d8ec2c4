"""The loader's rule for "does the PET cover the CT", in one place and without torch (``pemma check`` and the
MONAI pipeline of :mod:`pemma.data.transforms` both apply it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the least share of the CT box (voxel centres, world space) a PET must cover; less is "not co-registered?"
MIN_PET_OVERLAP = 0.5


def affine_world_box(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(2, 3) min / max world coordinates (mm) of the voxel centres of a grid.

    Args:
        affine: its voxel-to-world affine (4 x 4).
        shape: its spatial shape (the first three values are used).
    """
    shape = np.asarray(shape[:3])
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    affine = np.asarray(affine, dtype=np.float64)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def covered_fraction(ref: np.ndarray, other: np.ndarray) -> float:
    """Share of the box ``ref`` that the box ``other`` covers (both (2, 3) min / max, see :func:`affine_world_box`)."""
    inter = np.clip(np.minimum(ref[1], other[1]) - np.maximum(ref[0], other[0]), 0, None)
    return float(np.prod(inter) / max(float(np.prod(ref[1] - ref[0])), 1e-6))


def pet_overlap_problem(case_id: str, ct_affine: np.ndarray, ct_shape: Sequence[int], pet_affine: np.ndarray,
                        pet_shape: Sequence[int], pet_path: object, what: str = "PET",
                        min_fraction: float = MIN_PET_OVERLAP) -> str | None:
    """The one-line problem of a PET covering less than ``min_fraction`` of the CT box, or None when it covers enough.

    Args:
        case_id: the case (named in the line). ct_affine, ct_shape: the CT (reference) grid.
        pet_affine, pet_shape: the PET grid. pet_path: the PET file (named in the line).
        what: the image's name in the line. Default ``PET``. min_fraction: the least share. Default 0.5.
    """
    fraction = covered_fraction(affine_world_box(ct_affine, ct_shape), affine_world_box(pet_affine, pet_shape))
    if fraction >= min_fraction:
        return None
    return (f"case {case_id}: {what} covers only {100 * fraction:.0f}% of the CT field of view in physical space "
            f"(not co-registered?) ({pet_path})")
