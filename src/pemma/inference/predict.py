"""``pemma predict``: label maps written back in the original CT geometry (shape, spacing, origin,
direction identical to the input CT)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from pemma.config import PreprocessConfig, RunConfig
from pemma.data.layout import CaseRecord
from pemma.data.register import register_files
from pemma.data.registration import RegistrationSettings, registrable
from pemma.data.transforms import preprocessing
from pemma.errors import PemmaError, record_case_failure
from pemma.inference.resample_back import labels_on_reference
from pemma.inference.sliding import sliding_window_probs
from pemma.io_utils import load_nifti, save_nifti
from pemma.models.loaded import LoadedModel
from pemma.models.registry import get_backbone


@dataclass
class WindowSettings:
    """Sliding-window settings; ``None`` takes the value the model was trained with (``amp``: off unless given)."""

    roi_size: list[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    amp: bool = False

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise PemmaError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise PemmaError(f"--sw-batch-size must be >= 1, got {self.sw_batch_size}")
        if self.roi_size is not None and (len(self.roi_size) != 3 or min(self.roi_size) < 1):
            raise PemmaError(f"--roi must be three sizes >= 1, got {self.roi_size}")


def check_window_roi(roi: Sequence[int], cfg: RunConfig) -> None:
    """A sliding window the network can take: UNETR's position embeddings fix it to the size it was trained with;
    Swin UNETR takes multiples of its patch-merging factor (:data:`pemma.vocab.ROI_MULTIPLES`).

    Raises:
        PemmaError: naming ``--roi`` and what the run accepts.
    """
    backbone, trained = cfg.model.backbone, list(cfg.model.roi_size)
    spec = get_backbone(backbone)
    if spec.roi_kwarg and list(roi) != trained:  # the ROI is a constructor argument (UNETR's img_size)
        raise PemmaError(f"--roi {' '.join(map(str, roi))}: {spec.net_class.__name__} predicts with the window it "
                         f"was trained with ({' '.join(map(str, trained))}; its position embeddings are fixed to it)")
    multiple = spec.roi_multiple
    if any(r % multiple for r in roi):
        raise PemmaError(f"--roi {' '.join(map(str, roi))}: {backbone} needs multiples of {multiple}")


#: ``--reference`` choices: the grid a prediction is written on when the input is PET alone
REFERENCES = ("ct", "pet")


def output_reference(case: CaseRecord, modalities: Sequence[str], reference: str = "ct") -> str:
    """The image whose grid a prediction is written on: the CT whenever the case has one (HECKTOR labels and scores
    on the CT grid, also for PET-only input), the PET (or the one modality, e.g. MR-only) for input without CT with
    ``reference="pet"`` or no CT."""
    if reference not in REFERENCES:
        raise PemmaError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if "ct" in modalities or (reference == "ct" and "ct" in case.images):
        return "ct"
    return "pet" if "pet" in modalities else modalities[0]  # the grid the input without CT was predicted on


def registered_to_ct(case: CaseRecord, modalities: Sequence[str], ref_key: str, cfg: PreprocessConfig,
                     affine: np.ndarray) -> np.ndarray:
    """The affine of a prediction made on ``modalities`` mapped into the world of ``ref_key``'s image.

    A prediction of a registered run (``register`` rigid / affine) on one registered modality alone (PET-only,
    MR-only...) is made on that modality's grid, in its header world; written on the CT grid it must follow the
    modality -> CT registration (the case's cached transform, as training applied it), not the header geometry.
    Every other prediction is already in the output's world.

    Args:
        case: the case (its CT and the modality's files). modalities: the input set. ref_key: the output grid's
            image. cfg: the run's preprocessing. affine: the prediction's affine (the modality's header world).
    """
    if cfg.register == "none" or ref_key != "ct" or "ct" in modalities or "ct" not in case.images:
        return affine
    moved = registrable(["ct", modalities[0]], cfg) if len(modalities) == 1 else []
    if not moved or moved[0] not in case.images:
        return affine
    result = register_files(case.case_id, case.images["ct"], case.images[moved[0]],
                            RegistrationSettings.from_preprocess(cfg, modality=moved[0]))
    return result.moved_affine(affine)


def predict_case(model: LoadedModel, case: CaseRecord, modalities: Sequence[str], device: torch.device,
                 window: WindowSettings | None = None, inputs_cache: dict[tuple, Any] | None = None,
                 reference: str = "ct") -> tuple[np.ndarray, nib.Nifti1Image]:
    """Predict one case; returns the uint8 label array on the reference image grid, and that image.

    The model runs on its input's grid (the CT, or the PET for PET-only input); the output reference is chosen by
    :func:`output_reference` (the CT when the case has one, unless ``reference="pet"``; a PET-only prediction of a
    registered run lands on the CT through the case's registration, :func:`registered_to_ct`). Probabilities are
    resampled from the preprocessed grid onto the reference grid (zero outside the crop, so background) and then
    argmaxed, only inside the box the crop reaches (:func:`~pemma.inference.resample_back.labels_on_reference`).
    ``inputs_cache`` (a dict) keeps preprocessed inputs between calls, e.g. when many models are
    evaluated on the same cases with the same preprocessing.
    """
    window = window or WindowSettings()
    cfg = model.config
    roi = window.roi_size or cfg.model.roi_size
    check_window_roi(roi, cfg)
    ref_key = output_reference(case, modalities, reference)
    key = (case.case_id, tuple(modalities), repr(cfg.preprocess), tuple(roi), ref_key)
    if inputs_cache is not None and key in inputs_cache:
        image, ref_img = inputs_cache[key]
    else:
        what = f"{ref_key.upper()} of case {case.case_id}"
        if ref_key not in modalities:  # not an input (PET-only onto the CT grid): its voxels are checked here
            load_nifti(case.images[ref_key], what=what)
        # the geometry only (header): an input's voxels are read once, by preprocessing, and the reference image
        # kept with a prediction (evaluation, the prediction cache) holds no voxels
        ref_img = load_nifti(case.images[ref_key], what=what, voxels=False)
        item = {"case_id": case.case_id, **{m: case.images[m] for m in modalities}}
        image = preprocessing(modalities, cfg.preprocess, roi, with_label=False)(item)["image"]
        if inputs_cache is not None:
            inputs_cache[key] = (image, ref_img)
    probs = sliding_window_probs(model.predictor(modalities), image.as_tensor(), roi,
                                 window.sw_batch_size or cfg.train.sw_batch_size,
                                 cfg.train.overlap if window.overlap is None else window.overlap,
                                 device=device, amp=window.amp)
    affine = registered_to_ct(case, modalities, ref_key, cfg.preprocess, np.asarray(image.affine, dtype=np.float64))
    probs = type(image)(probs, affine=torch.as_tensor(affine, dtype=torch.float64))
    label = labels_on_reference(probs, ref_img.affine, ref_img.shape[:3])
    return label, ref_img


def check_not_over_inputs(out_dir: Path, cases: Sequence[CaseRecord]) -> None:
    """Predictions ``out_dir/<case_id>.nii.gz`` must not replace a file the cases are read from (an image or a
    ground-truth label: ``--out data/labelsTr``), nor an existing file of a dataset's ``labels*`` folder (beside
    its ``imagesTr`` / ``imagesTs`` / ``dataset.json``; another folder of that name may hold earlier predictions),
    nor go into the ``images*`` folder the cases' images are read from (``--out data/imagesTs``).

    Raises:
        PemmaError: naming the file that would be overwritten; before anything is predicted.
    """
    inputs = {Path(p).resolve() for c in cases for p in (*c.images.values(), c.label) if p}
    if out_dir.name.lower().startswith("images") and out_dir.resolve() in {p.parent for p in inputs}:
        raise PemmaError(f"{out_dir}: is the images folder the cases are read from; label maps written there would "
                         f"be mixed with the images (nnU-Net would read them as image channels of other cases); "
                         f"write the predictions to another --out")
    parent = out_dir.resolve().parent
    label_folder = out_dir.name.lower().startswith("labels") and any(
        (parent / name).exists() for name in ("imagesTr", "imagesTs", "dataset.json"))  # a dataset's, not a name
    for case in cases:
        target = out_dir / f"{case.case_id}.nii.gz"
        if target.resolve() in inputs or (label_folder and target.is_file()):
            raise PemmaError(f"{out_dir}: the prediction of case {case.case_id} would overwrite {target}, a "
                             f"dataset's image or label; write the predictions to another --out")


def predict_cases(model: LoadedModel, cases: Sequence[CaseRecord], modalities: Sequence[str], out_dir: str | Path,
                  device: torch.device, window: WindowSettings | None = None, progress: bool = True,
                  failures: dict[str, str] | None = None, reference: str = "ct") -> list[Path]:
    """Predict every case and write ``out_dir/<case_id>.nii.gz`` (atomically, in the reference geometry).

    Args:
        failures: when given, a case whose input is bad (a :class:`~pemma.errors.PemmaError`) is recorded here
            (``{case_id: message}``) and the others are still predicted; by default the first bad case stops.
        reference: ``ct`` (default): PET-only predictions on the CT grid when the case has a CT; ``pet``: on the
            PET grid.
    """
    out_dir = Path(out_dir)
    check_not_over_inputs(out_dir, cases)
    written: list[Path] = []
    try:
        for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
            try:
                label, ref_img = predict_case(model, case, modalities, device, window, reference=reference)
            except Exception as exc:  # a bad input raised inside MONAI's transforms arrives wrapped
                record_case_failure(failures, case.case_id, exc)
                continue
            path = out_dir / f"{case.case_id}.nii.gz"
            save_nifti(label, ref_img.affine, path, header=ref_img.header, dtype=np.uint8)
            written.append(path)
    except KeyboardInterrupt:
        raise interrupted(out_dir, written, [c.case_id for c in cases]) from None
    return written


def interrupted(out_dir: Path, written: Sequence[Path], case_ids: Sequence[str]) -> KeyboardInterrupt:
    """What a prediction stopped by Ctrl-C left, for the one line the CLI prints: the label maps this run wrote
    (each complete: a file is renamed into place only when whole) and the cases it did not write."""
    done = {p.name for p in written}
    missing = [c for c in case_ids if f"{c}.nii.gz" not in done]
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return KeyboardInterrupt(f"{out_dir} holds {len(written)} of {len(case_ids)} label maps of this run, each "
                             f"complete; not written: {', '.join(missing[:3])}{more}")
