"""Intensity normalisation of a modality from its spec (:class:`pemma.modalities.ModalitySpec`).

``range`` is MONAI's ``ScaleIntensityRanged`` (clip to [low, high], scale to [0, 1]), the transform CT and PET have
always used; ``zscore`` / ``minmax`` (MR) clip to percentiles of the voxels inside the body and then z-score / scale
them, as nnU-Net normalises MR inside a mask: the intensities of MR have no physical unit, so a fixed window means
nothing, and the air around the patient would dominate statistics over the whole image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, ScaleIntensityRanged

from pemma.modalities import ModalitySpec


def body_mask(image: np.ndarray, ref: np.ndarray | None, threshold_hu: float) -> np.ndarray:
    """The voxels whose statistics normalise ``image``: the CT body (``ref > threshold_hu``) when a CT is given,
    else the voxels above ``image``'s minimum (the background of an MR is its darkest value)."""
    if ref is not None:
        mask = ref > threshold_hu
    else:
        mask = image > image.min()
    return mask if mask.any() else np.ones_like(image, dtype=bool)


def normalise_array(image: np.ndarray, spec: ModalitySpec, mask: np.ndarray | None) -> np.ndarray:
    """``image`` normalised per ``spec`` (``zscore`` / ``minmax``; statistics inside ``mask``, outside set to 0).

    Args:
        image: the voxels (any shape).
        spec: the modality's spec; its ``normalisation`` must be ``zscore`` or ``minmax``.
        mask: the body (same shape), or None for every voxel.

    Returns:
        float32 array of ``image``'s shape.
    """
    image = np.asarray(image, dtype=np.float64)
    inside = np.ones(image.shape, dtype=bool) if mask is None or not spec.body_only else np.asarray(mask, dtype=bool)
    values = image[inside]
    lo, hi = np.percentile(values, spec.percentiles)
    clipped = np.clip(image, lo, hi)
    if spec.normalisation == "zscore":
        kept = clipped[inside]
        std = float(kept.std())
        out = (clipped - float(kept.mean())) / (std if std > 0 else 1.0)
    elif spec.normalisation == "minmax":
        out = (clipped - lo) / (hi - lo if hi > lo else 1.0)
    else:
        raise ValueError(f"{spec.name}: normalise_array handles zscore / minmax, not {spec.normalisation!r}")
    out[~inside] = 0.0
    return out.astype(np.float32)


class NormaliseModalityd(MapTransform):
    """Normalise ``key`` per its spec: ``range`` as MONAI's ``ScaleIntensityRanged``; ``zscore`` / ``minmax`` inside
    the body of ``body_key`` (the CT, still in HU) when the item has it (see :func:`body_mask`).

    Args:
        key: the modality's key. spec: its spec. body_key: the CT key. threshold_hu: the CT's body threshold.
    """

    def __init__(self, key: str, spec: ModalitySpec, body_key: str = "ct", threshold_hu: float = -500.0) -> None:
        super().__init__([key], allow_missing_keys=True)
        self.spec, self.body_key, self.threshold = spec, body_key, threshold_hu
        self.scale = (ScaleIntensityRanged(key, *spec.range, 0.0, 1.0, clip=True)  # type: ignore[misc]
                      if spec.normalisation == "range" else None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.scale is not None:
            return dict(self.scale(d))
        for key in self.key_iterator(d):
            image = d[key]
            ref = d.get(self.body_key) if self.body_key != key else None
            channel = np.asarray(image[0], dtype=np.float64)
            mask = body_mask(channel, None if ref is None else np.asarray(ref[0]), self.threshold)
            out = image.clone()
            out[0] = torch.as_tensor(normalise_array(channel, self.spec, mask), dtype=out.dtype)
            d[key] = out
        return d
