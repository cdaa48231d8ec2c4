"""Lesion features a clinician reads off a segmentation: tumour and node volume, node count, and PET uptake
(SUVmax, SUVmean, metabolic tumour volume) inside the lesions.

The segmentation is the model's own: :func:`model_segmenter` runs a segmentation run (``pemma train`` /
``adapt``) with sliding-window inference over the whole preprocessed case (the head-and-neck box, not one
centre crop) and resamples its prediction onto the original CT grid (:func:`pemma.inference.predict.predict_case`).
:func:`label_segmenter` reads the reference label instead (an oracle, for tests and upper bounds).

Features (:func:`lesion_features`), from a label map on the CT grid (1 GTVp, 2 GTVn) and the PET in SUV on its
own grid (sampled linearly at the CT voxel centres inside the lesions):

* ``log_gtvp_ml``, ``log_gtvn_ml``: ``log(1 + volume in ml)`` of the primary tumour and of the nodes;
* ``nodes``: connected GTVn components of at least ``min_node_ml`` (26-connectivity), the N stage's count;
* ``log_suvmax``: ``log(1 + SUVmax)`` over GTVp and GTVn; ``suvmean``: mean SUV over them;
* ``log_mtv_ml``: ``log(1 + ml)`` of lesion voxels with SUV >= ``suv_threshold`` (2.5, the usual absolute MTV);
* ``log_mtv41_ml``: ``log(1 + ml)`` of lesion voxels with SUV >= ``suv_relative`` (41 %) of the lesions' SUVmax.

With no predicted lesion every feature is 0 (volume 0, no uptake measured).

Example:
    >>> feats = lesion_features(label, ct_affine, pet, pet_affine)
    >>> feats["log_gtvp_ml"], feats["log_suvmax"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pemma.data.layout import CaseRecord
from pemma.errors import PemmaError
from pemma.inference.predict import predict_case
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import load_nifti
from pemma.methods.loading import load_model
from pemma.survival.chain_config import MIN_NODE_ML, SUV_RELATIVE, SUV_THRESHOLD

#: features of the CT stage (what the segmentation shows)
CT_FEATURES: tuple[str, ...] = ("log_gtvp_ml", "log_gtvn_ml", "nodes")
#: features PET adds (uptake inside the segmentation)
PET_FEATURES: tuple[str, ...] = ("log_suvmax", "suvmean", "log_mtv_ml", "log_mtv41_ml")

#: a case -> (uint8 label map on the CT grid, CT affine)
Segmenter = Callable[[CaseRecord], tuple[np.ndarray, np.ndarray]]


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of a grid with this affine, in ml."""
    return abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def pet_at(mask: np.ndarray, ct_affine: np.ndarray, pet: np.ndarray, pet_affine: np.ndarray) -> np.ndarray:
    """SUV sampled (linear, edge values outside) at the CT voxel centres where ``mask`` is set."""
    idx = np.argwhere(mask).T.astype(np.float64)
    if idx.shape[1] == 0:
        return np.zeros(0)
    m = np.linalg.inv(np.asarray(pet_affine, float)) @ np.asarray(ct_affine, float)
    coords = m[:3, :3] @ idx + m[:3, 3:4]
    return ndimage.map_coordinates(np.asarray(pet, np.float64), coords, order=1, mode="nearest")


def lesion_features(label: np.ndarray, ct_affine: np.ndarray, pet: np.ndarray | None = None,
                    pet_affine: np.ndarray | None = None, suv_threshold: float = SUV_THRESHOLD,
                    suv_relative: float = SUV_RELATIVE, min_node_ml: float = MIN_NODE_ML) -> dict[str, float]:
    """The lesion features of one case (see the module docstring).

    Args:
        label: (X, Y, Z) label map on the CT grid: 0 background, 1 GTVp, 2 GTVn.
        ct_affine: its 4 x 4 voxel-to-world affine.
        pet, pet_affine: the PET in SUV and its affine; None gives the CT features only.
        suv_threshold: absolute SUV of the metabolic tumour volume. suv_relative: fraction of SUVmax of the
            relative one. min_node_ml: smallest GTVn component counted as a node.

    Returns:
        ``{name: value}`` for :data:`CT_FEATURES` (and :data:`PET_FEATURES` with a PET).
    """
    label = np.asarray(label)
    ml = voxel_ml(ct_affine)
    nodes, count = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(nodes.ravel(), minlength=count + 1)[1:] * ml
    out = {"log_gtvp_ml": math.log1p(float((label == 1).sum()) * ml),
           "log_gtvn_ml": math.log1p(float((label == 2).sum()) * ml),
           "nodes": float((sizes >= min_node_ml).sum())}
    if pet is None or pet_affine is None:
        return out
    suv = pet_at(label > 0, ct_affine, pet, pet_affine)
    suvmax = float(suv.max()) if suv.size else 0.0
    out.update({"log_suvmax": math.log1p(max(suvmax, 0.0)),
                "suvmean": float(suv.mean()) if suv.size else 0.0,
                "log_mtv_ml": math.log1p(float((suv >= suv_threshold).sum()) * ml),
                "log_mtv41_ml": math.log1p(float((suv >= suv_relative * suvmax).sum()) * ml) if suvmax > 0 else 0.0})
    return out


def model_segmenter(run_dir: str | Path, modalities: Sequence[str], device: torch.device | str = "cpu",
                    predictions: PredictionCache | None = None) -> Segmenter:
    """Segment with a trained run on ``modalities`` (sliding window over the whole preprocessed case).

    Args:
        run_dir: the segmentation run. modalities: its input set. device: where it runs.
        predictions: predictions made earlier in this process (e.g. by ``pemma reproduce``'s evaluation, or by
            another chain with the same CT model): a case the same network already segmented with these inputs
            is not segmented again. Default None (every case is predicted).
    """
    model = load_model(run_dir, device)
    model.check_inputs(modalities, str(run_dir))
    model.net.to(device).eval()
    mods, dev = list(modalities), torch.device(device)

    def segment(case: CaseRecord) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            if predictions is not None:
                label, ref = predictions.predict(model, case, mods, dev)
            else:
                label, ref = predict_case(model, case, mods, dev)
        return label, np.asarray(ref.affine)
    return segment


def label_segmenter(case: CaseRecord) -> tuple[np.ndarray, np.ndarray]:
    """The reference label as the segmentation (an oracle: tests and upper bounds only)."""
    if case.label is None:
        raise PemmaError(f"case {case.case_id}: no reference label to use as segmentation")
    img = load_nifti(case.label, what=f"label of case {case.case_id}")
    return np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine)


def measure_case(case: CaseRecord, segment: Segmenter, with_pet: bool, **settings: float) -> dict[str, float]:
    """Segment ``case`` and measure its lesions (PET read from ``case.images["pet"]`` when ``with_pet``)."""
    label, affine = segment(case)
    pet = pet_affine = None
    if with_pet:
        if "pet" not in case.images:
            raise PemmaError(f"case {case.case_id}: no PET image to measure uptake in")
        img = load_nifti(case.images["pet"], what=f"PET of case {case.case_id}")
        pet, pet_affine = np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine)
    return lesion_features(label, affine, pet, pet_affine, **settings)
