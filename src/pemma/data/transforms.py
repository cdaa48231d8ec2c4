"""MONAI transform pipelines: the CT to RAS + target spacing and its head-and-neck crop, PET and label resampled
once onto that crop, per-modality intensity scaling, and label-balanced random crops.

Keys: ``ct``, ``pet`` (and any other modality's name), ``label`` (each channel-first), and after
:func:`preprocessing` ``image`` = the requested modalities concatenated in the fixed channel order ([CT, PET], then
other modalities in their registry order, :mod:`pemma.modalities`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    MapTransform,
    Orientationd,
    RandCropByLabelClassesd,
    RandFlipd,
    ResampleToMatchd,
    Spacingd,
    SpatialCrop,
    SpatialPadd,
)

from pemma.config import PreprocessConfig
from pemma.data.intensity import intensity_problem
from pemma.data.labels import LABEL_MAP_KEY, to_pemma_labels
from pemma.data.normalise import NormaliseModalityd
from pemma.data.overlap import MIN_PET_OVERLAP, pet_overlap_problem
from pemma.data.register import register_case
from pemma.data.registration import RegistrationSettings, registrable
from pemma.data.registration import describe as describe_registration
from pemma.errors import PemmaError
from pemma.io_utils import load_nifti


def _what(key: Hashable) -> str:
    """A data key as messages name it: ``CT``, ``PET``, ``MR``..., and ``label``."""
    return "label" if key == "label" else str(key).upper()


class LoadCased(MapTransform):
    """Load the NIfTI paths under ``keys`` as channel-first float32 :class:`MetaTensor` (affine kept).

    Checks each file (missing, corrupt, not 3-D, NaN/inf; label values in {0, 1, 2}; no mask or normalised image as
    the CT and no CT as the PET: :func:`pemma.data.intensity.intensity_problem`) and raises a
    one-line :class:`PemmaError` naming the case and file. A ``label_map`` entry of the item (a dataset numbering
    its labels otherwise, see :mod:`pemma.data.labels`) remaps the label to pemma's values and is dropped.
    """

    def __init__(self, keys: Sequence[str], allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = d.get("case_id", "?")
        label_map = d.pop(LABEL_MAP_KEY, None)
        for key in self.key_iterator(d):
            path = d[key]
            img = load_nifti(path, what=f"{_what(key)} of case {case}")
            array = np.asanyarray(img.dataobj)
            array = array.reshape(array.shape[:3])
            if key == "label":
                array = to_pemma_labels(array, label_map, str(path), str(case))
            else:
                problem = intensity_problem(str(key), array, str(path), str(case))  # a mask given as the CT...
                if problem:
                    raise PemmaError(problem)
            meta = {"filename_or_obj": str(path), "original_affine": img.affine.copy(),
                    "spatial_shape": np.asarray(array.shape)}
            d[key] = MetaTensor(torch.as_tensor(np.asarray(array, dtype=np.float32))[None],
                                affine=torch.as_tensor(img.affine, dtype=torch.float64), meta=meta)
        return d


class CheckOverlapd(MapTransform):
    """Refuse a case whose ``key`` (PET) covers less than ``min_fraction`` of the CT box in world space
    (the rule of :func:`pemma.data.overlap.pet_overlap_problem`, which ``pemma check`` applies too)."""

    def __init__(self, key: str = "pet", ref_key: str = "ct", min_fraction: float = MIN_PET_OVERLAP) -> None:
        super().__init__([key], allow_missing_keys=True)
        self.ref_key, self.min_fraction = ref_key, min_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.ref_key not in d:
                continue
            ref, other = d[self.ref_key], d[key]
            problem = pet_overlap_problem(str(d.get("case_id", "?")), np.asarray(ref.affine), ref.shape[1:],
                                          np.asarray(other.affine), other.shape[1:], other.meta.get("filename_or_obj"),
                                          what=_what(key), min_fraction=self.min_fraction)
            if problem is not None:
                raise PemmaError(problem)
        return d


class RegisterModalityd(MapTransform):
    """Register ``key`` (PET, MR..., moving) to ``ref_key`` (CT, fixed) and give it the registered header, so the
    pipeline's resampling of it onto the CT grid goes through the transform (:mod:`pemma.data.registration`;
    cached per case and modality by the files' identity and the settings).

    Args:
        settings: the registration settings (``mode`` rigid or affine; ``modality`` the moving one).
        key: the moving image. Default ``settings.modality``. ref_key: the fixed image. Default ``ct``.
    """

    def __init__(self, settings: RegistrationSettings, key: str | None = None, ref_key: str = "ct") -> None:
        super().__init__([key or settings.modality], allow_missing_keys=True)
        self.settings, self.ref_key = settings, ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.ref_key not in d:
                continue
            ref, moving = d[self.ref_key], d[key]
            result = register_case(str(d.get("case_id", "?")), np.asarray(ref[0]), np.asarray(ref.affine),
                                   ref.meta.get("filename_or_obj"), np.asarray(moving[0]), np.asarray(moving.affine),
                                   moving.meta.get("filename_or_obj"), self.settings)
            moved = moving.clone()
            moved.affine = torch.as_tensor(result.moved_affine(np.asarray(moving.affine)), dtype=torch.float64)
            d[key] = moved
        return d


#: the PET's registration transform, by its name before any modality could be registered
RegisterPetd = RegisterModalityd


class HeadNeckCropd(MapTransform):
    """Crop every key to a head-and-neck box found from the CT alone (never from the label).

    The body is the CT above ``body_threshold_hu``; the box spans ``crop_mm[2]`` mm down from the top
    (most superior) body slice and ``crop_mm[:2]`` mm around the body centre in those slices. Expects
    RAS orientation (axis 2 = inferior -> superior) and the CT still in HU.
    """

    def __init__(self, keys: Sequence[str], crop_mm: Sequence[float], body_threshold_hu: float,
                 ref_key: str = "ct", allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop_mm, self.threshold, self.ref_key = list(crop_mm), body_threshold_hu, ref_key

    def box(self, ref: MetaTensor) -> tuple[list[int], list[int]]:
        body = ref[0] > self.threshold
        shape = list(body.shape)
        spacing = np.sqrt((np.asarray(ref.affine)[:3, :3] ** 2).sum(axis=0))
        size = [max(1, int(round(mm / sp))) for mm, sp in zip(self.crop_mm, spacing, strict=True)]
        if not bool(body.any()):
            centre = [s // 2 for s in shape]
            top = shape[2]
        else:
            slices = torch.nonzero(body.any(dim=0).any(dim=0)).flatten()
            top = int(slices.max()) + 1
            region = body[:, :, max(0, top - size[2]):top]
            idx = torch.nonzero(region)
            centre = [int((idx[:, a].min() + idx[:, a].max()) // 2) for a in range(2)] + [0]
        start, end = [], []
        for axis in range(2):
            lo = int(np.clip(centre[axis] - size[axis] // 2, 0, max(0, shape[axis] - size[axis])))
            start.append(lo)
            end.append(min(shape[axis], lo + size[axis]))
        start.append(max(0, top - size[2]))
        end.append(top)
        return start, end

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        start, end = self.box(d[self.ref_key])
        cropper = SpatialCrop(roi_start=start, roi_end=end)
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        return d


def _voxel_box(affine: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(2, 3) world min / max of the voxel block ``lo..hi`` (inclusive indices), voxel edges included."""
    corners = np.array(np.meshgrid(*[[a - 0.5, b + 0.5] for a, b in zip(lo, hi, strict=True)],
                                   indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def check_label_overlap(path: str, case: str, label: np.ndarray, label_affine: np.ndarray,
                        ref_shape: Sequence[int], ref_affine: np.ndarray) -> None:
    """Refuse a label whose grid (or whose tumour voxels) lie outside the CT field of view in physical space.

    Resampled onto the CT grid such a label would silently become empty (no tumour to learn or score).

    Args:
        path: the label file (named in the error).
        case: the case ID.
        label: the label voxels (3-D).
        label_affine: its voxel-to-world affine.
        ref_shape: the CT (reference) grid shape.
        ref_affine: the CT (reference) affine.

    Raises:
        PemmaError: one line naming the file.
    """
    label_affine = np.asarray(label_affine, dtype=np.float64)
    ref = _voxel_box(np.asarray(ref_affine, dtype=np.float64), np.zeros(3), np.asarray(ref_shape[:3]) - 1)
    shape = np.asarray(label.shape[:3])
    boxes = [("grid lies", _voxel_box(label_affine, np.zeros(3), shape - 1))]
    foreground = np.argwhere(np.asarray(label) > 0)
    if len(foreground):
        boxes.append(("tumour voxels lie", _voxel_box(label_affine, foreground.min(axis=0), foreground.max(axis=0))))
    for what, box in boxes:
        inter = np.minimum(ref[1], box[1]) - np.maximum(ref[0], box[0])
        if np.any(inter <= 0):
            raise PemmaError(f"{path}: the label of case {case} does not overlap the CT: its {what} outside the CT "
                             f"field of view in physical space (label {np.round(box, 1).tolist()} mm, CT "
                             f"{np.round(ref, 1).tolist()} mm); the label must be on the CT grid (check its affine "
                             f"and that it belongs to this case)")


class CheckLabelOverlapd(MapTransform):
    """Refuse a case whose label does not overlap the reference image (see :func:`check_label_overlap`)."""

    def __init__(self, ref_key: str = "ct", key: str = "label") -> None:
        super().__init__([key], allow_missing_keys=True)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.ref_key in d:
                label, ref = d[key], d[self.ref_key]
                check_label_overlap(str(label.meta.get("filename_or_obj")), str(d.get("case_id", "?")),
                                    np.asarray(label[0]), np.asarray(label.affine), ref.shape[1:],
                                    np.asarray(ref.affine))
        return d


def preprocessing(modalities: Sequence[str], cfg: PreprocessConfig, roi_size: Sequence[int],
                  with_label: bool, label_indices: bool = False) -> Compose:
    """Deterministic part of the pipeline (cacheable): load, check, resample, crop, scale, pad, concat.

    Args:
        modalities: input channels in channel order ([CT, PET], then other modalities), e.g. ``["ct", "pet"]``.
        cfg: spacing, intensity windows and crop size; the normalisation of a modality other than CT and PET comes
            from its spec (:meth:`pemma.config.PreprocessConfig.modality_registry`).
        roi_size: windows are padded up to at least this size.
        with_label: also load and transform ``label`` (nearest neighbour onto the CT grid).
        label_indices: precompute per-class voxel indices for label-balanced cropping. Default False.

    The CT is the geometric reference (every other modality and the label are resampled onto its grid); without a
    CT the first modality's grid is the reference.
    """
    ref = "ct" if "ct" in modalities else modalities[0]
    specs = cfg.modality_registry()  # CT's HU window, PET's SUV range, MR's z-score...: one spec per modality
    unknown = [m for m in modalities if m not in specs]
    if unknown:
        raise PemmaError(f"no spec for modality {unknown[0]!r} (known: {', '.join(specs)}); declare it in the "
                         f"config's preprocess.modality_specs")
    keys = list(modalities) + (["label"] if with_label else [])
    others = [k for k in keys if k != ref]
    steps: list[Any] = [LoadCased(keys, allow_missing_keys=False)]
    if cfg.register != "none" and ref == "ct":  # before PET, MR... meet the CT grid (not dose: it is on it)
        steps += [RegisterModalityd(RegistrationSettings.from_preprocess(cfg, modality=m))
                  for m in registrable(modalities, cfg)]
    steps += [CheckOverlapd(m, ref_key=ref) for m in modalities if m != ref]
    steps.append(CheckLabelOverlapd(ref_key=ref))
    # The reference alone goes to RAS, the target spacing and the head-and-neck box; every other image is then
    # resampled once, straight onto that box (not onto the whole native CT grid first and again to the target
    # spacing: two interpolations, and at 1 mm the PET on a 512 x 512 x N float32 grid, benchmarks/README.md).
    steps += [
        Orientationd([ref], axcodes="RAS", labels=None),
        Spacingd([ref], pixdim=cfg.target_spacing, mode="bilinear", padding_mode="border", dtype=np.float32),
    ]
    if ref == "ct":
        steps.append(HeadNeckCropd([ref], cfg.crop_mm, cfg.body_threshold_hu))
    if others:
        steps.append(ResampleToMatchd(others, key_dst=ref, mode=["nearest" if k == "label" else "bilinear"
                                                                  for k in others], padding_mode="zeros",
                                      dtype=np.float32))
    last_ct = [m for m in modalities if m != "ct"] + [m for m in modalities if m == "ct"]  # MR's body mask: CT in HU
    steps += [NormaliseModalityd(m, specs[m], body_key="ct", threshold_hu=cfg.body_threshold_hu) for m in last_ct]
    steps += [
        SpatialPadd(keys, spatial_size=roi_size, mode="constant"),
        ConcatItemsd(list(modalities), name="image", dim=0),
        DeleteItemsd(list(modalities)),
    ]
    if with_label and label_indices:
        steps.append(ClassesToIndicesd("label", indices_postfix="_cls_indices", num_classes=3))
    return Compose(steps)


def training_augmentation(roi_size: Sequence[int], ratios: Sequence[float], samples: int) -> Compose:
    """Random part: label-balanced crops (background / GTVp / GTVn ratios) and left-right flips."""
    return Compose([
        RandCropByLabelClassesd(["image", "label"], label_key="label", spatial_size=roi_size, ratios=list(ratios),
                                num_classes=3, num_samples=samples, indices_key="label_cls_indices", warn=False),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        DeleteItemsd("label_cls_indices"),
    ])


def describe(modalities: Sequence[str], cfg: PreprocessConfig) -> list[str]:
    """Human-readable lines of what preprocessing does (for the run log)."""
    extra = [m for m in modalities if m not in ("ct", "pet")]
    order = ", ".join(["CT", "PET", *(m.upper() for m in extra)])
    moved = ", ".join(["PET", *(m.upper() for m in extra)])
    lines = [f"inputs: {', '.join(m.upper() for m in modalities)} (channel order fixed [{order}])",
             f"resampling: CT to RAS and spacing {cfg.target_spacing} mm; {moved} and label once onto its "
             f"head-and-neck box",
             f"crop: head and neck box {cfg.crop_mm} mm below the top of the body (CT > "
             f"{cfg.body_threshold_hu} HU), label never used"]
    specs = cfg.modality_registry()  # CT's HU window, PET's SUV range, MR's z-score...
    lines += [specs[m].describe() for m in modalities if m in specs]
    lines += [describe_registration(RegistrationSettings.from_preprocess(cfg, modality=m))
              for m in registrable(modalities, cfg)]
    return lines
