"""``pemma evaluate``: HECKTOR DSCagg per class and mean, per-case Dice and HD95 (mm), on the original
CT grid, labelled by the input modality set."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.processing import resample_from_to
from tqdm.auto import tqdm

from pemma.data.labels import to_pemma_labels
from pemma.data.layout import CaseRecord
from pemma.data.transforms import check_label_overlap
from pemma.errors import PemmaError
from pemma.evaluation.metrics import CLASS_NAMES, AggregatedDice, case_counts, case_metrics, summarize
from pemma.inference.predict import WindowSettings, predict_case
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import IMAGE_ENDINGS, grid_difference, load_nifti, save_nifti, write_text_atomic
from pemma.models.loaded import LoadedModel
from pemma.vocab import LABEL_VALUES, LABELS, PRED_NUMBERINGS


def label_on_grid(case: CaseRecord, ref: nib.Nifti1Image) -> np.ndarray:
    """The case's label on the reference grid (nearest neighbour when it is e.g. one voxel off)."""
    img = load_nifti(case.label, what=f"label of case {case.case_id}")
    data = to_pemma_labels(np.asanyarray(img.dataobj), case.label_map, str(case.label), case.case_id)
    if case.label_map is not None:
        img = nib.Nifti1Image(data, img.affine, header=img.header)
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        check_label_overlap(str(case.label), case.case_id, data.reshape(data.shape[:3]), img.affine, ref.shape,
                            ref.affine)
        img = resample_from_to(img, (ref.shape[:3], ref.affine), order=0, mode="constant", cval=0)
        data = np.asanyarray(img.dataobj)
    return np.rint(data).astype(np.uint8).reshape(ref.shape[:3])


def evaluate_model(model: LoadedModel, cases: Sequence[CaseRecord], modalities: Sequence[str], device: torch.device,
                   window: WindowSettings | None = None, predictions_dir: str | Path | None = None,
                   progress: bool = True, inputs_cache: dict[tuple, Any] | None = None,
                   predictions: PredictionCache | None = None) -> dict[str, Any]:
    """Predict and score every case.

    Args:
        model: the loaded run. cases: labelled cases. modalities: the input set, e.g. ``["ct", "pet"]``.
        device: where the network runs. window: sliding-window settings (default: as trained).
        predictions_dir: also write each label map there (``<case_id>.nii.gz``, CT geometry). Default None.
        progress: show a progress bar. Default True.
        inputs_cache: preprocessed inputs shared between calls (see :func:`predict_case`).
        predictions: predictions shared between calls (:class:`~pemma.inference.prediction_cache.PredictionCache`):
            a case this network already predicted with these inputs and settings is not predicted again.

    Returns:
        ``{"inputs": "ct+pet", "n_cases", "DSCagg": {"GTVp", "GTVn", "mean"}, "mean_case": {...},
        "cases": [per-case dicts: Dice, HD95, ground-truth and predicted volumes in mL per class],
        "counts": {case_id: [[|GT∩P|, |GT|, |P|] for GTVp, GTVn]}}`` (the counts feed the bootstrap CIs).
    """
    agg = AggregatedDice()
    rows = []
    counts: dict[str, list[list[int]]] = {}  # case -> per tumour class (|GT∩P|, |GT|, |P|), for the bootstrap
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        if predictions is not None:
            pred, ref = predictions.predict(model, case, modalities, device, window, inputs_cache)
        else:
            pred, ref = predict_case(model, case, modalities, device, window, inputs_cache)
        label_key = ("label", case.case_id, ref.shape)
        if inputs_cache is not None and label_key in inputs_cache:
            label = inputs_cache[label_key]
        else:
            label = label_on_grid(case, ref)
            if inputs_cache is not None:
                inputs_cache[label_key] = label
        row, counts[case.case_id] = score_case(case, pred, label, ref)
        agg.update_counts(dict(zip(sorted(CLASS_NAMES), counts[case.case_id], strict=True)))  # counted once
        rows.append(row)
        if predictions_dir is not None:
            save_nifti(pred, ref.affine, Path(predictions_dir) / f"{case.case_id}.nii.gz", header=ref.header,
                       dtype=np.uint8)
    return {"inputs": "+".join(modalities), "n_cases": len(rows), "DSCagg": agg.compute(),
            "mean_case": summarize(rows), "cases": rows, "counts": counts, "hd95_policy": HD95_POLICY}


#: how per-case HD95 treats empty classes (stated in every report)
HD95_POLICY = ("HD95 (mm) is the symmetric 95th-percentile surface distance per case and class; it is undefined "
               "(null) when the class is empty in the ground truth or in the prediction, and the case means skip "
               "undefined values. Dice is undefined (null) when the class is empty in both, 0 when in one only.")


def score_case(case: CaseRecord, pred: np.ndarray, label: np.ndarray,
               ref: nib.Nifti1Image) -> tuple[dict[str, Any], list[list[int]]]:
    """Per-case Dice, HD95 and volumes (mL) of a prediction on ``ref``'s grid, and the voxel counts
    ``[[|GT∩P|, |GT|, |P|] for GTVp, GTVn]`` DSCagg (and its bootstrap) pool."""
    spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    per_class = case_counts(pred, label)
    volumes = {f"{kind}_ml_{CLASS_NAMES[c]}": per_class[c][i] * voxel_ml
               for c in sorted(per_class) for i, kind in ((1, "gt"), (2, "pred"))}
    row = {"case_id": case.case_id, "centre": case.centre, **case_metrics(pred, label, spacing), **volumes}
    return row, [list(per_class[c]) for c in sorted(per_class)]


def evaluate_predictions(pred_dir: str | Path, cases: Sequence[CaseRecord], progress: bool = True,
                         numbering: str | None = None) -> dict[str, Any]:
    """Score an existing folder of label maps (``<case_id>.nii.gz``, e.g. another tool's predictions) against the
    cases' labels: no model is run. Each prediction must lie on its case's CT grid (HECKTOR scores there).

    Args:
        numbering: how the predictions number GTVp and GTVn (:data:`pemma.vocab.PRED_NUMBERINGS`): ``pemma``
            (1, 2: ``pemma predict``'s) or ``dataset`` (the ``dataset.json`` labels of an nnU-Net dataset:
            nnU-Net's predictions), remapped by name like the labels. Needed only when the dataset numbers its
            labels otherwise than pemma (the two readings then give other scores); None: pemma's where they agree.

    Returns:
        as :func:`evaluate_model` (``inputs`` is ``"predictions"``).

    Raises:
        PemmaError: a case has no prediction file, or a prediction has other values than {0, 1, 2} (or than the
        dataset names) or another grid; the dataset numbers its labels otherwise and ``numbering`` is None.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise PemmaError(f"{pred_dir}: predictions folder not found")
    if numbering is not None and numbering not in PRED_NUMBERINGS:
        raise PemmaError(f"--pred-labels must be one of {', '.join(PRED_NUMBERINGS)}, got {numbering!r}")
    renumbered = next((c for c in cases if c.label_map is not None), None)
    if renumbered is not None and numbering is None:
        names = {v: k for k, v in LABELS.items()}
        theirs = ", ".join(f"{names[p]} {f}" for f, p in renumbered.label_map if p)
        raise PemmaError(f"{pred_dir}: the dataset numbers its labels otherwise than pemma ({theirs}; pemma: GTVp 1, "
                         f"GTVn 2); say which the predictions use: --pred-labels dataset (e.g. nnU-Net's predictions "
                         f"of this dataset) or --pred-labels pemma (pemma predict's)")
    agg = AggregatedDice()
    rows, counts = [], {}
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        path = next((pred_dir / f"{case.case_id}{e}" for e in IMAGE_ENDINGS  # nnU-Net writes its file_ending
                     if (pred_dir / f"{case.case_id}{e}").is_file()), None)
        if path is None:
            raise PemmaError(f"{pred_dir}: no prediction for case {case.case_id} (expected {case.case_id}.nii.gz)")
        ref = load_nifti(path, what=f"prediction of case {case.case_id}")
        ct = case.images.get("ct")
        ct_img = load_nifti(ct, what=f"CT of case {case.case_id}", voxels=False) if ct is not None else None
        if ct_img is not None:
            ref = _onto_ct_axes(ref, ct_img)
        pred = np.asanyarray(ref.dataobj).reshape(ref.shape[:3])
        if numbering == "dataset" and case.label_map is not None:
            pred = to_pemma_labels(pred, case.label_map, str(path), case.case_id)
        bad = sorted(set(np.unique(pred).tolist()) - set(LABEL_VALUES))
        if bad:
            raise PemmaError(f"{path}: prediction of case {case.case_id} has values {bad[:5]} outside {{0, 1, 2}}")
        if ct_img is not None:  # its geometry only
            differs = grid_difference(ref, ct_img)
            if differs is not None:
                raise PemmaError(f"{path}: prediction of case {case.case_id} is not on its CT grid ({differs}, "
                                 "prediction vs CT); HECKTOR scores on the CT grid")
        pred = np.rint(pred).astype(np.uint8)
        label = label_on_grid(case, ref)
        row, counts[case.case_id] = score_case(case, pred, label, ref)
        agg.update_counts(dict(zip(sorted(CLASS_NAMES), counts[case.case_id], strict=True)))  # counted once
        rows.append(row)
    return {"inputs": "predictions", "n_cases": len(rows), "DSCagg": agg.compute(), "mean_case": summarize(rows),
            "cases": rows, "counts": counts, "hd95_policy": HD95_POLICY}


def _onto_ct_axes(pred: nib.Nifti1Image, ct: nib.Nifti1Image) -> nib.Nifti1Image:
    """``pred`` with its axes flipped / permuted to the CT's when it is the CT's grid stored in another orientation
    (e.g. saved as RAS where the CT is LPS): lossless, the same voxels. Otherwise ``pred`` unchanged."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(pred.affine),
                                           nib.orientations.io_orientation(ct.affine))
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]) or pred.shape[3:] not in ((), (1,)):
        return pred
    turned = pred.as_reoriented(ornt)
    return turned if grid_difference(turned, ct) is None else pred


def json_ready(value: Any) -> Any:
    """``value`` with NaN / inf floats as None (JSON ``null``), recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(result: dict[str, Any], out_dir: str | Path, split: str = "all") -> tuple[Path, Path]:
    """Write ``metrics_<inputs>.json`` and ``cases_<inputs>.csv`` (atomically) and return their paths; a ``split``
    other than ``all`` is part of the names (``metrics_ct+pet_val.json``), so it does not replace the report of all
    cases."""
    out_dir = Path(out_dir)
    tag = result["inputs"] if split == "all" else f"{result['inputs']}_{split}"
    json_path, csv_path = out_dir / f"metrics_{tag}.json", out_dir / f"cases_{tag}.csv"
    write_text_atomic(json_path, json.dumps(json_ready(result), indent=2, allow_nan=False))
    buffer = io.StringIO()
    fields = list(result["cases"][0]) if result["cases"] else ["case_id"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(result["cases"])
    write_text_atomic(csv_path, buffer.getvalue())
    return json_path, csv_path


def format_summary(result: dict[str, Any]) -> str:
    """One table of DSCagg (and mean per-case HD95) for the console."""
    d, m = result["DSCagg"], result["mean_case"]
    return (f"inputs {result['inputs']:<7} cases {result['n_cases']:>3}  DSCagg GTVp {d['GTVp']:.4f}  "
            f"GTVn {d['GTVn']:.4f}  mean {d['mean']:.4f}  |  HD95 GTVp {_mm(m.get('hd95_GTVp'))}  "
            f"GTVn {_mm(m.get('hd95_GTVn'))}")


def _mm(value: float | None) -> str:
    """A mean HD95 for the console; undefined (no case with that class in both masks) is "n/a", as JSON's null."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.1f} mm"
