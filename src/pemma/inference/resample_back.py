"""Probabilities on the network's (preprocessed) grid -> a uint8 label map on the reference image grid.

The network only sees the head-and-neck crop resampled to the training spacing; everything of the reference grid
(e.g. a 512 x 512 x 200 CT) outside that crop gets probability zero for every class, hence label 0 (background).
:func:`labels_on_reference` therefore resamples and argmaxes only the reference voxels that can receive a non-zero
value (the crop box), and leaves the rest at 0: the same labels as resampling every class onto the whole reference
grid in float32, for a fraction of the time and memory.

Identical, not just close: resampling a smaller grid with MONAI would normalise the sampling coordinates to the
box's own size, which rounds differently in float32 and flips the argmax of the odd near-tie voxel (1-3 voxels per
512 x 512 x 25-100 CT with a random network). So the box is sampled with exactly the grid MONAI's
``SpatialResample`` builds for the whole reference (same float32 normalised transform, same base coordinates, the
box's rows of them) and ``grid_sample`` on those coordinates; the tests compare it with the whole-grid MONAI call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.utils import to_norm_affine
from monai.transforms import SpatialResample
from monai.transforms.spatial import functional as monai_spatial
from torch.nn import functional as F  # noqa: N812

from pemma.inference.sliding import labels_of

#: voxels of margin kept around the box (bilinear support reaches one source voxel beyond the grid; one more
#: reference voxel absorbs rounding of the corner mapping)
BOX_MARGIN = 2


def reference_box(src_affine: np.ndarray, src_shape: Sequence[int], ref_affine: np.ndarray,
                  ref_shape: Sequence[int], margin: int = BOX_MARGIN) -> tuple[list[int], list[int]] | None:
    """The reference voxels that bilinear resampling of a source grid (zero padding) can reach.

    A reference voxel gets a non-zero value only if it maps inside ``(-1, n)`` source voxels on every axis; the box
    is the bounding box of the mapped corners of that region, widened by ``margin`` and clipped to the grid.

    Args:
        src_affine: 4 x 4 voxel-to-world affine of the source (preprocessed) grid.
        src_shape: its spatial shape.
        ref_affine: 4 x 4 affine of the reference grid.
        ref_shape: its spatial shape.
        margin: extra reference voxels on every side.

    Returns:
        ``(start, end)`` voxel indices (end exclusive), or ``None`` when the source lies outside the reference grid.
    """
    src_affine = np.asarray(src_affine, dtype=np.float64)
    ref_affine = np.asarray(ref_affine, dtype=np.float64)
    shape = np.asarray(src_shape[:3], dtype=np.float64)
    corners = np.array(np.meshgrid(*[[-1.0, n] for n in shape], indexing="ij")).reshape(3, -1)
    to_ref = np.linalg.solve(ref_affine, src_affine)
    ijk = to_ref[:3, :3] @ corners + to_ref[:3, 3:4]
    ref = np.asarray(ref_shape[:3])
    start = np.clip(np.floor(ijk.min(axis=1)).astype(int) - margin, 0, ref)
    end = np.clip(np.ceil(ijk.max(axis=1)).astype(int) + margin + 1, 0, ref)
    if np.any(end <= start):
        return None
    return start.tolist(), end.tolist()


def _shifted_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """The affine of the sub-grid of ``affine`` whose voxel 0 is voxel ``start`` of the full grid."""
    shifted = np.asarray(affine, dtype=np.float64).copy()
    shifted[:3, 3] = shifted[:3, :3] @ np.asarray(start, dtype=np.float64) + shifted[:3, 3]
    return shifted


def labels_on_reference(probs: MetaTensor, ref_affine: np.ndarray, ref_shape: Sequence[int],
                        crop_box: bool = True) -> np.ndarray:
    """Resample ``(K, D, H, W)`` probabilities (bilinear, zeros outside) onto the reference grid and argmax.

    Args:
        probs: class probabilities on the preprocessed grid (its ``affine`` places it in world space).
        ref_affine: 4 x 4 affine of the reference image (the output grid).
        ref_shape: spatial shape of the reference image.
        crop_box: resample only the box the probabilities can reach (default); ``False`` resamples every class
            onto the whole reference grid (the former way, kept for comparison and benchmarks).

    Returns:
        uint8 labels of shape ``ref_shape`` (0 outside the box).
    """
    ref_shape = [int(s) for s in ref_shape[:3]]
    ref_affine = np.asarray(ref_affine, dtype=np.float64)
    if not crop_box:
        resample = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
        on_ref = resample(probs, dst_affine=torch.as_tensor(ref_affine), spatial_size=ref_shape)
        return labels_of(on_ref.as_tensor()).numpy()
    label = np.zeros(ref_shape, dtype=np.uint8)
    box = reference_box(np.asarray(probs.affine), probs.shape[1:], ref_affine, ref_shape)
    if box is None:
        return label
    start, end = box
    on_box = probs_on_box(probs, ref_affine, ref_shape, start, end)
    label[start[0]:end[0], start[1]:end[1], start[2]:end[2]] = labels_of(on_box).numpy()
    return label


def probs_on_box(probs: MetaTensor, ref_affine: np.ndarray, ref_shape: Sequence[int], start: Sequence[int],
                 end: Sequence[int]) -> torch.Tensor:
    """The (K, *box) float32 values that resampling ``probs`` onto the whole reference grid gives in the box
    ``start:end`` (bit-identical; with MONAI's compiled resampler, which builds its grid otherwise, the box is
    resampled by MONAI as a grid of its own and may differ in the last bit)."""
    if monai_spatial.USE_COMPILED:
        size = [e - s for s, e in zip(start, end, strict=True)]
        resample = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
        return resample(probs, dst_affine=torch.as_tensor(_shifted_affine(ref_affine, start)),
                        spatial_size=size).as_tensor()
    return _resample_box(probs, ref_affine, ref_shape, start, end)


def _base_coordinates(size: int, start: int, end: int) -> torch.Tensor:
    """``affine_grid``'s normalised voxel-centre coordinates of an axis of ``size`` (align_corners=False), the
    entries ``start:end``, computed with the same float32 operations as torch."""
    full = torch.linspace(-1, 1, size, dtype=torch.float32)
    full = full * (size - 1) / size
    return full[start:end]


def _resample_box(probs: MetaTensor, ref_affine: np.ndarray, ref_shape: Sequence[int], start: Sequence[int],
                  end: Sequence[int]) -> torch.Tensor:
    """Bilinear, zero-padded values of ``probs`` at the reference voxels ``start:end``, bit-identical to those of
    MONAI's ``SpatialResample`` onto the whole reference grid (the transform MONAI builds for the whole grid, its
    sampling coordinates for the box only).

    Args:
        probs: (K, D, H, W) probabilities with their affine.
        ref_affine: 4 x 4 affine of the whole reference grid.
        ref_shape: its spatial shape.
        start: first reference voxel of the box. end: one past the last.

    Returns:
        (K, *box) float32 tensor.
    """
    src = probs.as_tensor().to(torch.float32)
    xform = np.linalg.solve(np.asarray(probs.affine, dtype=np.float64), ref_affine)  # as MONAI's spatial_resample
    theta = torch.as_tensor(xform, dtype=torch.float64).to(torch.float32)[None]
    theta = to_norm_affine(theta, src_size=src.shape[1:], dst_size=ref_shape, align_corners=False,
                           zero_centered=False)
    rev = torch.as_tensor([2, 1, 0])  # MONAI's reverse_indexing: torch grids are (x, y, z) = (W, H, D)
    theta[:, :3] = theta[:, rev]
    theta[:, :, :3] = theta[:, :, rev]
    axes = [_base_coordinates(n, s, e) for n, s, e in zip(ref_shape, start, end, strict=True)]
    d, h, w = (len(a) for a in axes)
    base = torch.ones((1, d, h, w, 4), dtype=torch.float32)
    base[..., 0] = axes[2].view(1, 1, w)
    base[..., 1] = axes[1].view(1, h, 1)
    base[..., 2] = axes[0].view(d, 1, 1)
    grid = base.view(1, d * h * w, 4).bmm(theta[:, :3].transpose(1, 2)).view(1, d, h, w, 3)
    del base
    return F.grid_sample(src[None].contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
